//===- MemoryPlan.cpp - Activation buffers by liveness
//---------------------===//

#include "kiln/Analysis/MemoryPlan.h"
#include "dialects/kiln/KilnOps.h"

#include <algorithm>

using namespace mlir;
using namespace mlir::kiln;

ActivationPlan
mlir::kiln::planActivations(func::FuncOp graph,
                            function_ref<int64_t(Value)> bytesPerToken,
                            int64_t alignment) {
  // The graph's steps: kernel calls and collectives, in order.
  SmallVector<Operation *> calls;
  for (Operation &op : graph.getBody().front())
    if (isa<func::CallOp, AllReduceOp, GatherPartialsOp, AllGatherOp,
            ReduceScatterOp, TokenDispatchOp, TokenCombineOp, StageSendOp,
            StageBroadcastOp>(op))
      calls.push_back(&op);
  llvm::DenseMap<Operation *, int64_t> index;
  for (auto [i, call] : llvm::enumerate(calls))
    index[call] = static_cast<int64_t>(i);

  struct Live {
    int64_t begin, end;
    BufferPlacement placement;
  };
  std::vector<Live> live;
  ActivationPlan plan;
  for (auto [i, call] : llvm::enumerate(calls))
    for (Value result : call->getResults()) {
      auto type = cast<RankedTensorType>(result.getType());
      if (type.hasStaticShape())
        continue;
      int64_t end = static_cast<int64_t>(i);
      for (Operation *user : result.getUsers())
        end = isa<func::ReturnOp>(user) ? static_cast<int64_t>(calls.size())
                                        : std::max(end, index.lookup(user));
      int64_t size = bytesPerToken(result);
      size = (size + alignment - 1) / alignment * alignment;
      plan.totalPerToken += size;
      live.push_back({static_cast<int64_t>(i), end, {result, 0, size}});
    }

  std::vector<Live *> active;
  for (Live &b : live) {
    // Buffers whose last reader came before this launch are free again.
    llvm::erase_if(active, [&](Live *a) { return a->end < b.begin; });
    std::sort(active.begin(), active.end(), [](Live *x, Live *y) {
      return x->placement.offsetPerToken < y->placement.offsetPerToken;
    });
    int64_t offset = 0;
    for (Live *a : active) {
      if (a->placement.offsetPerToken - offset >= b.placement.bytesPerToken)
        break;
      offset = std::max(offset, a->placement.offsetPerToken +
                                    a->placement.bytesPerToken);
    }
    b.placement.offsetPerToken = offset;
    active.push_back(&b);
    plan.peakPerToken =
        std::max(plan.peakPerToken, offset + b.placement.bytesPerToken);
  }
  for (Live &b : live)
    plan.buffers.push_back(b.placement);
  return plan;
}

//===- PartitionKernels.cpp - One function per launched kernel
//-------------===//
//
// Kernel boundaries are decided here, once, independently of the target: each
// group of ops becomes a private function (the unit a code generator
// compiles) and the graph becomes the launch sequence. Layers of the same
// shape produce identical kernel bodies that differ only in the weights they
// are passed, so merging identical functions leaves one kernel per distinct
// layer shape: 48-layer models compile a handful of kernels.
//
//===----------------------------------------------------------------------===//

#include "dialects/kiln/KilnOps.h"
#include "kiln/Transforms/Passes.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"
#include "llvm/ADT/MapVector.h"
#include "llvm/ADT/SetVector.h"
#include "llvm/ADT/StringMap.h"

namespace mlir::kiln {
#define GEN_PASS_DEF_PARTITIONKERNELS
#include "kiln/Transforms/Passes.h.inc"
} // namespace mlir::kiln

using namespace mlir;
using namespace mlir::kiln;

namespace {

struct KernelGroup {
  KernelKind kind = KernelKind::Memory;
  SmallVector<Operation *> ops;
};

/// Forms the groups of `block` in program order.
SmallVector<KernelGroup> formGroups(Block &block) {
  SmallVector<KernelGroup> groups;
  llvm::DenseSet<Operation *> taken;
  for (Operation &op : block.without_terminator()) {
    // Weight repacking happens once at bind time and collectives are steps
    // of their own between kernels: both stay in the graph.
    if (taken.contains(&op) ||
        isa<ConcatOp, AllReduceOp, GatherPartialsOp, AllGatherOp,
            ReduceScatterOp, TokenDispatchOp, TokenCombineOp, StageSendOp,
            StageBroadcastOp>(op))
      continue;
    KernelGroup group;
    group.ops.push_back(&op);
    if (auto linear = dyn_cast<LinearOp>(op)) {
      group.kind = KernelKind::Gemm;
      // The epilogue joins the GEMM when it is the GEMM's only consumer.
      if (linear->hasOneUse()) {
        Operation *user = *linear->user_begin();
        if (isa<PackedSwiGluOp, QkvEpilogueOp>(user) &&
            user->getBlock() == &block && user->getOperand(0) == linear) {
          group.ops.push_back(user);
          taken.insert(user);
        }
      }
    } else if (isa<AttentionOp>(op)) {
      group.kind = KernelKind::Attention;
    } else if (isa<MoeOp>(op)) {
      group.kind = KernelKind::Moe;
    } else if (isa<MoeRouteOp>(op)) {
      group.kind = KernelKind::Router;
    } else if (isa<ExpertGateUpOp, ExpertDownOp, ExpertDownPairsOp>(op)) {
      group.kind = KernelKind::GroupedGemm;
    } else {
      group.kind = KernelKind::Memory;
    }
    groups.push_back(std::move(group));
  }
  return groups;
}

/// A key equal for kernels that compute the same thing: the body printed
/// with local names, generic form, no locations.
std::string bodyKey(func::FuncOp kernel) {
  std::string key;
  llvm::raw_string_ostream os(key);
  for (Type t : kernel.getArgumentTypes())
    os << t << ";";
  OpPrintingFlags flags;
  flags.printGenericOpForm().useLocalScope();
  for (Operation &op : kernel.getBody().front())
    op.print(os, flags);
  return key;
}

struct PartitionKernelsPass
    : mlir::kiln::impl::PartitionKernelsBase<PartitionKernelsPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    SmallVector<func::FuncOp> graphs;
    for (auto func : module.getOps<func::FuncOp>())
      if (func.isPublic() && !func.isExternal())
        graphs.push_back(func);
    llvm::StringMap<unsigned> counters;
    for (func::FuncOp graph : graphs) {
      if (!graph.getBody().hasOneBlock()) {
        graph.emitError() << "kernel partition needs a single-block function";
        return signalPassFailure();
      }
      for (KernelGroup &group : formGroups(graph.getBody().front()))
        outline(module, group, counters);
    }
    mergeIdenticalKernels(module);
  }

  void outline(ModuleOp module, KernelGroup &group,
               llvm::StringMap<unsigned> &counters) {
    llvm::DenseSet<Operation *> inGroup(group.ops.begin(), group.ops.end());
    llvm::SetVector<Value> inputs;
    SmallVector<Value> outputs;
    for (Operation *op : group.ops) {
      for (Value operand : op->getOperands()) {
        Operation *def = operand.getDefiningOp();
        if (!def || !inGroup.contains(def))
          inputs.insert(operand);
      }
      for (Value result : op->getResults())
        if (llvm::any_of(result.getUsers(), [&](Operation *user) {
              return !inGroup.contains(user);
            }))
          outputs.push_back(result);
    }

    OpBuilder builder(module.getContext());
    builder.setInsertionPointToEnd(module.getBody());
    StringRef kindName = stringifyKernelKind(group.kind);
    std::string name = (kindName + "_" + Twine(counters[kindName]++)).str();
    SmallVector<Type> inputTypes, outputTypes;
    for (Value v : inputs)
      inputTypes.push_back(v.getType());
    for (Value v : outputs)
      outputTypes.push_back(v.getType());
    Location loc = group.ops.front()->getLoc();
    auto kernel = func::FuncOp::create(
        builder, loc, name, builder.getFunctionType(inputTypes, outputTypes));
    kernel.setPrivate();
    kernel->setAttr(KilnDialect::getKernelAttrName(),
                    KernelKindAttr::get(builder.getContext(), group.kind));
    Block *entry = kernel.addEntryBlock();
    IRMapping mapping;
    for (auto [value, arg] : llvm::zip(inputs, entry->getArguments()))
      mapping.map(value, arg);
    builder.setInsertionPointToStart(entry);
    for (Operation *op : group.ops)
      builder.clone(*op, mapping);
    SmallVector<Value> returned;
    for (Value v : outputs)
      returned.push_back(mapping.lookup(v));
    func::ReturnOp::create(builder, loc, returned);

    // The call goes where the group's last op was: every input is available
    // there and every outside user follows it.
    builder.setInsertionPoint(group.ops.back());
    auto call = func::CallOp::create(
        builder, loc, kernel, SmallVector<Value>(inputs.begin(), inputs.end()));
    for (auto [value, result] : llvm::zip(outputs, call.getResults()))
      value.replaceAllUsesWith(result);
    for (Operation *op : llvm::reverse(group.ops))
      op->erase();
  }

  void mergeIdenticalKernels(ModuleOp module) {
    llvm::StringMap<func::FuncOp> canonical;
    llvm::DenseMap<StringAttr, StringAttr> renamed;
    SmallVector<func::FuncOp> duplicates;
    for (auto kernel : module.getOps<func::FuncOp>()) {
      if (!kernel->hasAttr(KilnDialect::getKernelAttrName()))
        continue;
      auto [it, inserted] = canonical.try_emplace(bodyKey(kernel), kernel);
      if (!inserted) {
        renamed[kernel.getSymNameAttr()] = it->second.getSymNameAttr();
        duplicates.push_back(kernel);
      }
    }
    for (func::FuncOp kernel : duplicates)
      kernel.erase();

    // Number the survivors per kind, in program order: gemm_0, gemm_1, ...
    llvm::StringMap<unsigned> counters;
    for (auto kernel : module.getOps<func::FuncOp>()) {
      auto kind = kernel->getAttrOfType<KernelKindAttr>(
          KilnDialect::getKernelAttrName());
      if (!kind)
        continue;
      StringRef kindName = stringifyKernelKind(kind.getValue());
      auto name = StringAttr::get(module.getContext(),
                                  kindName + "_" + Twine(counters[kindName]++));
      StringAttr old = kernel.getSymNameAttr();
      for (auto &[from, to] : renamed)
        if (to == old)
          to = name;
      renamed[old] = name;
      kernel.setSymNameAttr(name);
    }
    module.walk([&](func::CallOp call) {
      if (StringAttr target = renamed.lookup(call.getCalleeAttr().getAttr()))
        call.setCalleeAttr(FlatSymbolRefAttr::get(target));
    });
  }
};

} // namespace

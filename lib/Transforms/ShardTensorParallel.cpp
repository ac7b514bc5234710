//===- ShardTensorParallel.cpp - One graph per tensor-parallel rank -------===//
//
// Splits attention by heads and the FFN and MoE intermediate dimensions over
// R ranks, Megatron-style: the first GEMM of each block is split by output
// rows (no communication: every rank has the whole input), the second by
// input columns, so each rank's product is a partial sum and one all-reduce
// per block restores the replicated residual stream. Every rank runs the
// same graph; the `kiln.shard` attribute of a weight says which slice of the
// checkpoint tensor that rank binds.
//
// Expert parallelism divides the routed experts between groups of ranks
// instead (TensorRT-LLM's moe_ep_size x moe_tp_size = tp_size). Tokens are
// replicated on every rank (attention is tensor-parallel), so no token
// exchange is needed: a rank runs its experts on the tokens routed to them
// and the MoE block's all-reduce, needed anyway for the split shared expert,
// also combines the groups.
//
// Expert parallelism wider than tensor parallelism needs attention to be
// data-parallel: the ranks form replicas, each with its own sequence and
// attention split within it, and the MoE blocks exchange tokens. The
// exchange is an all-gather of every replica's rows before the block and a
// reduce-scatter after it, which folds the sum of the ranks' partial sums
// into the way back. An all-to-all (`all-to-all`) sends each routed row only
// to the ranks holding its expert instead, which moves fewer bytes once
// replicas are many (8x fewer for Scout at TP 4 x DP 2 x EP 8, by the cost
// report): each rank of a replica routes the replica's rows, sends its
// piece of them (kiln.token_dispatch), runs its experts on what it
// receives and sends the outputs back (kiln.token_combine) into its piece;
// the shared expert, which needs every row, is split within the replica,
// and the all-reduce its split needs anyway also assembles the pieces.
//
//===----------------------------------------------------------------------===//

#include "dialects/kiln/KilnOps.h"
#include "kiln/Transforms/Passes.h"

#include "mlir/IR/Builders.h"

namespace mlir::kiln {
#define GEN_PASS_DEF_SHARDTENSORPARALLEL
#include "kiln/Transforms/Passes.h.inc"
} // namespace mlir::kiln

using namespace mlir;
using namespace mlir::kiln;

namespace {

/// The same tensor type with dimension `dim` of extent `extent`.
RankedTensorType withDim(Type type, int64_t dim, int64_t extent) {
  auto tensor = cast<RankedTensorType>(type);
  SmallVector<int64_t> shape(tensor.getShape());
  shape[dim] = extent;
  return RankedTensorType::get(shape, tensor.getElementType());
}

struct ShardTensorParallelPass
    : mlir::kiln::impl::ShardTensorParallelBase<ShardTensorParallelPass> {
  using Base::Base;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    if (ranks < 2) {
      module.emitError() << "kiln-shard-tensor-parallel needs at least 2 "
                            "ranks, got "
                         << static_cast<int64_t>(ranks);
      return signalPassFailure();
    }
    // Expert groups and attention replicas are both made of whole ranks.
    for (auto [count, what] : {std::pair<int64_t, const char *>{
                                   expertGroups, "expert-parallel groups"},
                               {attentionReplicas, "attention replicas"}}) {
      if (count >= 1 && ranks % count == 0)
        continue;
      module.emitError() << "kiln-shard-tensor-parallel: " << count << " "
                         << what << " do not divide "
                         << static_cast<int64_t>(ranks) << " ranks";
      return signalPassFailure();
    }
    if (module->hasAttr(KilnDialect::getTensorParallelAttrName())) {
      module.emitError() << "the graph is already tensor-parallel";
      return signalPassFailure();
    }
    for (auto func : module.getOps<func::FuncOp>()) {
      if (func.isExternal() || func.isPrivate())
        continue;
      if (failed(shardFunction(func)))
        return signalPassFailure();
    }
    Builder b(module);
    module->setAttr(KilnDialect::getTensorParallelAttrName(),
                    b.getI64IntegerAttr(static_cast<int64_t>(ranks)));
    if (attentionReplicas > 1)
      module->setAttr(
          KilnDialect::getAttentionReplicasAttrName(),
          b.getI64IntegerAttr(static_cast<int64_t>(attentionReplicas)));
  }

  /// The ranks attention and the dense FFN are split over: those of one
  /// replica.
  int64_t splitRanks() const { return ranks / attentionReplicas; }
  /// The `kiln.shard` stride of a split within a replica: rank r holds
  /// part (r / stride) mod parts, i.e. its place in the replica. 0 (part
  /// r * parts / R) without replicas.
  int64_t withinReplica(int64_t parts) const {
    return attentionReplicas > 1 ? splitRanks() / parts : 0;
  }

  LogicalResult shardFunction(func::FuncOp func) {
    SmallVector<Operation *> blocks;
    func.walk([&](Operation *op) {
      if (isa<AttentionOp, SwiGluOp, MoeOp>(op))
        blocks.push_back(op);
    });
    rankArg = nullptr;
    for (Operation *op : blocks) {
      LogicalResult ok = success();
      if (auto a = dyn_cast<AttentionOp>(op))
        ok = shardAttention(func, a);
      else if (auto s = dyn_cast<SwiGluOp>(op))
        ok = shardFeedForward(func, s);
      else
        ok = shardMoe(func, cast<MoeOp>(op));
      if (failed(ok))
        return failure();
    }
    func.setType(FunctionType::get(func.getContext(),
                                   func.getBody().getArgumentTypes(),
                                   func.getResultTypes()));
    return success();
  }

  /// The graph's `kiln.input = "rank"` argument, added on first use.
  Value rankOf(func::FuncOp func) {
    if (rankArg)
      return rankArg;
    Builder b(func.getContext());
    unsigned index = func.getNumArguments();
    if (failed(func.insertArgument(
            index, RankedTensorType::get({1}, b.getI64Type()),
            b.getDictionaryAttr(b.getNamedAttr(KilnDialect::getInputAttrName(),
                                               b.getStringAttr("rank"))),
            func.getLoc())))
      return nullptr;
    rankArg = func.getArgument(index);
    return rankArg;
  }

  /// Marks weight argument `w` of `func` as holding 1/parts of dimension
  /// `dim` (in `groups` equal groups; rank r holds part r * parts / R, or
  /// (r / stride) % parts) and gives it the slice's type. A second call on
  /// the same weight (`again`) adds a split along another dimension.
  LogicalResult shardWeight(func::FuncOp func, Operation *user, Value w,
                            int64_t dim, int64_t parts, int64_t groups = 1,
                            int64_t stride = 0, bool again = false) {
    auto arg = dyn_cast<BlockArgument>(w);
    if (!arg || arg.getOwner() != &func.getBody().front() ||
        !func.getArgAttr(arg.getArgNumber(), KilnDialect::getWeightAttrName()))
      return user->emitOpError()
             << "reads a weight that is not a checkpoint tensor argument; "
                "kiln-shard-tensor-parallel runs on imported graphs";
    if ((!again && func.getArgAttr(arg.getArgNumber(),
                                   KilnDialect::getShardAttrName())) ||
        !arg.hasOneUse())
      return user->emitOpError()
             << "shares weight argument " << arg.getArgNumber()
             << " with other ops; it cannot be sharded";
    int64_t extent = cast<RankedTensorType>(arg.getType()).getDimSize(dim);
    if (extent % (parts * groups) != 0)
      return user->emitOpError()
             << "weight argument " << arg.getArgNumber() << " has extent "
             << extent << " along dimension " << dim
             << ", which does not split into " << parts << " parts"
             << (groups > 1 ? " per half" : "");
    arg.setType(withDim(arg.getType(), dim, extent / parts));
    auto shard = ShardAttr::get(func.getContext(), dim, parts, groups, stride);
    Attribute attr = shard;
    if (again) {
      SmallVector<Attribute> both(
          llvm::map_range(weightShardsOf(func, arg.getArgNumber()),
                          [](ShardAttr s) -> Attribute { return s; }));
      both.push_back(shard);
      attr = ArrayAttr::get(func.getContext(), both);
    }
    func.setArgAttr(arg.getArgNumber(), KilnDialect::getShardAttrName(), attr);
    return success();
  }

  /// Sums `partial` (the result of `op`) over the ranks of a replica for its
  /// users.
  void allReduceAfter(Operation *op, Value partial) {
    OpBuilder b(op->getContext());
    b.setInsertionPointAfter(op);
    auto reduce =
        AllReduceOp::create(b, op->getLoc(), partial.getType(), partial,
                            b.getI64IntegerAttr(splitRanks()));
    partial.replaceAllUsesExcept(reduce.getResult(), reduce);
  }

  /// The projection a head-structured value comes from: through rope and
  /// qk_norm (which get the rank's head count) to its kiln.linear.
  FailureOr<LinearOp> projectionOf(AttentionOp a, Value v,
                                   SmallVectorImpl<Operation *> &chain) {
    Operation *def = v.getDefiningOp();
    while (def && isa<RopeOp, QkNormOp>(def)) {
      if (!def->getResult(0).hasOneUse())
        break;
      chain.push_back(def);
      def = def->getOperand(0).getDefiningOp();
    }
    auto linear = dyn_cast_or_null<LinearOp>(def);
    if (!linear || !linear.getResult().hasOneUse())
      return a.emitOpError() << "has an operand that is not a projection used "
                                "only by this attention; it cannot be split "
                                "by heads",
             failure();
    return linear;
  }

  /// Narrows a projection's result, and the rope / qk_norm after it, to
  /// `heads` of the rank's heads.
  void narrow(LinearOp linear, ArrayRef<Operation *> chain, int64_t heads,
              int64_t width) {
    linear.getResult().setType(withDim(linear.getType(), 1, width));
    Builder b(linear.getContext());
    for (Operation *op : chain) {
      op->setAttr("num_heads", b.getI64IntegerAttr(heads));
      op->getResult(0).setType(withDim(op->getResult(0).getType(), 1, width));
    }
  }

  LogicalResult shardAttention(func::FuncOp func, AttentionOp a) {
    int64_t group = splitRanks();
    // One rank per replica: every rank runs all heads of its own sequence.
    if (group == 1)
      return success();
    int64_t heads = a.getNumHeads(), kvHeads = a.getNumKvHeads();
    if (heads % group != 0)
      return a.emitOpError()
             << "has " << heads << " query heads, which do not split over "
             << group << " ranks";
    // Fewer KV heads than ranks: ranks share one (each rank's query heads
    // then lie in one GQA group).
    int64_t kvParts = kvHeads >= group ? group : kvHeads;
    if (kvHeads % kvParts != 0 || (kvHeads < group && group % kvHeads != 0))
      return a.emitOpError() << "has " << kvHeads
                             << " KV heads, which neither split over nor "
                                "divide "
                             << group << " ranks";
    if (!a.getResult().hasOneUse())
      return a.emitOpError("has more than one user; the output projection "
                           "must be its only one");
    auto out = dyn_cast<LinearOp>(*a.getResult().getUsers().begin());
    if (!out || out.getInput() != a.getResult())
      return a.emitOpError("is not followed by its output projection");
    SmallVector<Operation *> qChain, kChain;
    FailureOr<LinearOp> q = projectionOf(a, a.getQuery(), qChain);
    FailureOr<LinearOp> k = projectionOf(a, a.getKey(), kChain);
    SmallVector<Operation *> vChain;
    FailureOr<LinearOp> v = projectionOf(a, a.getValue(), vChain);
    if (failed(q) || failed(k) || failed(v))
      return failure();
    if (!vChain.empty())
      return a.emitOpError("has a value that is not a plain projection");

    int64_t headDim =
        cast<RankedTensorType>(a.getQuery().getType()).getDimSize(1) / heads;
    int64_t localHeads = heads / group, localKv = kvHeads / kvParts;
    if (failed(shardWeight(func, *q, q->getWeight(), 0, group, 1,
                           withinReplica(group))) ||
        failed(shardWeight(func, *k, k->getWeight(), 0, kvParts, 1,
                           withinReplica(kvParts))) ||
        failed(shardWeight(func, *v, v->getWeight(), 0, kvParts, 1,
                           withinReplica(kvParts))) ||
        failed(shardWeight(func, out, out.getWeight(), 1, group, 1,
                           withinReplica(group))))
      return failure();
    narrow(*q, qChain, localHeads, localHeads * headDim);
    narrow(*k, kChain, localKv, localKv * headDim);
    narrow(*v, {}, localKv, localKv * headDim);
    Builder b(a.getContext());
    a.setNumHeads(localHeads);
    a.setNumKvHeads(localKv);
    a.getResult().setType(withDim(a.getType(), 1, localHeads * headDim));
    allReduceAfter(out, out.getResult());
    return success();
  }

  LogicalResult shardFeedForward(func::FuncOp func, SwiGluOp s) {
    int64_t group = splitRanks();
    if (group == 1)
      return success();
    auto gate = s.getGate().getDefiningOp<LinearOp>();
    auto up = s.getUp().getDefiningOp<LinearOp>();
    if (!gate || !up || !gate.getResult().hasOneUse() ||
        !up.getResult().hasOneUse() || !s.getResult().hasOneUse())
      return s.emitOpError("is not a gate/up/down SwiGLU block; it cannot be "
                           "split");
    auto down = dyn_cast<LinearOp>(*s.getResult().getUsers().begin());
    if (!down || down.getInput() != s.getResult())
      return s.emitOpError("is not followed by its down projection");
    int64_t stride = withinReplica(group);
    if (failed(
            shardWeight(func, gate, gate.getWeight(), 0, group, 1, stride)) ||
        failed(shardWeight(func, up, up.getWeight(), 0, group, 1, stride)) ||
        failed(shardWeight(func, down, down.getWeight(), 1, group, 1, stride)))
      return failure();
    int64_t width =
        cast<RankedTensorType>(gate.getWeight().getType()).getDimSize(0);
    for (Value v : {gate.getResult(), up.getResult(), s.getResult()})
      v.setType(withDim(v.getType(), 1, width));
    allReduceAfter(down, down.getResult());
    return success();
  }

  LogicalResult shardMoe(func::FuncOp func, MoeOp moe) {
    // Experts: gate_up [E, D, 2F] (gate then up), down [E, F, D].
    int64_t groups = expertGroups, within = ranks / expertGroups;
    if (groups > 1) {
      int64_t experts =
          cast<RankedTensorType>(moe.getRouter().getType()).getDimSize(0);
      if (experts % groups != 0)
        return moe.emitOpError()
               << "has " << experts << " experts, which do not divide into "
               << groups << " expert-parallel groups";
      // Group r * G / R holds experts [g E / G, (g + 1) E / G).
      if (failed(shardWeight(func, moe, moe.getGateUp(), 0, groups)) ||
          failed(shardWeight(func, moe, moe.getDown(), 0, groups)))
        return failure();
      Value rank = rankOf(func);
      if (!rank)
        return moe.emitOpError("could not add the rank input");
      moe.getRankMutable().assign(rank);
      moe.setExpertGroups(groups);
      moe.setRanks(static_cast<int64_t>(ranks));
    }
    // Within a group, rank r % (R / G) holds its slice of each expert's
    // intermediate dimension.
    if (within > 1 &&
        (failed(shardWeight(func, moe, moe.getGateUp(), 2, within,
                            /*groups=*/2, /*stride=*/groups > 1 ? 1 : 0,
                            /*again=*/groups > 1)) ||
         failed(shardWeight(func, moe, moe.getDown(), 1, within, 1,
                            groups > 1 ? 1 : 0, groups > 1))))
      return failure();
    if (attentionReplicas > 1 && allToAll)
      return exchangeAllToAll(func, moe, groups);
    if (moe.getSharedGate() &&
        (failed(shardWeight(func, moe, moe.getSharedGate(), 0, ranks)) ||
         failed(shardWeight(func, moe, moe.getSharedUp(), 0, ranks)) ||
         failed(shardWeight(func, moe, moe.getSharedDown(), 1, ranks))))
      return failure();
    if (attentionReplicas == 1) {
      allReduceAfter(moe, moe.getResult());
      return success();
    }
    // The block runs on every replica's rows; the way back sums the ranks'
    // partial sums and returns each replica its own.
    OpBuilder b(moe);
    Value local = moe.getInput();
    auto localType = cast<RankedTensorType>(local.getType());
    auto gatheredType =
        RankedTensorType::get({ShapedType::kDynamic, localType.getDimSize(1)},
                              localType.getElementType());
    auto replicas = b.getI64IntegerAttr(attentionReplicas);
    auto all = AllGatherOp::create(b, moe.getLoc(), gatheredType, local,
                                   b.getI64IntegerAttr(ranks), replicas);
    moe.getInputMutable().assign(all.getResult());
    moe.getResult().setType(gatheredType);
    b.setInsertionPointAfter(moe);
    auto mine =
        ReduceScatterOp::create(b, moe.getLoc(), localType, moe.getResult(),
                                local, b.getI64IntegerAttr(ranks), replicas);
    moe.getResult().replaceAllUsesExcept(mine.getResult(), mine);
    return success();
  }

  /// The MoE block of a graph with attention replicas as routing on the
  /// replica's rows, an all-to-all to the experts' ranks and back, and the
  /// shared expert split within the replica (expert weights already
  /// sharded over the `groups` expert groups).
  LogicalResult exchangeAllToAll(func::FuncOp func, MoeOp moe, int64_t groups) {
    if (!moe.getSharedGate())
      return moe.emitOpError("has no shared expert; the all-to-all exchange "
                             "is built for Llama 4's MoE blocks, which have "
                             "one");
    int64_t split = splitRanks(), stride = withinReplica(split);
    if (split > 1 && (failed(shardWeight(func, moe, moe.getSharedGate(), 0,
                                         split, 1, stride)) ||
                      failed(shardWeight(func, moe, moe.getSharedUp(), 0, split,
                                         1, stride)) ||
                      failed(shardWeight(func, moe, moe.getSharedDown(), 1,
                                         split, 1, stride))))
      return failure();
    Value rank = rankOf(func);
    if (!rank)
      return moe.emitOpError("could not add the rank input");
    OpBuilder b(moe);
    Location loc = moe.getLoc();
    Value input = moe.getInput();
    auto rowsType = cast<RankedTensorType>(input.getType());
    Type element = rowsType.getElementType();
    int64_t dyn = ShapedType::kDynamic;
    int64_t experts =
        cast<RankedTensorType>(moe.getRouter().getType()).getDimSize(0);
    auto indexType = RankedTensorType::get({dyn}, b.getI64Type());
    auto gatesType = RankedTensorType::get({dyn}, element);
    auto route = MoeRouteOp::create(
        b, loc, indexType, RankedTensorType::get({experts + 1}, b.getI64Type()),
        gatesType, input, moe.getRouter(), Value(), moe.getTopKAttr(),
        IntegerAttr(), IntegerAttr());
    auto ranksAttr = b.getI64IntegerAttr(ranks);
    auto replicasAttr = b.getI64IntegerAttr(attentionReplicas);
    auto groupsAttr = b.getI64IntegerAttr(groups);
    auto dispatch = TokenDispatchOp::create(
        b, loc, rowsType, indexType,
        RankedTensorType::get({experts / groups + 1}, b.getI64Type()),
        gatesType, input, route.getTokenIndices(), route.getExpertOffsets(),
        route.getGates(), rank, ranksAttr, replicasAttr, groupsAttr);
    auto down = cast<RankedTensorType>(moe.getDown().getType());
    Value hidden = ExpertGateUpOp::create(
        b, loc, RankedTensorType::get({dyn, down.getDimSize(1)}, element),
        dispatch.getRows(), dispatch.getPairIndices(),
        dispatch.getReceivedOffsets(), dispatch.getReceivedGates(),
        moe.getGateUp());
    Value outputs = ExpertDownPairsOp::create(
        b, loc, RankedTensorType::get({dyn, down.getDimSize(2)}, element),
        hidden, dispatch.getReceivedOffsets(), moe.getDown());
    Value routed = TokenCombineOp::create(
        b, loc, rowsType, outputs, input, route.getTokenIndices(),
        route.getExpertOffsets(), rank, ranksAttr, replicasAttr, groupsAttr);

    // The shared expert as a dense SwiGLU block (the fusions pack its gate
    // and up projections like the FFN's).
    auto sharedGate = cast<RankedTensorType>(moe.getSharedGate().getType());
    auto ffnType =
        RankedTensorType::get({dyn, sharedGate.getDimSize(0)}, element);
    Value gate = LinearOp::create(b, loc, ffnType, input, moe.getSharedGate());
    Value up = LinearOp::create(b, loc, ffnType, input, moe.getSharedUp());
    Value activated = SwiGluOp::create(b, loc, ffnType, gate, up);
    Value shared =
        LinearOp::create(b, loc, rowsType, activated, moe.getSharedDown());
    Value sum = AddOp::create(b, loc, rowsType, routed, shared);
    if (split > 1)
      sum = AllReduceOp::create(b, loc, rowsType, sum,
                                b.getI64IntegerAttr(split));
    moe.getResult().replaceAllUsesWith(sum);
    moe.erase();
    return success();
  }

  Value rankArg;
};

} // namespace

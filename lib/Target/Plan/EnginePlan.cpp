//===- EnginePlan.cpp - Engine plans from kernel graphs -------------------===//
//
// The plan is a list of values (runtime inputs, checkpoint weights, weight
// repackings, activation buffers) and a list of launches reading and writing
// them, in graph order. Kernels are compiled once each, whatever the number
// of layers that launch them.
//
//===----------------------------------------------------------------------===//

#include "kiln/Target/EnginePlan.h"
#include "dialects/kiln/KilnOps.h"
#include "kiln/Analysis/MemoryPlan.h"

#include "mlir/IR/SymbolTable.h"
#include "llvm/ADT/DenseSet.h"

using namespace mlir;
using namespace mlir::kiln;
namespace plan = ::kiln::plan;

static llvm::Error makeError(const llvm::Twine &message) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
}

FailureOr<plan::DType> mlir::kiln::planDType(Type type) {
  if (type.isBF16())
    return plan::DType::BF16;
  if (type.isF16())
    return plan::DType::F16;
  if (type.isF32())
    return plan::DType::F32;
  if (type.isInteger(64))
    return plan::DType::I64;
  if (type.isInteger(32))
    return plan::DType::I32;
  return failure();
}

static std::vector<int64_t> shapeOf(RankedTensorType type) {
  std::vector<int64_t> shape;
  for (int64_t d : type.getShape())
    shape.push_back(ShapedType::isDynamic(d) ? int64_t(-1) : d);
  return shape;
}

/// Rows of a dynamically sized kernel result: one per token, or top_k per
/// token for the per-pair tensors of a decomposed MoE.
static int64_t rowsPerToken(func::FuncOp kernel, unsigned resultIndex) {
  auto ret = cast<func::ReturnOp>(kernel.getBody().front().getTerminator());
  Operation *def = ret.getOperand(resultIndex).getDefiningOp();
  if (auto route = dyn_cast_or_null<MoeRouteOp>(def))
    return route.getTopK();
  if (isa_and_nonnull<ExpertGateUpOp>(def)) {
    // One row per dispatched pair: top_k of the module's router.
    int64_t k = 1;
    kernel->getParentOfType<ModuleOp>().walk(
        [&](MoeRouteOp r) { k = std::max<int64_t>(k, r.getTopK()); });
    return k;
  }
  return 1;
}

llvm::Expected<plan::Plan> mlir::kiln::buildEnginePlan(
    ModuleOp module, function_ref<Type(Value)> storageOf,
    function_ref<llvm::Error(Operation *, plan::Launch &)> decorateLaunch) {
  auto elementOf = [&](Value v) {
    Type t = storageOf ? storageOf(v) : Type();
    return t ? t : cast<RankedTensorType>(v.getType()).getElementType();
  };
  func::FuncOp graph = graphFunctionOf(module);
  if (!graph)
    return makeError("no graph function to compile");

  plan::Plan result;
  llvm::DenseMap<Value, int64_t> ids;
  auto addValue = [&](Value v, plan::Value entry) -> llvm::Expected<int64_t> {
    FailureOr<plan::DType> dtype = planDType(elementOf(v));
    if (failed(dtype))
      return makeError("a graph value of a type engines cannot hold");
    entry.dtype = *dtype;
    entry.shape = shapeOf(cast<RankedTensorType>(v.getType()));
    int64_t id = static_cast<int64_t>(result.values.size());
    result.values.push_back(std::move(entry));
    ids[v] = id;
    return id;
  };
  Block &body = graph.getBody().front();
  for (BlockArgument arg : body.getArguments()) {
    plan::Value entry;
    if (auto input = graph.getArgAttrOfType<StringAttr>(
            arg.getArgNumber(), KilnDialect::getInputAttrName())) {
      entry.kind = plan::ValueKind::Input;
      entry.input = input.getValue().str();
    } else if (auto name = graph.getArgAttrOfType<StringAttr>(
                   arg.getArgNumber(), KilnDialect::getWeightAttrName())) {
      entry.kind = plan::ValueKind::Weight;
      entry.name = name.getValue().str();
      for (ShardAttr shard : weightShardsOf(graph, arg.getArgNumber()))
        entry.shards.push_back({shard.getDim(), shard.getParts(),
                                shard.getGroups(), shard.getStride()});
    } else {
      return makeError("graph argument " + llvm::Twine(arg.getArgNumber()) +
                       " is neither an input nor a weight");
    }
    if (auto id = addValue(arg, std::move(entry)); !id)
      return id.takeError();
  }

  if (auto ranks = module->getAttrOfType<IntegerAttr>(
          KilnDialect::getTensorParallelAttrName()))
    result.tensorParallel = ranks.getInt();
  if (auto replicas = module->getAttrOfType<IntegerAttr>(
          KilnDialect::getAttentionReplicasAttrName()))
    result.attentionReplicas = replicas.getInt();
  FailureOr<StageAssignment> stages = assignStages(graph);
  if (failed(stages))
    return makeError("the graph's pipeline stages are inconsistent");
  result.pipelineStages = stages->stages;
  // What an all_gather starts and its reduce_scatter ends holds every
  // replica's rows: the kernels in between read only such values, weights
  // and the rank.
  llvm::DenseSet<Value> gathered;
  for (Operation &op : body)
    if (auto gather = dyn_cast<AllGatherOp>(op))
      gathered.insert(gather.getResult());
    else if (auto call = dyn_cast<func::CallOp>(op);
             call && llvm::any_of(call.getOperands(), [&](Value v) {
               return gathered.contains(v);
             }))
      gathered.insert(call.getResults().begin(), call.getResults().end());
  // What a token dispatch yields and the kernels compute from it holds the
  // pairs this rank received, as many as the step's routing sends.
  llvm::DenseSet<Value> received;
  for (Operation &op : body)
    if (auto dispatch = dyn_cast<TokenDispatchOp>(op)) {
      for (Value v : dispatch.getResults())
        if (cast<RankedTensorType>(v.getType()).isDynamicDim(0))
          received.insert(v);
    } else if (auto call = dyn_cast<func::CallOp>(op);
               call && llvm::any_of(call.getOperands(), [&](Value v) {
                 return received.contains(v);
               })) {
      for (Value v : call.getResults())
        if (cast<RankedTensorType>(v.getType()).isDynamicDim(0))
          received.insert(v);
    }
  auto stageOf = [&](int64_t s) {
    return result.pipelineStages > 1 ? s : int64_t(-1);
  };
  for (BlockArgument arg : body.getArguments())
    if (result.values[ids.lookup(arg)].kind == plan::ValueKind::Weight)
      result.values[ids.lookup(arg)].stage = stageOf(stages->of(arg));
  Value logits;
  for (Operation &op : body) {
    if (isa<AllReduceOp, StageSendOp>(op)) {
      plan::Launch launch;
      launch.kind = isa<AllReduceOp>(op) ? plan::LaunchKind::AllReduce
                                         : plan::LaunchKind::StageSend;
      launch.stage = stageOf(stages->of(&op));
      launch.args.push_back(ids.lookup(op.getOperand(0)));
      auto id = addValue(op.getResult(0), plan::Value());
      if (!id)
        return id.takeError();
      launch.results.push_back(*id);
      result.launches.push_back(std::move(launch));
    } else if (auto gather = dyn_cast<GatherPartialsOp>(op)) {
      // Own storage, sized by the step: R blocks when gathered, one when
      // all-reduced, and never R blocks of a long prefill in the arena.
      plan::Launch launch;
      launch.kind = plan::LaunchKind::GatherPartials;
      launch.stage = stageOf(stages->of(&op));
      if (std::optional<uint64_t> most = gather.getMaxRows())
        launch.maxRows = static_cast<int64_t>(*most);
      launch.args.push_back(ids.lookup(gather.getInput()));
      plan::Value entry;
      entry.rowsPerToken = static_cast<int64_t>(gather.getRanks());
      auto id = addValue(gather.getResult(), std::move(entry));
      if (!id)
        return id.takeError();
      launch.results.push_back(*id);
      result.launches.push_back(std::move(launch));
    } else if (isa<TokenDispatchOp, TokenCombineOp>(op)) {
      plan::Launch launch;
      auto dispatch = dyn_cast<TokenDispatchOp>(op);
      launch.kind = dispatch ? plan::LaunchKind::TokenDispatch
                             : plan::LaunchKind::TokenCombine;
      launch.stage = stageOf(stages->of(&op));
      launch.expertGroups = static_cast<int64_t>(
          dispatch ? dispatch.getExpertGroups()
                   : cast<TokenCombineOp>(op).getExpertGroups());
      for (Value operand : op.getOperands())
        launch.args.push_back(ids.lookup(operand));
      for (Value res : op.getResults()) {
        plan::Value entry;
        entry.received = received.contains(res);
        auto id = addValue(res, std::move(entry));
        if (!id)
          return id.takeError();
        launch.results.push_back(*id);
      }
      if (decorateLaunch)
        if (llvm::Error e = decorateLaunch(&op, launch))
          return std::move(e);
      result.launches.push_back(std::move(launch));
    } else if (isa<AllGatherOp, ReduceScatterOp>(op)) {
      // The scatter's `like` only gives the rows of this rank's replica,
      // which the runtime knows from the step.
      plan::Launch launch;
      launch.kind = isa<AllGatherOp>(op) ? plan::LaunchKind::AllGather
                                         : plan::LaunchKind::ReduceScatter;
      launch.stage = stageOf(stages->of(&op));
      launch.args.push_back(ids.lookup(op.getOperand(0)));
      plan::Value entry;
      entry.gathered = gathered.contains(op.getResult(0));
      auto id = addValue(op.getResult(0), std::move(entry));
      if (!id)
        return id.takeError();
      launch.results.push_back(*id);
      result.launches.push_back(std::move(launch));
    } else if (auto broadcast = dyn_cast<StageBroadcastOp>(op)) {
      // In place: the source stage's ranks hold the value, the others
      // receive it into the same buffer.
      plan::Launch launch;
      launch.kind = plan::LaunchKind::StageBroadcast;
      launch.stage = stageOf(stages->of(&op));
      int64_t id = ids.lookup(broadcast.getInput());
      ids[broadcast.getResult()] = id;
      launch.args.push_back(id);
      launch.results.push_back(id);
      result.launches.push_back(std::move(launch));
    } else if (auto concat = dyn_cast<ConcatOp>(op)) {
      plan::Value entry;
      entry.kind = plan::ValueKind::Concat;
      for (Value in : concat.getInputs())
        entry.of.push_back(ids.lookup(in));
      entry.axis = concat.getAxis();
      entry.stage = stageOf(stages->of(&op));
      if (auto id = addValue(concat, std::move(entry)); !id)
        return id.takeError();
    } else if (auto call = dyn_cast<func::CallOp>(op)) {
      auto kernel = SymbolTable::lookupNearestSymbolFrom<func::FuncOp>(
          call, call.getCalleeAttr());
      if (!kernel || !kernel->hasAttr(KilnDialect::getKernelAttrName()))
        return makeError("call to @" + call.getCallee() + " is not a kernel");
      plan::Launch launch;
      launch.kernel = kernel.getSymName().str();
      launch.stage = stageOf(stages->of(&op));
      for (Value operand : call.getOperands())
        launch.args.push_back(ids.lookup(operand));
      for (auto [i, res] : llvm::enumerate(call.getResults())) {
        plan::Value entry;
        entry.kind = plan::ValueKind::Buffer;
        if (cast<RankedTensorType>(res.getType()).isDynamicDim(0)) {
          entry.received = received.contains(res);
          entry.rowsPerToken = entry.received ? 1 : rowsPerToken(kernel, i);
          entry.gathered = gathered.contains(res);
        }
        auto id = addValue(res, std::move(entry));
        if (!id)
          return id.takeError();
        launch.results.push_back(*id);
      }
      for (Operation &inner : kernel.getBody().front())
        if (auto a = dyn_cast<AttentionOp>(inner)) {
          auto key = dyn_cast<BlockArgument>(a.getKey());
          auto value = dyn_cast<BlockArgument>(a.getValue());
          if (!key || !value)
            return makeError("@" + kernel.getSymName() +
                             ": attention keys and values must be kernel "
                             "arguments");
          plan::Slot slot;
          slot.width = cast<RankedTensorType>(key.getType()).getDimSize(1);
          // Chunked layers only ever look inside the current chunk.
          slot.chunk = a.getMask() == MaskKind::Chunked
                           ? a.getChunkSize().value_or(0)
                           : 0;
          launch.attention.push_back(
              {key.getArgNumber(), value.getArgNumber(),
               static_cast<int64_t>(result.slots.size())});
          result.slots.push_back(slot);
        }
      if (decorateLaunch)
        if (llvm::Error e = decorateLaunch(call.getOperation(), launch))
          return std::move(e);
      result.launches.push_back(std::move(launch));
    } else if (auto ret = dyn_cast<func::ReturnOp>(op)) {
      if (ret.getNumOperands() != 1)
        return makeError("the graph must return exactly the logits");
      logits = ret.getOperand(0);
    } else {
      return op.emitOpError("is not part of a kernel graph (run "
                            "kiln-graph-pipeline first)"),
             makeError("the graph is not partitioned");
    }
  }

  // Activation buffers share one arena, placed by liveness.
  llvm::DenseMap<Value, int64_t> rowsPerTokenOf;
  for (Operation &op : body)
    if (auto call = dyn_cast<func::CallOp>(op)) {
      auto kernel = SymbolTable::lookupNearestSymbolFrom<func::FuncOp>(
          call, call.getCalleeAttr());
      for (auto [i, res] : llvm::enumerate(call.getResults()))
        rowsPerTokenOf[res] = rowsPerToken(kernel, i);
    } else if (isa<AllReduceOp, StageSendOp, AllGatherOp, ReduceScatterOp>(
                   op)) {
      rowsPerTokenOf[op.getResult(0)] = rowsPerTokenOf.lookup(op.getOperand(0));
    } else if (isa<TokenDispatchOp, TokenCombineOp>(op)) {
      for (Value res : op.getResults())
        rowsPerTokenOf[res] = 1;
    } else if (auto gather = dyn_cast<GatherPartialsOp>(op)) {
      rowsPerTokenOf[gather.getResult()] =
          rowsPerTokenOf.lookup(gather.getInput()) *
          static_cast<int64_t>(gather.getRanks());
    }
  // The logits live outside the arena: a step that wants only its last
  // row's logits allocates one row, not tokens x vocab (0.8 MB a token for
  // Llama 4).
  // The logits of a pipeline are broadcast in place from the LM head's
  // result: that value is the logits.
  Value logitsSource = logits;
  if (auto broadcast = logits.getDefiningOp<StageBroadcastOp>())
    logitsSource = broadcast.getInput();
  // Gathered values scale with every replica's tokens, not the rank's:
  // they keep storage of their own too.
  auto ownStorage = [&](Value v) {
    return v == logits || v == logitsSource || gathered.contains(v) ||
           received.contains(v) || v.getDefiningOp<GatherPartialsOp>();
  };
  ActivationPlan arena = planActivations(graph, [&](Value v) {
    if (ownStorage(v))
      return int64_t(0);
    auto type = cast<RankedTensorType>(v.getType());
    int64_t row = elementOf(v).getIntOrFloatBitWidth() / 8;
    for (int64_t d : type.getShape().drop_front())
      row *= d;
    return rowsPerTokenOf.lookup(v) * row;
  });
  for (const BufferPlacement &b : arena.buffers)
    if (!ownStorage(b.value))
      result.values[ids.lookup(b.value)].arenaOffset = b.offsetPerToken;
  result.arenaBytesPerToken = arena.peakPerToken;
  result.logits = ids.lookup(logits);
  if (auto positions =
          module->getAttrOfType<IntegerAttr>("kiln.max_position_embeddings"))
    result.maxPositions = positions.getInt();
  if (auto eos = module->getAttrOfType<DenseI64ArrayAttr>("kiln.eos_token_ids"))
    result.eosTokenIds.assign(eos.asArrayRef().begin(), eos.asArrayRef().end());
  return result;
}

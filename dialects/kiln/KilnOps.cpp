//===- KilnOps.cpp - Verifiers of the kiln ops ----------------------------===//
//
// Shape, dtype and attribute checks for every kiln op. The token dimension may
// be dynamic, so extents are compared only when both are known. Each check is
// tagged with its constraint id in docs/dialect.md.
//
//===----------------------------------------------------------------------===//

#include "dialects/kiln/KilnOps.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OpImplementation.h"

#include <cmath>

using namespace mlir;
using namespace mlir::kiln;

/// True when two extents can describe the same size at run time.
static bool compatibleDims(int64_t a, int64_t b) {
  return ShapedType::isDynamic(a) || ShapedType::isDynamic(b) || a == b;
}

static std::string dimStr(int64_t d) {
  return ShapedType::isDynamic(d) ? std::string("?") : std::to_string(d);
}

/// Checks that `value` has rank `rank`; `what` names it in the message.
static LogicalResult checkRank(Operation *op, StringRef what,
                               RankedTensorType type, int64_t rank) {
  if (type.getRank() != rank)
    return op->emitOpError() << "expected " << rank << "-D " << what
                             << ", got rank " << type.getRank();
  return success();
}

/// Checks that the token dimension of `type` can match `tokens`.
static LogicalResult checkTokenDim(Operation *op, StringRef what,
                                   RankedTensorType type, int64_t tokens) {
  if (!compatibleDims(type.getDimSize(0), tokens))
    return op->emitOpError() << "token dimension of " << what << " ("
                             << dimStr(type.getDimSize(0))
                             << ") does not match " << dimStr(tokens);
  return success();
}

/// A static, positive head count that divides `width` (when known).
static LogicalResult checkHeads(Operation *op, StringRef attrName,
                                int64_t heads, int64_t width) {
  if (heads <= 0)
    return op->emitOpError()
           << "expected positive " << attrName << ", got " << heads;
  if (ShapedType::isDynamic(width))
    return op->emitOpError() << "expected a static feature dimension";
  if (width % heads != 0)
    return op->emitOpError()
           << "feature dimension " << width << " is not divisible by "
           << attrName << " = " << heads;
  return success();
}

static LogicalResult checkEpsilon(Operation *op, double eps) {
  if (!(eps > 0.0) || !std::isfinite(eps))
    return op->emitOpError()
           << "expected a positive finite epsilon, got " << eps;
  return success();
}

//===----------------------------------------------------------------------===//
// EmbeddingOp
//===----------------------------------------------------------------------===//

LogicalResult EmbeddingOp::verify() {
  auto table = getTable().getType();
  auto tokens = getTokens().getType();
  auto result = getResult().getType();
  if (failed(checkRank(*this, "table", table, 2)) || // embedding_c1
      failed(checkRank(*this, "tokens", tokens, 1)) ||
      failed(checkRank(*this, "result", result, 2)))
    return failure();
  if (failed(checkTokenDim(*this, "result", result, tokens.getDimSize(0))))
    return failure(); // embedding_c2
  if (!compatibleDims(result.getDimSize(1), table.getDimSize(1)))
    return emitOpError() << "result width " << dimStr(result.getDimSize(1))
                         << " does not match table width "
                         << dimStr(table.getDimSize(1)); // embedding_c3
  return success();
}

//===----------------------------------------------------------------------===//
// RmsNormOp
//===----------------------------------------------------------------------===//

LogicalResult RmsNormOp::verify() {
  auto input = getInput().getType();
  auto weight = getWeight().getType();
  if (failed(checkRank(*this, "input", input, 2)) || // rms_norm_c1
      failed(checkRank(*this, "weight", weight, 1)))
    return failure();
  if (!compatibleDims(weight.getDimSize(0), input.getDimSize(1)))
    return emitOpError() << "weight size " << dimStr(weight.getDimSize(0))
                         << " does not match feature dimension "
                         << dimStr(input.getDimSize(1));      // rms_norm_c2
  return checkEpsilon(*this, getEpsilon().convertToDouble()); // rms_norm_c3
}

//===----------------------------------------------------------------------===//
// QkNormOp
//===----------------------------------------------------------------------===//

LogicalResult QkNormOp::verify() {
  auto input = getInput().getType();
  if (failed(checkRank(*this, "input", input, 2)) || // qk_norm_c1
      failed(checkHeads(*this, "num_heads", getNumHeads(),
                        input.getDimSize(1)))) // qk_norm_c2
    return failure();
  return checkEpsilon(*this, getEpsilon().convertToDouble()); // qk_norm_c3
}

//===----------------------------------------------------------------------===//
// LinearOp
//===----------------------------------------------------------------------===//

LogicalResult LinearOp::verify() {
  auto input = getInput().getType();
  auto weight = getWeight().getType();
  auto result = getResult().getType();
  if (failed(checkRank(*this, "input", input, 2)) || // linear_c1
      failed(checkRank(*this, "weight", weight, 2)) ||
      failed(checkRank(*this, "result", result, 2)))
    return failure();
  if (!compatibleDims(input.getDimSize(1), weight.getDimSize(1)))
    return emitOpError() << "input features " << dimStr(input.getDimSize(1))
                         << " do not match weight [out, in] = ["
                         << dimStr(weight.getDimSize(0)) << ", "
                         << dimStr(weight.getDimSize(1)) << "]"; // linear_c2
  if (failed(checkTokenDim(*this, "result", result, input.getDimSize(0))))
    return failure(); // linear_c3
  if (!compatibleDims(result.getDimSize(1), weight.getDimSize(0)))
    return emitOpError() << "result features " << dimStr(result.getDimSize(1))
                         << " do not match weight rows "
                         << dimStr(weight.getDimSize(0)); // linear_c4
  return success();
}

//===----------------------------------------------------------------------===//
// RopeOp
//===----------------------------------------------------------------------===//

LogicalResult RopeOp::verify() {
  auto input = getInput().getType();
  auto positions = getPositions().getType();
  if (failed(checkRank(*this, "input", input, 2)) || // rope_c1
      failed(checkRank(*this, "positions", positions, 1)) ||
      failed(
          checkTokenDim(*this, "positions", positions, input.getDimSize(0))) ||
      failed(checkHeads(*this, "num_heads", getNumHeads(),
                        input.getDimSize(1)))) // rope_c2
    return failure();
  int64_t headDim = input.getDimSize(1) / getNumHeads();
  if (headDim % 2 != 0)
    return emitOpError() << "head dimension " << headDim
                         << " must be even to form rotation pairs"; // rope_c3
  ArrayRef<double> freqs = getInvFreq();
  if (static_cast<int64_t>(freqs.size()) != headDim / 2)
    return emitOpError() << "expected " << headDim / 2
                         << " inv_freq values (head_dim / 2), got "
                         << freqs.size(); // rope_c4
  for (auto [i, f] : llvm::enumerate(freqs))
    if (!std::isfinite(f) || f < 0.0)
      return emitOpError() << "inv_freq[" << i
                           << "] must be finite and non-negative, got "
                           << f; // rope_c5
  return success();
}

//===----------------------------------------------------------------------===//
// AttentionOp
//===----------------------------------------------------------------------===//

LogicalResult AttentionOp::verify() {
  auto q = getQuery().getType();
  auto k = getKey().getType();
  auto v = getValue().getType();
  auto positions = getPositions().getType();
  if (failed(checkRank(*this, "query", q, 2)) || // attention_c1
      failed(checkRank(*this, "key", k, 2)) ||
      failed(checkRank(*this, "value", v, 2)) ||
      failed(checkRank(*this, "positions", positions, 1)))
    return failure();
  if (k != v)
    return emitOpError() << "key and value types differ: " << k << " vs "
                         << v; // attention_c2
  if (failed(checkTokenDim(*this, "key", k, q.getDimSize(0))) ||
      failed(checkTokenDim(*this, "positions", positions, q.getDimSize(0))))
    return failure(); // attention_c3
  if (failed(checkHeads(*this, "num_heads", getNumHeads(), q.getDimSize(1))) ||
      failed(
          checkHeads(*this, "num_kv_heads", getNumKvHeads(), k.getDimSize(1))))
    return failure(); // attention_c4
  int64_t headDim = q.getDimSize(1) / getNumHeads();
  int64_t kvHeadDim = k.getDimSize(1) / getNumKvHeads();
  if (headDim != kvHeadDim)
    return emitOpError() << "query head dimension " << headDim
                         << " differs from key/value head dimension "
                         << kvHeadDim; // attention_c5
  if (getNumHeads() % getNumKvHeads() != 0)
    return emitOpError() << "num_heads = " << getNumHeads()
                         << " is not a multiple of num_kv_heads = "
                         << getNumKvHeads(); // attention_c6
  double scale = getScale().convertToDouble();
  if (!(scale > 0.0) || !std::isfinite(scale))
    return emitOpError() << "expected a positive finite scale, got "
                         << scale; // attention_c7
  std::optional<int64_t> chunk = getChunkSize();
  if (getMask() == MaskKind::Chunked) {
    if (!chunk || *chunk <= 0)
      return emitOpError()
             << "chunked mask requires a positive chunk_size"; // attention_c8
  } else if (chunk) {
    return emitOpError()
           << "chunk_size is only valid with a chunked mask"; // attention_c8
  }
  if (getAttnScale().has_value() != getFloorScale().has_value())
    return emitOpError() << "temperature tuning needs both attn_scale and "
                            "floor_scale"; // attention_c9
  if (std::optional<int64_t> floor = getFloorScale(); floor && *floor <= 0)
    return emitOpError() << "expected a positive floor_scale, got "
                         << *floor; // attention_c9
  if (std::optional<llvm::APFloat> attnScale = getAttnScale();
      attnScale && !std::isfinite(attnScale->convertToDouble()))
    return emitOpError() << "expected a finite attn_scale"; // attention_c9
  return success();
}

//===----------------------------------------------------------------------===//
// MoeOp
//===----------------------------------------------------------------------===//

/// Expert parallelism of kiln.moe and kiln.moe_route: `local` of the
/// router's `global` experts are held, a 1/G share with `expert_groups = G`
/// of `ranks = R` (then the rank input is needed, G must divide R, and R is
/// the module's tensor-parallel size where the module says).
static LogicalResult checkExpertGroups(Operation *op, Value rank,
                                       std::optional<uint64_t> groups,
                                       std::optional<uint64_t> ranks,
                                       int64_t global, int64_t local) {
  if (!groups) {
    if (rank || ranks)
      return op->emitOpError() << "takes a rank or ranks but has no "
                                  "expert_groups"; // experts_c1
    if (global != local)
      return op->emitOpError()
             << "holds " << local << " experts but its router has " << global
             << "; only an expert-parallel block (expert_groups) holds a "
                "share"; // experts_c2
    return success();
  }
  int64_t g = static_cast<int64_t>(*groups);
  if (g < 2)
    return op->emitOpError()
           << "expert_groups must be at least 2, got " << g; // experts_c3
  if (!rank || !ranks)
    return op->emitOpError() << "is expert-parallel but lacks the rank input "
                                "or the ranks attribute"; // experts_c1
  int64_t r = static_cast<int64_t>(*ranks);
  if (r % g != 0)
    return op->emitOpError()
           << "splits experts into " << g << " groups, which do not divide its "
           << r << " ranks"; // experts_c4
  auto module = op->getParentOfType<ModuleOp>();
  auto moduleRanks = module ? module->getAttrOfType<IntegerAttr>(
                                  KilnDialect::getTensorParallelAttrName())
                            : IntegerAttr();
  if (moduleRanks && moduleRanks.getInt() != r)
    return op->emitOpError()
           << "is split over " << r << " ranks but the module over "
           << moduleRanks.getInt(); // experts_c4
  if (local * g != global)
    return op->emitOpError()
           << "holds " << local << " experts, which is not 1/" << g
           << " of its router's " << global; // experts_c2
  return success();
}

LogicalResult MoeOp::verify() {
  auto input = getInput().getType();
  auto router = getRouter().getType();
  auto gateUp = getGateUp().getType();
  auto down = getDown().getType();
  if (failed(checkRank(*this, "input", input, 2)) || // moe_c1
      failed(checkRank(*this, "router", router, 2)) ||
      failed(checkRank(*this, "gate_up", gateUp, 3)) ||
      failed(checkRank(*this, "down", down, 3)))
    return failure();
  if (ShapedType::isDynamic(input.getDimSize(1)))
    return emitOpError() << "expected a static hidden dimension";
  if (!router.hasStaticShape() || !gateUp.hasStaticShape() ||
      !down.hasStaticShape())
    return emitOpError() << "expected statically shaped expert weights";
  int64_t hidden = input.getDimSize(1);
  int64_t experts = gateUp.getDimSize(0);
  if (router.getDimSize(1) != hidden)
    return emitOpError() << "router must be [experts, " << hidden << "], got ["
                         << router.getDimSize(0) << ", " << router.getDimSize(1)
                         << "]"; // moe_c2
  if (failed(checkExpertGroups(*this, getRank(), getExpertGroups(), getRanks(),
                               router.getDimSize(0), experts)))
    return failure();
  if (gateUp.getDimSize(1) != hidden || gateUp.getDimSize(2) % 2 != 0)
    return emitOpError() << "gate_up must be [" << experts << ", " << hidden
                         << ", 2 * F], got " << gateUp; // moe_c3
  int64_t ffn = gateUp.getDimSize(2) / 2;
  if (down.getDimSize(0) != experts || down.getDimSize(1) != ffn ||
      down.getDimSize(2) != hidden)
    return emitOpError() << "down must be [" << experts << ", " << ffn << ", "
                         << hidden << "], got " << down; // moe_c4
  int64_t topK = getTopK();
  if (topK < 1 || topK > router.getDimSize(0))
    return emitOpError() << "top_k must be in [1, " << router.getDimSize(0)
                         << "], got " << topK; // moe_c5
  if (Value sharedGate = getSharedGate()) {
    auto g = cast<RankedTensorType>(sharedGate.getType());
    auto u = cast<RankedTensorType>(getSharedUp().getType());
    auto d = cast<RankedTensorType>(getSharedDown().getType());
    if (g.getRank() != 2 || !g.hasStaticShape() || g.getDimSize(1) != hidden)
      return emitOpError() << "shared_gate must be [F, " << hidden << "], got "
                           << g; // moe_c6
    int64_t sharedFfn = g.getDimSize(0);
    if (u != g)
      return emitOpError() << "shared_up must have the type of shared_gate ("
                           << g << "), got " << u; // moe_c6
    if (d.getRank() != 2 || d.getDimSize(0) != hidden ||
        d.getDimSize(1) != sharedFfn)
      return emitOpError() << "shared_down must be [" << hidden << ", "
                           << sharedFfn << "], got " << d; // moe_c6
  }
  return success();
}

//===----------------------------------------------------------------------===//
// ConcatOp
//===----------------------------------------------------------------------===//

LogicalResult ConcatOp::verify() {
  if (getInputs().size() < 2)
    return emitOpError() << "expected at least 2 inputs, got "
                         << getInputs().size(); // concat_c1
  auto result = getResult().getType();
  int64_t axis = getAxis();
  if (axis < 0 || axis >= result.getRank())
    return emitOpError() << "axis " << axis << " is out of range for rank "
                         << result.getRank(); // concat_c2
  int64_t total = 0;
  for (auto [i, value] : llvm::enumerate(getInputs())) {
    auto type = cast<RankedTensorType>(value.getType());
    if (!type.hasStaticShape() || type.getRank() != result.getRank() ||
        type.getElementType() != result.getElementType())
      return emitOpError() << "input " << i << " (" << type
                           << ") must be statically shaped with the rank and "
                              "element type of the result"; // concat_c3
    for (int64_t d = 0; d < type.getRank(); ++d)
      if (d != axis && type.getDimSize(d) != result.getDimSize(d))
        return emitOpError() << "input " << i << " differs from the result "
                             << "in dimension " << d; // concat_c4
    total += type.getDimSize(axis);
  }
  if (result.getDimSize(axis) != total)
    return emitOpError() << "result dimension " << axis << " is "
                         << dimStr(result.getDimSize(axis))
                         << " but the inputs add up to " << total; // concat_c5
  return success();
}

//===----------------------------------------------------------------------===//
// SplitOp
//===----------------------------------------------------------------------===//

LogicalResult SplitOp::verify() {
  auto input = getInput().getType();
  if (failed(checkRank(*this, "input", input, 2))) // split_c1
    return failure();
  if (getResults().empty())
    return emitOpError() << "expected at least one result"; // split_c1
  int64_t total = 0;
  for (auto [i, value] : llvm::enumerate(getResults())) {
    auto type = cast<RankedTensorType>(value.getType());
    if (type.getRank() != 2 || ShapedType::isDynamic(type.getDimSize(1)) ||
        type.getElementType() != input.getElementType())
      return emitOpError() << "result " << i << " (" << type
                           << ") must be 2-D with a static width and the "
                              "input's element type"; // split_c2
    if (failed(checkTokenDim(*this, "result", type, input.getDimSize(0))))
      return failure(); // split_c3
    total += type.getDimSize(1);
  }
  if (!compatibleDims(input.getDimSize(1), total))
    return emitOpError() << "result widths add up to " << total
                         << " but the input has "
                         << dimStr(input.getDimSize(1)); // split_c4
  return success();
}

//===----------------------------------------------------------------------===//
// PackedSwiGluOp
//===----------------------------------------------------------------------===//

LogicalResult PackedSwiGluOp::verify() {
  auto input = getInput().getType();
  auto result = getResult().getType();
  if (failed(checkRank(*this, "input", input, 2)) ||
      failed(checkRank(*this, "result", result, 2)) ||
      failed(checkTokenDim(*this, "result", result, input.getDimSize(0))))
    return failure(); // packed_swiglu_c1
  if (input.getElementType() != result.getElementType())
    return emitOpError() << "input and result element types differ";
  if (ShapedType::isDynamic(input.getDimSize(1)) ||
      input.getDimSize(1) != 2 * result.getDimSize(1))
    return emitOpError() << "input width " << dimStr(input.getDimSize(1))
                         << " must be twice the result width "
                         << dimStr(result.getDimSize(1)); // packed_swiglu_c2
  return success();
}

//===----------------------------------------------------------------------===//
// AddRmsNormOp
//===----------------------------------------------------------------------===//

LogicalResult AddRmsNormOp::verify() {
  auto input = getInput().getType();
  auto weight = getWeight().getType();
  if (failed(checkRank(*this, "input", input, 2)) ||
      failed(checkRank(*this, "weight", weight, 1)))
    return failure(); // add_rms_norm_c1
  if (!compatibleDims(weight.getDimSize(0), input.getDimSize(1)))
    return emitOpError() << "weight size " << dimStr(weight.getDimSize(0))
                         << " does not match feature dimension "
                         << dimStr(input.getDimSize(1)); // add_rms_norm_c2
  if (failed(checkEpsilon(*this, getEpsilon().convertToDouble())))
    return failure(); // add_rms_norm_c3
  auto residual = getResidual().getType();
  int64_t partials = static_cast<int64_t>(getPartials());
  if (partials < 1)
    return emitOpError() << "needs at least 1 partial, got "
                         << partials; // add_rms_norm_c4
  // add_rms_norm_c5: blocks of the residual's rows, so a dynamic count.
  if (partials > 1 && !ShapedType::isDynamic(residual.getDimSize(0)))
    return emitOpError() << "sums " << partials
                         << " partials, which needs a dynamic row count, got "
                         << residual;
  return success();
}

//===----------------------------------------------------------------------===//
// QkvEpilogueOp
//===----------------------------------------------------------------------===//

LogicalResult QkvEpilogueOp::verify() {
  auto qkv = getQkv().getType();
  auto q = getQuery().getType();
  auto k = getKey().getType();
  auto v = getValue().getType();
  if (failed(checkRank(*this, "qkv", qkv, 2)) || // qkv_epilogue_c1
      failed(checkRank(*this, "positions", getPositions().getType(), 1)) ||
      failed(checkRank(*this, "query", q, 2)) ||
      failed(checkTokenDim(*this, "positions", getPositions().getType(),
                           qkv.getDimSize(0))))
    return failure();
  if (k != v)
    return emitOpError() << "key and value types differ: " << k << " vs "
                         << v; // qkv_epilogue_c2
  for (RankedTensorType part : {q, k})
    if (part.getElementType() != qkv.getElementType() ||
        failed(checkTokenDim(*this, "result", part, qkv.getDimSize(0))))
      return emitOpError() << "results must have the token count and element "
                              "type of qkv"; // qkv_epilogue_c2
  if (failed(checkHeads(*this, "num_heads", getNumHeads(), q.getDimSize(1))) ||
      failed(
          checkHeads(*this, "num_kv_heads", getNumKvHeads(), k.getDimSize(1))))
    return failure(); // qkv_epilogue_c3
  int64_t headDim = q.getDimSize(1) / getNumHeads();
  if (k.getDimSize(1) / static_cast<int64_t>(getNumKvHeads()) != headDim)
    return emitOpError() << "query and key/value head dimensions differ";
  if (!compatibleDims(qkv.getDimSize(1), q.getDimSize(1) + 2 * k.getDimSize(1)))
    return emitOpError() << "qkv width " << dimStr(qkv.getDimSize(1))
                         << " is not q + k + v = "
                         << q.getDimSize(1) + 2 * k.getDimSize(1)
                         << " columns"; // qkv_epilogue_c4
  if (std::optional<ArrayRef<double>> freqs = getInvFreq()) {
    if (headDim % 2 != 0 || static_cast<int64_t>(freqs->size()) != headDim / 2)
      return emitOpError() << "expected " << headDim / 2
                           << " inv_freq values (head_dim / 2), got "
                           << freqs->size(); // qkv_epilogue_c5
    for (auto [i, f] : llvm::enumerate(*freqs))
      if (!std::isfinite(f) || f < 0.0)
        return emitOpError()
               << "inv_freq[" << i << "] must be finite and non-negative, got "
               << f; // qkv_epilogue_c5
  }
  if (std::optional<llvm::APFloat> eps = getQkNormEpsilon())
    if (failed(checkEpsilon(*this, eps->convertToDouble())))
      return failure(); // qkv_epilogue_c6
  if (getAttnScale().has_value() != getFloorScale().has_value())
    return emitOpError() << "temperature tuning needs both attn_scale and "
                            "floor_scale"; // qkv_epilogue_c7
  if (std::optional<int64_t> floor = getFloorScale(); floor && *floor <= 0)
    return emitOpError() << "expected a positive floor_scale, got "
                         << *floor; // qkv_epilogue_c7
  return success();
}

//===----------------------------------------------------------------------===//
// MoeRouteOp, ExpertGateUpOp, ExpertDownOp
//===----------------------------------------------------------------------===//

/// Checks the dispatch operands shared by the expert ops: 1-D indices and
/// gates of one length, offsets [experts + 1].
static LogicalResult checkDispatch(Operation *op, RankedTensorType indices,
                                   RankedTensorType offsets,
                                   RankedTensorType gates, int64_t experts) {
  if (failed(checkRank(op, "token_indices", indices, 1)) ||
      failed(checkRank(op, "expert_offsets", offsets, 1)) ||
      (gates && failed(checkRank(op, "gates", gates, 1))))
    return failure(); // dispatch_c1
  if (gates && !compatibleDims(gates.getDimSize(0), indices.getDimSize(0)))
    return op->emitOpError() << "gates and token_indices differ in length";
  if (offsets.getDimSize(0) != experts + 1)
    return op->emitOpError() << "expert_offsets must have " << experts + 1
                             << " entries (experts + 1), got "
                             << dimStr(offsets.getDimSize(0)); // dispatch_c2
  return success();
}

LogicalResult MoeRouteOp::verify() {
  auto input = getInput().getType();
  auto router = getRouter().getType();
  if (failed(checkRank(*this, "input", input, 2)) ||
      failed(checkRank(*this, "router", router, 2)))
    return failure(); // moe_route_c1
  if (!router.hasStaticShape() ||
      !compatibleDims(router.getDimSize(1), input.getDimSize(1)))
    return emitOpError() << "router must be a static [experts, "
                         << dimStr(input.getDimSize(1)) << "], got "
                         << router; // moe_route_c2
  int64_t experts = router.getDimSize(0);
  int64_t topK = getTopK();
  if (topK < 1 || topK > experts)
    return emitOpError() << "top_k must be in [1, " << experts << "], got "
                         << topK; // moe_route_c3
  int64_t local = getExpertOffsets().getType().getRank() == 1
                      ? getExpertOffsets().getType().getDimSize(0) - 1
                      : experts;
  if (failed(checkExpertGroups(*this, getRank(), getExpertGroups(), getRanks(),
                               experts, getExpertGroups() ? local : experts)) ||
      failed(checkDispatch(*this, getTokenIndices().getType(),
                           getExpertOffsets().getType(), getGates().getType(),
                           getExpertGroups() ? local : experts)))
    return failure();
  int64_t tokens = input.getDimSize(0);
  int64_t pairs = getTokenIndices().getType().getDimSize(0);
  if (!ShapedType::isDynamic(tokens) && !compatibleDims(pairs, tokens * topK))
    return emitOpError() << "expected " << tokens * topK
                         << " dispatched pairs, got " << pairs; // moe_route_c4
  return success();
}

LogicalResult ExpertGateUpOp::verify() {
  auto input = getInput().getType();
  auto gateUp = getGateUp().getType();
  auto result = getResult().getType();
  if (failed(checkRank(*this, "input", input, 2)) ||
      failed(checkRank(*this, "gate_up", gateUp, 3)) ||
      failed(checkRank(*this, "result", result, 2)))
    return failure(); // expert_gate_up_c1
  if (!gateUp.hasStaticShape() ||
      !compatibleDims(gateUp.getDimSize(1), input.getDimSize(1)) ||
      gateUp.getDimSize(2) != 2 * result.getDimSize(1))
    return emitOpError() << "gate_up must be a static [E, "
                         << dimStr(input.getDimSize(1)) << ", 2 * "
                         << dimStr(result.getDimSize(1)) << "], got "
                         << gateUp; // expert_gate_up_c2
  if (failed(checkDispatch(*this, getTokenIndices().getType(),
                           getExpertOffsets().getType(), getGates().getType(),
                           gateUp.getDimSize(0))))
    return failure();
  if (failed(checkTokenDim(*this, "result", result,
                           getTokenIndices().getType().getDimSize(0))))
    return failure(); // expert_gate_up_c3
  return success();
}

LogicalResult ExpertDownOp::verify() {
  auto hidden = getHidden().getType();
  auto down = getDown().getType();
  auto addend = getAddend().getType();
  if (failed(checkRank(*this, "hidden", hidden, 2)) ||
      failed(checkRank(*this, "down", down, 3)) ||
      failed(checkRank(*this, "addend", addend, 2)))
    return failure(); // expert_down_c1
  if (!down.hasStaticShape() ||
      !compatibleDims(down.getDimSize(1), hidden.getDimSize(1)) ||
      !compatibleDims(down.getDimSize(2), addend.getDimSize(1)))
    return emitOpError() << "down must be a static [E, "
                         << dimStr(hidden.getDimSize(1)) << ", "
                         << dimStr(addend.getDimSize(1)) << "], got "
                         << down; // expert_down_c2
  if (failed(checkDispatch(*this, getTokenIndices().getType(),
                           getExpertOffsets().getType(), nullptr,
                           down.getDimSize(0))))
    return failure();
  if (failed(checkTokenDim(*this, "hidden", hidden,
                           getTokenIndices().getType().getDimSize(0))))
    return failure(); // expert_down_c3
  return success();
}

/// The integer attribute `name` of the module around `op`, or `absent`.
static int64_t moduleCount(Operation *op, StringRef name, int64_t absent) {
  auto module = op->getParentOfType<ModuleOp>();
  auto count =
      module ? module->getAttrOfType<IntegerAttr>(name) : IntegerAttr();
  return count ? count.getInt() : absent;
}

/// The data-parallel attention replicas of the module around `op` (1 when
/// attention is not replicated).
static int64_t attentionReplicasOf(Operation *op) {
  return moduleCount(op, KilnDialect::getAttentionReplicasAttrName(), 1);
}

/// The ranks of the tensor-parallel module around `op` (0 when it is not
/// one).
static int64_t tensorParallelRanksOf(Operation *op) {
  return moduleCount(op, KilnDialect::getTensorParallelAttrName(), 0);
}

LogicalResult AllReduceOp::verify() {
  if (getRanks() < 2)
    return emitOpError() << "needs at least 2 ranks, got "
                         << getRanks(); // all_reduce_c1
  int64_t ranks = tensorParallelRanksOf(*this),
          replicas = attentionReplicasOf(*this);
  if (ranks == 0 || ranks / replicas != static_cast<int64_t>(getRanks()))
    return emitOpError() << "reduces over " << getRanks()
                         << " ranks but the module is not a tensor-parallel "
                            "graph of that many ranks per attention replica "
                            "(kiln.tensor_parallel / "
                            "kiln.attention_replicas)";
  // all_reduce_c2
  return success();
}

LogicalResult GatherPartialsOp::verify() {
  if (getRanks() < 2)
    return emitOpError() << "needs at least 2 ranks, got "
                         << getRanks(); // gather_partials_c1
  int64_t ranks = tensorParallelRanksOf(*this),
          replicas = attentionReplicasOf(*this);
  if (ranks == 0 || ranks / replicas != static_cast<int64_t>(getRanks()))
    return emitOpError() << "gathers over " << getRanks()
                         << " ranks but the module is not a tensor-parallel "
                            "graph of that many ranks per attention replica "
                            "(kiln.tensor_parallel / "
                            "kiln.attention_replicas)"; // gather_partials_c2
  if (std::optional<uint64_t> most = getMaxRows();
      most && static_cast<int64_t>(*most) < 0)
    return emitOpError() << "max_rows must be >= 0, got "
                         << static_cast<int64_t>(*most);
  // gather_partials_c3
  RankedTensorType input = getInput().getType();
  if (input.getRank() != 2 || !ShapedType::isDynamic(input.getDimSize(0)))
    return emitOpError() << "needs [tokens, width] rows of a dynamic count "
                            "(the result has "
                         << getRanks() << " times as many), got "
                         << input; // gather_partials_c4
  return success();
}

/// Checks shared by kiln.all_gather and kiln.reduce_scatter: the module
/// has `replicas` data-parallel attention replicas over `ranks` ranks
/// (exchange_c1, exchange_c2), and `rows` and `other` are [N, H] tensors of
/// the same H (exchange_c3).
static LogicalResult verifyTokenExchange(Operation *op, int64_t ranks,
                                         int64_t replicas, Type rows,
                                         Type other) {
  if (replicas < 2)
    return op->emitOpError()
           << "needs at least 2 replicas, got " << replicas; // exchange_c1
  if (tensorParallelRanksOf(op) != ranks || attentionReplicasOf(op) != replicas)
    return op->emitOpError()
           << "exchanges rows of " << replicas << " replicas over " << ranks
           << " ranks but the module is not a graph of that many "
              "data-parallel attention replicas and ranks "
              "(kiln.attention_replicas, kiln.tensor_parallel)"; // exchange_c2
  auto a = cast<RankedTensorType>(rows), b = cast<RankedTensorType>(other);
  if (a.getRank() != 2 || b.getRank() != 2 ||
      a.getDimSize(1) != b.getDimSize(1) ||
      ShapedType::isDynamic(a.getDimSize(1)))
    return op->emitOpError() << "needs [tokens, width] tensors of one static "
                                "width, got "
                             << rows << " and " << other; // exchange_c3
  return success();
}

LogicalResult AllGatherOp::verify() {
  if (failed(verifyTokenExchange(*this, getRanks(), getReplicas(),
                                 getInput().getType(), getType())))
    return failure();
  // The gathered row count depends on the other replicas.
  if (!ShapedType::isDynamic(getType().getDimSize(0)))
    return emitOpError() << "must have a dynamic row count, got "
                         << getType(); // all_gather_c1
  return success();
}

LogicalResult ReduceScatterOp::verify() {
  if (failed(verifyTokenExchange(*this, getRanks(), getReplicas(),
                                 getInput().getType(), getLike().getType())))
    return failure();
  if (!ShapedType::isDynamic(getInput().getType().getDimSize(0)))
    return emitOpError() << "must take gathered rows (a dynamic row count), "
                            "got "
                         << getInput().getType(); // reduce_scatter_c1
  return success();
}

LogicalResult ExpertDownPairsOp::verify() {
  auto hidden = getHidden().getType();
  auto down = getDown().getType();
  auto result = getResult().getType();
  if (failed(checkRank(*this, "hidden", hidden, 2)) ||
      failed(checkRank(*this, "down", down, 3)) ||
      failed(checkRank(*this, "result", result, 2)))
    return failure(); // expert_down_pairs_c1
  if (!down.hasStaticShape() ||
      !compatibleDims(down.getDimSize(1), hidden.getDimSize(1)) ||
      !compatibleDims(down.getDimSize(2), result.getDimSize(1)))
    return emitOpError() << "down must be a static [E, "
                         << dimStr(hidden.getDimSize(1)) << ", "
                         << dimStr(result.getDimSize(1)) << "], got "
                         << down; // expert_down_pairs_c2
  if (!compatibleDims(hidden.getDimSize(0), result.getDimSize(0)))
    return emitOpError() << "has " << dimStr(hidden.getDimSize(0))
                         << " pairs but " << dimStr(result.getDimSize(0))
                         << " result rows"; // expert_down_pairs_c3
  return checkDispatch(
      *this,
      RankedTensorType::get({ShapedType::kDynamic},
                            IntegerType::get(getContext(), 64)),
      getExpertOffsets().getType(), nullptr, down.getDimSize(0));
}

/// Checks shared by kiln.token_dispatch and kiln.token_combine: the module
/// has `replicas` attention replicas over `ranks` ranks (all_to_all_c1),
/// `groups` expert groups divide the ranks and the router's experts
/// (all_to_all_c2), `rows` is [N, H] with N dynamic and H static and the
/// routing is a router's over all experts (all_to_all_c3).
static LogicalResult
verifyAllToAll(Operation *op, int64_t ranks, int64_t replicas, int64_t groups,
               RankedTensorType rows, RankedTensorType indices,
               RankedTensorType offsets, RankedTensorType gates) {
  if (replicas < 2 || tensorParallelRanksOf(op) != ranks ||
      attentionReplicasOf(op) != replicas)
    return op->emitOpError()
           << "exchanges rows of " << replicas << " replicas over " << ranks
           << " ranks but the module is not a graph of at least 2 "
              "data-parallel attention replicas of that many ranks "
              "(kiln.attention_replicas, kiln.tensor_parallel)";
  if (failed(checkRank(op, "expert_offsets", offsets, 1)))
    return failure();
  int64_t experts = offsets.getDimSize(0) - 1;
  if (groups < 1 || ranks % groups != 0 || experts < 1 || experts % groups != 0)
    return op->emitOpError()
           << experts << " experts in " << groups << " expert groups over "
           << ranks << " ranks: the groups must divide both"; // all_to_all_c2
  if (rows.getRank() != 2 || !ShapedType::isDynamic(rows.getDimSize(0)) ||
      ShapedType::isDynamic(rows.getDimSize(1)))
    return op->emitOpError() << "needs [tokens, width] rows of a dynamic "
                                "count and a static width, got "
                             << rows; // all_to_all_c3
  return checkDispatch(op, indices, offsets, gates, experts);
}

LogicalResult TokenDispatchOp::verify() {
  int64_t groups = static_cast<int64_t>(getExpertGroups());
  if (failed(verifyAllToAll(*this, getRanks(), getReplicas(), groups,
                            getInput().getType(), getTokenIndices().getType(),
                            getExpertOffsets().getType(),
                            getGates().getType())))
    return failure();
  int64_t experts = getExpertOffsets().getType().getDimSize(0) - 1;
  auto rows = getRows().getType();
  if (rows != getInput().getType())
    return emitOpError() << "sends rows of " << getInput().getType()
                         << " but receives " << rows; // token_dispatch_c1
  return checkDispatch(*this, getPairIndices().getType(),
                       getReceivedOffsets().getType(),
                       getReceivedGates().getType(), experts / groups);
  // token_dispatch_c2: the received routing covers the group's experts.
}

LogicalResult TokenCombineOp::verify() {
  auto outputs = getPairOutputs().getType();
  if (failed(verifyAllToAll(*this, getRanks(), getReplicas(),
                            static_cast<int64_t>(getExpertGroups()),
                            getInput().getType(), getTokenIndices().getType(),
                            getExpertOffsets().getType(), nullptr)))
    return failure();
  if (outputs.getRank() != 2 ||
      outputs.getDimSize(1) != getInput().getType().getDimSize(1))
    return emitOpError() << "pair outputs " << outputs
                         << " are not rows of the input's width "
                         << getInput().getType(); // token_combine_c1
  return success();
}

/// The pipeline stages of the module around `op` (0 when it has none).
static int64_t pipelineStagesOf(Operation *op) {
  return moduleCount(op, KilnDialect::getPipelineStagesAttrName(), 0);
}

LogicalResult StageSendOp::verify() {
  int64_t stages = pipelineStagesOf(*this);
  auto stage = static_cast<int64_t>(getStage());
  if (stages < 2 || stage < 0 || stage + 1 >= stages)
    return emitOpError() << "sends from stage " << stage
                         << " but the module is not a pipeline of a stage "
                            "after it (kiln.pipeline_stages)"; // stage_c1
  return success();
}

LogicalResult StageBroadcastOp::verify() {
  int64_t stages = pipelineStagesOf(*this);
  auto stage = static_cast<int64_t>(getStage());
  if (stages < 2 || stage < 0 || stage >= stages)
    return emitOpError() << "broadcasts from stage " << stage
                         << " but the module is not a pipeline with that "
                            "stage (kiln.pipeline_stages)"; // stage_c1
  return success();
}

func::FuncOp mlir::kiln::graphFunctionOf(ModuleOp module) {
  func::FuncOp graph;
  for (auto f : module.getOps<func::FuncOp>())
    if (f.isPublic() && !f.isExternal())
      graph = f;
  return graph;
}

#define GET_OP_CLASSES
#include "dialects/kiln/KilnOps.cpp.inc"

SmallVector<mlir::kiln::ShardAttr>
mlir::kiln::weightShardsOf(func::FuncOp func, unsigned argIndex) {
  SmallVector<ShardAttr> shards;
  Attribute attr = func.getArgAttr(argIndex, KilnDialect::getShardAttrName());
  if (auto one = dyn_cast_or_null<ShardAttr>(attr))
    shards.push_back(one);
  else if (auto many = dyn_cast_or_null<ArrayAttr>(attr))
    for (Attribute a : many)
      if (auto s = dyn_cast<ShardAttr>(a))
        shards.push_back(s);
  return shards;
}

FailureOr<mlir::kiln::StageAssignment>
mlir::kiln::assignStages(func::FuncOp func) {
  StageAssignment out;
  constexpr int64_t all = StageAssignment::kAllStages;
  auto module = func->getParentOfType<ModuleOp>();
  if (auto stages = module ? module->getAttrOfType<IntegerAttr>(
                                 KilnDialect::getPipelineStagesAttrName())
                           : IntegerAttr())
    out.stages = stages.getInt();
  Block &body = func.getBody().front();
  // Stage attributes out of range are the ops' verifiers' to report.
  for (Operation &op : body) {
    int64_t last = out.stages - 1;
    if (auto send = dyn_cast<StageSendOp>(op);
        send && static_cast<int64_t>(send.getStage()) >= last)
      return out;
    if (auto b = dyn_cast<StageBroadcastOp>(op);
        b && static_cast<int64_t>(b.getStage()) > last)
      return out;
  }
  for (BlockArgument arg : body.getArguments())
    out.values[arg] = all;
  // Forward: an op runs where its (staged) operands are.
  SmallVector<Operation *> unplaced;
  for (Operation &op : body) {
    if (isa<func::ReturnOp>(op))
      continue;
    int64_t stage = all;
    if (out.stages == 1) {
      stage = 0;
    } else if (auto send = dyn_cast<StageSendOp>(op)) {
      stage = send.getStage();
    } else if (auto broadcast = dyn_cast<StageBroadcastOp>(op)) {
      stage = broadcast.getStage();
    } else {
      for (Value operand : op.getOperands()) {
        int64_t s = out.values.lookup(operand);
        if (s == all)
          continue;
        if (stage != all && s != stage)
          return op.emitOpError()
                     << "reads values of pipeline stages " << stage << " and "
                     << s << " (a kiln.stage_send must carry a value across)",
                 failure();
        stage = s;
      }
    }
    out.ops[&op] = stage;
    int64_t resultStage = stage;
    if (isa<StageSendOp>(op))
      resultStage = stage + 1;
    else if (isa<StageBroadcastOp>(op))
      resultStage = all;
    for (Value r : op.getResults())
      out.values[r] = resultStage;
    if (stage == all)
      unplaced.push_back(&op);
  }
  // Backward: ops with no staged operand (the first stage up to its first
  // stage_send, weight repackings), then the weights, go where their users
  // are.
  auto usersStage = [&](Value v, int64_t &stage) -> LogicalResult {
    stage = all;
    for (Operation *user : v.getUsers()) {
      int64_t s = out.of(user);
      if (isa<func::ReturnOp>(user) || s == all)
        continue;
      if (stage != all && s != stage)
        return failure();
      stage = s;
    }
    return success();
  };
  for (Operation *op : llvm::reverse(unplaced)) {
    int64_t stage = all;
    for (Value r : op->getResults()) {
      int64_t s;
      if (failed(usersStage(r, s)) || (stage != all && s != all && s != stage))
        return op->emitOpError()
                   << "feeds ops of two pipeline stages; each stage needs "
                      "its own",
               failure();
      if (s != all)
        stage = s;
    }
    out.ops[op] = stage;
    for (Value r : op->getResults())
      out.values[r] = stage;
  }
  for (Operation &op : body)
    if (isa<StageSendOp, StageBroadcastOp>(op)) {
      int64_t from = out.values.lookup(op.getOperand(0));
      if (from == all)
        return op.emitOpError() << "carries a value every stage has (an "
                                   "argument or a broadcast result)",
               failure();
      if (from != out.of(&op))
        return op.emitOpError() << "carries a value of stage " << from
                                << " from stage " << out.of(&op),
               failure();
    }
  for (BlockArgument arg : body.getArguments()) {
    if (!func.getArgAttr(arg.getArgNumber(), KilnDialect::getWeightAttrName()))
      continue;
    int64_t stage;
    if (failed(usersStage(arg, stage)))
      return func.emitOpError()
                 << "weight argument " << arg.getArgNumber()
                 << " is read on two pipeline stages; each stage needs its "
                    "own",
             failure();
    out.values[arg] = stage;
  }
  return out;
}

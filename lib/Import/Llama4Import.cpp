//===- Llama4Import.cpp - Hugging Face Llama 4 -> kiln
//---------------------===//
//
// Emits the text decoder of a Llama 4 checkpoint as one function,
//
//   func.func @forward(%tokens {kiln.input = "tokens"},
//                      %positions {kiln.input = "positions"},
//                      %w... {kiln.weight = "<tensor name>"}) -> logits
//
// following spec sections 2-4 of llama4-architecture.md. Every layer is
// emitted (identical layers are shared later, at kernel partition). Each op
// carries a NameLoc of its checkpoint module path so diagnostics point at the
// layer.
//
//===----------------------------------------------------------------------===//

#include "kiln/Import/Llama4Import.h"
#include "dialects/kiln/KilnOps.h"
#include "kiln/runtime/Safetensors.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/Verifier.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/Support/FormatVariadic.h"

#include <cmath>

using namespace mlir;
using namespace ::kiln;
using ::kiln::Checkpoint;

std::vector<::kiln::Llama4Weight>(::kiln::listLlama4Weights)(
    const Llama4Config &c) {
  std::vector<Llama4Weight> w;
  std::string p = c.modelPrefix();
  int64_t d = c.hiddenSize, hd = c.headDim;
  w.push_back({p + "embed_tokens.weight", {c.vocabSize, d}});
  for (int64_t i = 0; i < c.numHiddenLayers; ++i) {
    std::string l = p + "layers." + std::to_string(i) + ".";
    w.push_back({l + "input_layernorm.weight", {d}});
    w.push_back({l + "self_attn.q_proj.weight", {c.numAttentionHeads * hd, d}});
    w.push_back({l + "self_attn.k_proj.weight", {c.numKeyValueHeads * hd, d}});
    w.push_back({l + "self_attn.v_proj.weight", {c.numKeyValueHeads * hd, d}});
    w.push_back({l + "self_attn.o_proj.weight", {d, c.numAttentionHeads * hd}});
    w.push_back({l + "post_attention_layernorm.weight", {d}});
    std::string f = l + "feed_forward.";
    if (c.moeLayer[i]) {
      int64_t e = c.numLocalExperts, ff = c.intermediateSize;
      w.push_back({f + "router.weight", {e, d}});
      w.push_back({f + "experts.gate_up_proj", {e, d, 2 * ff}});
      w.push_back({f + "experts.down_proj", {e, ff, d}});
      w.push_back({f + "shared_expert.gate_proj.weight", {ff, d}});
      w.push_back({f + "shared_expert.up_proj.weight", {ff, d}});
      w.push_back({f + "shared_expert.down_proj.weight", {d, ff}});
    } else {
      int64_t ff = c.intermediateSizeMlp;
      w.push_back({f + "gate_proj.weight", {ff, d}});
      w.push_back({f + "up_proj.weight", {ff, d}});
      w.push_back({f + "down_proj.weight", {d, ff}});
    }
  }
  w.push_back({p + "norm.weight", {d}});
  if (!c.tieWordEmbeddings)
    w.push_back({c.lmHeadName(), {c.vocabSize, d}});
  return w;
}

static std::string shapeString(const std::vector<int64_t> &shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

llvm::Error(::kiln::checkLlama4Weights)(const Llama4Config &config,
                                        const Checkpoint &checkpoint) {
  for (const Llama4Weight &w : listLlama4Weights(config)) {
    const TensorInfo *info = checkpoint.find(w.name);
    if (!info)
      return llvm::createStringError(
          llvm::inconvertibleErrorCode(),
          llvm::formatv("{0}: missing tensor '{1}' (expected shape {2})",
                        checkpoint.locationOf(w.name), w.name,
                        shapeString(w.shape)));
    if (info->shape != w.shape)
      return llvm::createStringError(
          llvm::inconvertibleErrorCode(),
          llvm::formatv(
              "{0}: tensor '{1}' has shape {2}; expected {3} from {4}",
              info->file->path(), w.name, info->shapeString(),
              shapeString(w.shape), config.path));
    if (info->dtype != DType::BF16 && info->dtype != DType::F16 &&
        info->dtype != DType::F32)
      return llvm::createStringError(
          llvm::inconvertibleErrorCode(),
          llvm::formatv("{0}: tensor '{1}' has dtype {2}; expected BF16, F16 "
                        "or F32",
                        info->file->path(), w.name, dtypeName(info->dtype)));
  }
  return llvm::Error::success();
}

namespace {

/// Emits the layers of one function. Weights are looked up by name among the
/// function's arguments.
class Llama4Builder {
public:
  Llama4Builder(OpBuilder &b, const Llama4Config &c,
                const llvm::StringMap<Value> &weights, Value positions)
      : b(b), c(c), weights(weights), positions(positions),
        actType(b.getF32Type()) {}

  Value weight(const std::string &name) const {
    Value v = weights.lookup(name);
    assert(v && "weight list and builder disagree");
    return v;
  }

  Location loc(const std::string &name) const {
    return NameLoc::get(b.getStringAttr(name));
  }

  RankedTensorType act(int64_t width) const {
    return RankedTensorType::get({ShapedType::kDynamic, width}, actType);
  }

  Value linear(Value x, const std::string &name, int64_t out) {
    return mlir::kiln::LinearOp::create(b, loc(name), act(out), x,
                                        weight(name));
  }

  Value rmsNorm(Value x, const std::string &name) {
    return mlir::kiln::RmsNormOp::create(b, loc(name), x.getType(), x,
                                         weight(name),
                                         b.getF64FloatAttr(c.rmsNormEps));
  }

  Value attention(Value x, int64_t layer, const std::string &l) {
    int64_t hd = c.headDim;
    int64_t qWidth = c.numAttentionHeads * hd,
            kvWidth = c.numKeyValueHeads * hd;
    std::string a = l + "self_attn.";
    Value q = linear(x, a + "q_proj.weight", qWidth);
    Value k = linear(x, a + "k_proj.weight", kvWidth);
    Value v = linear(x, a + "v_proj.weight", kvWidth);
    bool rope = c.ropeLayer[layer];
    if (rope) {
      DenseF64ArrayAttr freqs = b.getDenseF64ArrayAttr(c.ropeInvFreq());
      q = mlir::kiln::RopeOp::create(b, loc(a + "rope"), q.getType(), q,
                                     positions, c.numAttentionHeads, freqs);
      k = mlir::kiln::RopeOp::create(b, loc(a + "rope"), k.getType(), k,
                                     positions, c.numKeyValueHeads, freqs);
      // QK norm only on RoPE layers, after RoPE (reference order).
      if (c.useQkNorm) {
        FloatAttr eps = b.getF64FloatAttr(c.rmsNormEps);
        q = mlir::kiln::QkNormOp::create(
            b, loc(a + "qk_norm"), q, b.getI64IntegerAttr(c.numAttentionHeads),
            eps);
        k = mlir::kiln::QkNormOp::create(
            b, loc(a + "qk_norm"), k, b.getI64IntegerAttr(c.numKeyValueHeads),
            eps);
      }
    }
    bool chunked = c.chunkedLayer[layer];
    auto mask = mlir::kiln::MaskKindAttr::get(
        b.getContext(),
        chunked ? mlir::kiln::MaskKind::Chunked : mlir::kiln::MaskKind::Causal);
    IntegerAttr chunk =
        chunked ? b.getI64IntegerAttr(c.attentionChunkSize) : IntegerAttr();
    // Temperature tuning acts on NoPE layers only.
    bool temperature = !rope && c.attnTemperatureTuning;
    FloatAttr attnScale =
        temperature ? b.getF64FloatAttr(c.attnScale) : FloatAttr();
    IntegerAttr floorScale =
        temperature ? b.getI64IntegerAttr(c.floorScale) : IntegerAttr();
    Value o = mlir::kiln::AttentionOp::create(
        b, loc(a + "attention"), q.getType(), q, k, v, positions,
        b.getI64IntegerAttr(c.numAttentionHeads),
        b.getI64IntegerAttr(c.numKeyValueHeads),
        b.getF64FloatAttr(1.0 / std::sqrt(static_cast<double>(hd))), mask,
        chunk, attnScale, floorScale);
    return linear(o, a + "o_proj.weight", c.hiddenSize);
  }

  Value feedForward(Value u, int64_t layer, const std::string &l) {
    std::string f = l + "feed_forward.";
    if (c.moeLayer[layer]) {
      return mlir::kiln::MoeOp::create(
          b, loc(f + "experts"), u.getType(), u, weight(f + "router.weight"),
          weight(f + "experts.gate_up_proj"), weight(f + "experts.down_proj"),
          weight(f + "shared_expert.gate_proj.weight"),
          weight(f + "shared_expert.up_proj.weight"),
          weight(f + "shared_expert.down_proj.weight"), /*rank=*/Value(),
          c.numExpertsPerTok, /*expert_groups=*/nullptr, /*ranks=*/nullptr);
    }
    Value g = linear(u, f + "gate_proj.weight", c.intermediateSizeMlp);
    Value up = linear(u, f + "up_proj.weight", c.intermediateSizeMlp);
    Value s = mlir::kiln::SwiGluOp::create(b, loc(f + "act_fn"), g, up);
    return linear(s, f + "down_proj.weight", c.hiddenSize);
  }

  Value build(Value tokens) {
    std::string p = c.modelPrefix();
    Value x = mlir::kiln::EmbeddingOp::create(
        b, loc(p + "embed_tokens"), act(c.hiddenSize),
        weight(p + "embed_tokens.weight"), tokens);
    for (int64_t i = 0; i < c.numHiddenLayers; ++i) {
      std::string l = p + "layers." + std::to_string(i) + ".";
      Value h = rmsNorm(x, l + "input_layernorm.weight");
      x = mlir::kiln::AddOp::create(b, loc(l + "residual"), x,
                                    attention(h, i, l));
      Value u = rmsNorm(x, l + "post_attention_layernorm.weight");
      x = mlir::kiln::AddOp::create(b, loc(l + "residual"), x,
                                    feedForward(u, i, l));
    }
    Value y = rmsNorm(x, p + "norm.weight");
    return linear(y, c.lmHeadName(), c.vocabSize);
  }

private:
  OpBuilder &b;
  const Llama4Config &c;
  const llvm::StringMap<Value> &weights;
  Value positions;
  Type actType;
};

} // namespace

static Type elementTypeFor(MLIRContext &ctx, DType dtype) {
  switch (dtype) {
  case DType::F32:
    return Float32Type::get(&ctx);
  case DType::F16:
    return Float16Type::get(&ctx);
  default:
    return BFloat16Type::get(&ctx);
  }
}

OwningOpRef<ModuleOp>(::kiln::buildLlama4Module)(MLIRContext &context,
                                                 const Llama4Config &config,
                                                 const Checkpoint *checkpoint) {
  context.loadDialect<mlir::kiln::KilnDialect, func::FuncDialect>();
  OpBuilder b(&context);
  Location fileLoc = FileLineColLoc::get(&context, config.path, 1, 1);
  OwningOpRef<ModuleOp> module = ModuleOp::create(fileLoc);
  module->getOperation()->setAttr("kiln.architecture",
                                  b.getStringAttr(config.architecture));
  module->getOperation()->setAttr(
      "kiln.max_position_embeddings",
      b.getI64IntegerAttr(config.maxPositionEmbeddings));
  if (!config.eosTokenIds.empty())
    module->getOperation()->setAttr("kiln.eos_token_ids",
                                    b.getDenseI64ArrayAttr(config.eosTokenIds));

  DType defaultDType = config.torchDtype == "float32"   ? DType::F32
                       : config.torchDtype == "float16" ? DType::F16
                                                        : DType::BF16;
  std::vector<Llama4Weight> weights = listLlama4Weights(config);
  SmallVector<Type> argTypes;
  SmallVector<Attribute> argAttrs;
  auto tokensType =
      RankedTensorType::get({ShapedType::kDynamic}, b.getI32Type());
  auto positionsType =
      RankedTensorType::get({ShapedType::kDynamic}, b.getI64Type());
  argTypes.push_back(tokensType);
  argAttrs.push_back(b.getDictionaryAttr(b.getNamedAttr(
      mlir::kiln::KilnDialect::getInputAttrName(), b.getStringAttr("tokens"))));
  argTypes.push_back(positionsType);
  argAttrs.push_back(b.getDictionaryAttr(
      b.getNamedAttr(mlir::kiln::KilnDialect::getInputAttrName(),
                     b.getStringAttr("positions"))));
  for (const Llama4Weight &w : weights) {
    DType dtype = defaultDType;
    if (checkpoint && checkpoint->hasWeights())
      if (const TensorInfo *info = checkpoint->find(w.name))
        dtype = info->dtype;
    argTypes.push_back(
        RankedTensorType::get(w.shape, elementTypeFor(context, dtype)));
    argAttrs.push_back(b.getDictionaryAttr(
        b.getNamedAttr(mlir::kiln::KilnDialect::getWeightAttrName(),
                       b.getStringAttr(w.name))));
  }
  auto logitsType = RankedTensorType::get(
      {ShapedType::kDynamic, config.vocabSize}, b.getF32Type());
  b.setInsertionPointToEnd(module->getBody());
  auto func = func::FuncOp::create(b, fileLoc, "forward",
                                   b.getFunctionType(argTypes, {logitsType}));
  func.setAllArgAttrs(argAttrs);
  Block *entry = func.addEntryBlock();
  b.setInsertionPointToStart(entry);

  llvm::StringMap<Value> byName;
  for (auto [i, w] : llvm::enumerate(weights))
    byName[w.name] = entry->getArgument(i + 2);
  Llama4Builder builder(b, config, byName, entry->getArgument(1));
  Value logits = builder.build(entry->getArgument(0));
  func::ReturnOp::create(b, fileLoc, logits);
  return module;
}

llvm::Expected<OwningOpRef<ModuleOp>>(::kiln::importLlama4Checkpoint)(
    MLIRContext &context, const std::string &dir) {
  llvm::Expected<Llama4Config> config = readLlama4Config(dir);
  if (!config)
    return config.takeError();
  std::string error;
  std::unique_ptr<Checkpoint> checkpoint = Checkpoint::open(dir, error);
  if (!checkpoint)
    return llvm::createStringError(llvm::inconvertibleErrorCode(), error);
  if (checkpoint->hasWeights())
    if (llvm::Error e = checkLlama4Weights(*config, *checkpoint))
      return std::move(e);
  OwningOpRef<ModuleOp> module =
      buildLlama4Module(context, *config, checkpoint.get());
  if (failed(verify(*module)))
    return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                   dir +
                                       ": the imported graph does not verify");
  return module;
}

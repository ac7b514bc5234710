//===- Llama4Config.cpp - Hugging Face Llama 4 configuration
//---------------===//
//
// Validates every text-model field Kiln reads (spec section 1 of
// llama4-architecture.md), applies Hugging Face's defaults for absent keys,
// and derives the per-layer pattern exactly as configuration_llama4.py does.
//
//===----------------------------------------------------------------------===//

#include "kiln/Import/Llama4Config.h"

#include "kiln/runtime/Files.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/MemoryBuffer.h"

#include <cmath>
#include <limits>
#include <set>

using namespace ::kiln;
using llvm::json::Object;
using llvm::json::Value;

namespace {

/// Reads typed fields of one JSON object, turning every mismatch into an
/// error that names the file and the dotted field path.
class FieldReader {
public:
  FieldReader(const Object &object, std::string path, std::string prefix)
      : object(object), path(std::move(path)), prefix(std::move(prefix)) {}

  llvm::Error fail(llvm::StringRef key, const llvm::Twine &what) const {
    return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                   llvm::formatv("{0}: field '{1}{2}': {3}",
                                                 path, prefix, key,
                                                 what.str()));
  }

  static std::string show(const Value &v) {
    std::string s;
    llvm::raw_string_ostream os(s);
    os << v;
    if (s.size() > 40)
      s = s.substr(0, 37) + "...";
    return s;
  }

  const Value *get(llvm::StringRef key) const { return object.get(key); }
  bool present(llvm::StringRef key) const {
    const Value *v = get(key);
    return v && v->kind() != Value::Null;
  }

  /// Integer in [`min`, `max`]. Absent or null keeps `out`.
  llvm::Error integer(llvm::StringRef key, int64_t &out, int64_t min,
                      int64_t max = std::numeric_limits<int64_t>::max()) const {
    const Value *v = get(key);
    if (!v || v->kind() == Value::Null)
      return llvm::Error::success();
    std::optional<int64_t> i = v->getAsInteger();
    if (!i) {
      // Hugging Face writes some counts as floats (8192.0): accept exact ones.
      std::optional<double> d = v->getAsNumber();
      if (d && std::isfinite(*d) && std::floor(*d) == *d &&
          std::fabs(*d) < 9e15)
        i = static_cast<int64_t>(*d);
    }
    if (!i)
      return fail(key, "expected an integer, got " + show(*v));
    if (*i < min)
      return fail(
          key, llvm::formatv("expected an integer >= {0}, got {1}", min, *i));
    if (*i > max)
      return fail(key, llvm::formatv("{0} is past any model Kiln can build "
                                     "(at most {1})",
                                     *i, max));
    out = *i;
    return llvm::Error::success();
  }

  /// Finite number; `positive` requires > 0, else >= 0.
  llvm::Error number(llvm::StringRef key, double &out, bool positive) const {
    const Value *v = get(key);
    if (!v || v->kind() == Value::Null)
      return llvm::Error::success();
    std::optional<double> d = v->getAsNumber();
    if (!d || !std::isfinite(*d))
      return fail(key, "expected a number, got " + show(*v));
    if (positive ? !(*d > 0) : !(*d >= 0))
      return fail(key,
                  llvm::formatv("expected a {0} number, got {1}",
                                positive ? "positive" : "non-negative", *d));
    out = *d;
    return llvm::Error::success();
  }

  /// Boolean; integers are accepted as truthy/falsy because early
  /// transformers releases wrote `attn_temperature_tuning: 4`.
  llvm::Error boolean(llvm::StringRef key, bool &out) const {
    const Value *v = get(key);
    if (!v || v->kind() == Value::Null)
      return llvm::Error::success();
    if (std::optional<bool> b = v->getAsBoolean()) {
      out = *b;
      return llvm::Error::success();
    }
    if (std::optional<int64_t> i = v->getAsInteger()) {
      out = *i != 0;
      return llvm::Error::success();
    }
    return fail(key, "expected a boolean, got " + show(*v));
  }

  llvm::Error string(llvm::StringRef key, std::string &out) const {
    const Value *v = get(key);
    if (!v || v->kind() == Value::Null)
      return llvm::Error::success();
    std::optional<llvm::StringRef> s = v->getAsString();
    if (!s)
      return fail(key, "expected a string, got " + show(*v));
    out = s->str();
    return llvm::Error::success();
  }

  const std::string &filePath() const { return path; }
  const std::string &fieldPrefix() const { return prefix; }

private:
  const Object &object;
  std::string path;
  std::string prefix;
};

} // namespace

std::string Llama4Config::modelPrefix() const {
  return multimodal ? "language_model.model." : "model.";
}

std::string Llama4Config::lmHeadName() const {
  if (tieWordEmbeddings)
    return modelPrefix() + "embed_tokens.weight";
  return multimodal ? "language_model.lm_head.weight" : "lm_head.weight";
}

std::vector<double> Llama4Config::ropeInvFreq() const {
  std::vector<double> freqs(headDim / 2);
  for (int64_t m = 0; m < headDim / 2; ++m)
    freqs[m] = 1.0 / std::pow(ropeTheta, static_cast<double>(2 * m) /
                                             static_cast<double>(headDim));
  if (!hasRopeScaling)
    return freqs;
  // llama3 scaling: long wavelengths are slowed by `factor`, short ones kept,
  // the band in between blended. With low == high the band is empty and only
  // the two outer branches are reachable (Scout), so the blend is evaluated
  // only where it applies: no 0/0.
  const Llama4RopeScaling &s = ropeScaling;
  double oldContext = static_cast<double>(s.originalMaxPositionEmbeddings);
  double lowFreqWavelen = oldContext / s.lowFreqFactor;
  double highFreqWavelen = oldContext / s.highFreqFactor;
  for (double &f : freqs) {
    double wavelen = 2.0 * M_PI / f;
    if (wavelen < highFreqWavelen)
      continue;
    if (wavelen > lowFreqWavelen) {
      f = f / s.factor;
      continue;
    }
    double smooth = (oldContext / wavelen - s.lowFreqFactor) /
                    (s.highFreqFactor - s.lowFreqFactor);
    f = (1.0 - smooth) * f / s.factor + smooth * f;
  }
  return freqs;
}

static llvm::Error parseRopeScaling(const FieldReader &text,
                                    Llama4Config &config) {
  const Value *v = text.get("rope_scaling");
  if (!v || v->kind() == Value::Null)
    return llvm::Error::success();
  const Object *obj = v->getAsObject();
  if (!obj)
    return text.fail("rope_scaling", "expected an object or null");
  FieldReader rs(*obj, text.filePath(), text.fieldPrefix() + "rope_scaling.");
  std::string type;
  if (auto e = rs.string("rope_type", type))
    return e;
  if (type.empty())
    if (auto e = rs.string("type", type))
      return e;
  if (type.empty() || type == "default")
    return llvm::Error::success();
  if (type != "llama3")
    return rs.fail("rope_type", "unsupported RoPE scaling '" + type +
                                    "' (Llama 4 uses 'llama3' or none)");
  Llama4RopeScaling &s = config.ropeScaling;
  s.ropeType = type;
  for (const char *key : {"factor", "low_freq_factor", "high_freq_factor",
                          "original_max_position_embeddings"})
    if (!rs.present(key))
      return rs.fail(key, "required by llama3 RoPE scaling but missing");
  if (auto e = rs.number("factor", s.factor, /*positive=*/true))
    return e;
  if (auto e = rs.number("low_freq_factor", s.lowFreqFactor, true))
    return e;
  if (auto e = rs.number("high_freq_factor", s.highFreqFactor, true))
    return e;
  if (auto e = rs.integer("original_max_position_embeddings",
                          s.originalMaxPositionEmbeddings, 1))
    return e;
  if (s.highFreqFactor < s.lowFreqFactor)
    return rs.fail("high_freq_factor",
                   llvm::formatv("must be >= low_freq_factor ({0}), got {1}",
                                 s.lowFreqFactor, s.highFreqFactor));
  config.hasRopeScaling = true;
  return llvm::Error::success();
}

/// Reads a list of non-negative integers; `present` reports whether the key
/// held a (possibly empty) list rather than null/absent.
static llvm::Error intList(const FieldReader &r, llvm::StringRef key,
                           std::vector<int64_t> &out, bool &present) {
  present = false;
  const Value *v = r.get(key);
  if (!v || v->kind() == Value::Null)
    return llvm::Error::success();
  const llvm::json::Array *arr = v->getAsArray();
  if (!arr)
    return r.fail(key,
                  "expected a list of integers, got " + FieldReader::show(*v));
  present = true;
  for (auto [i, e] : llvm::enumerate(*arr)) {
    std::optional<int64_t> n = e.getAsInteger();
    if (!n)
      return r.fail(key,
                    llvm::formatv("element {0}: expected an integer, got {1}",
                                  i, FieldReader::show(e)));
    out.push_back(*n);
  }
  return llvm::Error::success();
}

/// The byte where `text` nests arrays and objects deeper than `limit`, or
/// npos. llvm::json recurses once per level with no bound of its own, so a
/// hostile config would otherwise overflow the stack.
static size_t tooDeepAt(const std::string &text, int limit) {
  int depth = 0;
  bool inString = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (inString) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        inString = false;
    } else if (c == '"') {
      inString = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit)
        return i;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return std::string::npos;
}

llvm::Expected<Llama4Config> kiln::parseLlama4Config(const std::string &text,
                                                     const std::string &path) {
  // The runtime's JSON reader (engines, shard indexes) has the same bound.
  constexpr int kMaxDepth = 128;
  if (size_t at = tooDeepAt(text, kMaxDepth); at != std::string::npos)
    return llvm::createStringError(
        llvm::inconvertibleErrorCode(),
        llvm::formatv("{0}: JSON nested deeper than {1} levels (at byte {2})",
                      path, kMaxDepth, at));
  llvm::Expected<Value> parsed = llvm::json::parse(text);
  if (!parsed) {
    // llvm::json reports "[line:column, byte=N]: message".
    std::string message = llvm::toString(parsed.takeError());
    unsigned line = 0, column = 0;
    llvm::StringRef rest(message);
    if (rest.consume_front("[") && !rest.consumeInteger(10, line) &&
        rest.consume_front(":") && !rest.consumeInteger(10, column)) {
      size_t colon = rest.find("]: ");
      if (colon != llvm::StringRef::npos)
        message = llvm::formatv("line {0}, column {1}: {2}", line, column,
                                rest.drop_front(colon + 3))
                      .str();
    }
    return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                   path + ": malformed JSON at " + message);
  }
  const Object *root = parsed->getAsObject();
  if (!root)
    return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                   path + ": expected a JSON object");

  Llama4Config config;
  config.path = path;
  FieldReader top(*root, path, "");

  std::string architecture;
  if (const Value *archs = root->get("architectures")) {
    const llvm::json::Array *list = archs->getAsArray();
    if (!list || list->empty() || !(*list)[0].getAsString())
      return top.fail("architectures", "expected a non-empty list of strings");
    architecture = (*list)[0].getAsString()->str();
  }
  const Value *textConfigValue = root->get("text_config");
  if (architecture.empty())
    architecture = textConfigValue ? "Llama4ForConditionalGeneration"
                                   : "Llama4ForCausalLM";
  if (architecture != "Llama4ForConditionalGeneration" &&
      architecture != "Llama4ForCausalLM")
    return top.fail("architectures",
                    "unsupported architecture '" + architecture +
                        "' (expected Llama4ForConditionalGeneration or "
                        "Llama4ForCausalLM)");
  config.architecture = architecture;
  config.multimodal = architecture == "Llama4ForConditionalGeneration";

  const Object *textObject = root;
  std::string prefix;
  if (config.multimodal) {
    if (!textConfigValue || !textConfigValue->getAsObject())
      return top.fail("text_config",
                      "Llama4ForConditionalGeneration needs a text_config "
                      "object");
    textObject = textConfigValue->getAsObject();
    prefix = "text_config.";
  }
  FieldReader t(*textObject, path, prefix);

  std::string modelType;
  if (auto e = t.string("model_type", modelType))
    return std::move(e);
  if (!modelType.empty() && modelType != "llama4_text" && modelType != "llama4")
    return t.fail("model_type",
                  "expected 'llama4_text', got '" + modelType + "'");

  // Top-level keys of a multimodal config may carry the dtype and tying.
  if (config.multimodal) {
    if (auto e = top.string("torch_dtype", config.torchDtype))
      return std::move(e);
    if (auto e = top.boolean("tie_word_embeddings", config.tieWordEmbeddings))
      return std::move(e);
  }

  // Upper bounds far past any published transformer (Llama 4 Maverick:
  // hidden 5120, 48 layers, 202048 tokens, 128 experts), so that no size
  // computed from them overflows and nothing is sized in the billions.
  struct IntField {
    const char *key;
    int64_t *out;
    int64_t min, max;
  } ints[] = {
      {"hidden_size", &config.hiddenSize, 1, int64_t(1) << 17},
      {"num_hidden_layers", &config.numHiddenLayers, 1, 4096},
      {"num_attention_heads", &config.numAttentionHeads, 1, 4096},
      {"num_key_value_heads", &config.numKeyValueHeads, 1, 4096},
      {"vocab_size", &config.vocabSize, 1, int64_t(1) << 24},
      {"intermediate_size", &config.intermediateSize, 1, int64_t(1) << 20},
      {"intermediate_size_mlp", &config.intermediateSizeMlp, 1,
       int64_t(1) << 20},
      {"num_local_experts", &config.numLocalExperts, 1, int64_t(1) << 16},
      {"num_experts_per_tok", &config.numExpertsPerTok, 1, int64_t(1) << 16},
      {"interleave_moe_layer_step", &config.interleaveMoeLayerStep, 1, 4096},
      {"floor_scale", &config.floorScale, 1, int64_t(1) << 40},
      {"max_position_embeddings", &config.maxPositionEmbeddings, 1,
       int64_t(1) << 30},
      {"bos_token_id", &config.bosTokenId, 0, int64_t(1) << 31},
      {"pad_token_id", &config.padTokenId, 0, int64_t(1) << 31},
  };
  for (const IntField &f : ints)
    if (auto e = t.integer(f.key, *f.out, f.min, f.max))
      return std::move(e);

  // head_dim: Hugging Face's default argument is 128; an explicit null means
  // hidden_size / num_attention_heads.
  if (const Value *hd = t.get("head_dim"); hd && hd->kind() == Value::Null) {
    config.headDim = config.hiddenSize / config.numAttentionHeads;
    if (config.headDim < 2)
      return t.fail("head_dim",
                    llvm::formatv("is null, and hidden_size / "
                                  "num_attention_heads = {0} / {1} = {2} is "
                                  "no head size (at least 2)",
                                  config.hiddenSize, config.numAttentionHeads,
                                  config.headDim));
  } else if (auto e = t.integer("head_dim", config.headDim, 2, 1 << 16)) {
    return std::move(e);
  }

  if (const Value *chunk = t.get("attention_chunk_size");
      chunk && chunk->kind() == Value::Null)
    config.attentionChunkSize = 0;
  else if (auto e = t.integer("attention_chunk_size", config.attentionChunkSize,
                              1, int64_t(1) << 30))
    return std::move(e);

  if (auto e = t.number("rope_theta", config.ropeTheta, true))
    return std::move(e);
  if (auto e = t.number("rms_norm_eps", config.rmsNormEps, true))
    return std::move(e);
  if (auto e = t.number("attn_scale", config.attnScale, false))
    return std::move(e);
  if (auto e = t.boolean("use_qk_norm", config.useQkNorm))
    return std::move(e);
  if (auto e =
          t.boolean("attn_temperature_tuning", config.attnTemperatureTuning))
    return std::move(e);
  if (auto e = t.boolean("tie_word_embeddings", config.tieWordEmbeddings))
    return std::move(e);
  if (auto e = t.string("torch_dtype", config.torchDtype))
    return std::move(e);
  if (auto e = parseRopeScaling(t, config))
    return std::move(e);

  std::string act = "silu";
  if (auto e = t.string("hidden_act", act))
    return std::move(e);
  if (act != "silu")
    return t.fail("hidden_act",
                  "unsupported activation '" + act + "' (Llama 4 uses 'silu')");
  bool attentionBias = false;
  if (auto e = t.boolean("attention_bias", attentionBias))
    return std::move(e);
  if (attentionBias)
    return t.fail("attention_bias",
                  "attention biases are not part of Llama 4 and unsupported");
  if (config.torchDtype != "bfloat16" && config.torchDtype != "float16" &&
      config.torchDtype != "float32")
    return t.fail("torch_dtype",
                  "expected bfloat16, float16 or float32, got '" +
                      config.torchDtype + "'");

  // eos_token_id: an integer or a list of integers.
  if (const Value *eos = t.get("eos_token_id");
      eos && eos->kind() != Value::Null) {
    if (std::optional<int64_t> one = eos->getAsInteger()) {
      config.eosTokenIds.push_back(*one);
    } else {
      bool present;
      if (auto e = intList(t, "eos_token_id", config.eosTokenIds, present))
        return std::move(e);
    }
    for (int64_t id : config.eosTokenIds)
      if (id < 0 || id >= config.vocabSize)
        return t.fail(
            "eos_token_id",
            llvm::formatv("token {0} is outside the vocabulary [0, {1})", id,
                          config.vocabSize));
  }

  // Cross-field checks.
  if (config.numAttentionHeads % config.numKeyValueHeads != 0)
    return t.fail("num_key_value_heads",
                  llvm::formatv("{0} does not divide num_attention_heads = {1}",
                                config.numKeyValueHeads,
                                config.numAttentionHeads));
  if (config.headDim % 2 != 0)
    return t.fail(
        "head_dim",
        llvm::formatv("must be even for RoPE pairs, got {0}", config.headDim));
  if (config.numExpertsPerTok > config.numLocalExperts)
    return t.fail("num_experts_per_tok",
                  llvm::formatv("{0} exceeds num_local_experts = {1}",
                                config.numExpertsPerTok,
                                config.numLocalExperts));
  int64_t layers = config.numHiddenLayers;

  // MoE layers: explicit list, else every `interleave_moe_layer_step`-th layer
  // starting at step - 1 (HF); Meta's (i + 1) % step == 0 is the same set.
  std::vector<int64_t> moeList;
  bool moeGiven;
  if (auto e = intList(t, "moe_layers", moeList, moeGiven))
    return std::move(e);
  config.moeLayer.assign(layers, false);
  if (moeGiven) {
    for (int64_t i : moeList) {
      if (i < 0 || i >= layers)
        return t.fail(
            "moe_layers",
            llvm::formatv("layer {0} is outside [0, {1})", i, layers));
      config.moeLayer[i] = true;
    }
  } else {
    for (int64_t i = config.interleaveMoeLayerStep - 1; i < layers;
         i += config.interleaveMoeLayerStep)
      config.moeLayer[i] = true;
  }

  // no_rope_layers: 1 = RoPE, 0 = NoPE; empty or absent = every 4th NoPE.
  std::vector<int64_t> noRope;
  bool noRopeGiven;
  if (auto e = intList(t, "no_rope_layers", noRope, noRopeGiven))
    return std::move(e);
  int64_t interval = 4;
  if (auto e = t.integer("no_rope_layer_interval", interval, 1))
    return std::move(e);
  config.ropeLayer.assign(layers, true);
  if (!noRope.empty()) {
    if (static_cast<int64_t>(noRope.size()) != layers)
      return t.fail(
          "no_rope_layers",
          llvm::formatv("expected {0} entries (one per layer), got {1}", layers,
                        noRope.size()));
    for (auto [i, flag] : llvm::enumerate(noRope)) {
      if (flag != 0 && flag != 1)
        return t.fail("no_rope_layers",
                      llvm::formatv("element {0}: expected 0 (NoPE) or 1 "
                                    "(RoPE), got {1}",
                                    i, flag));
      config.ropeLayer[i] = flag == 1;
    }
  } else {
    for (int64_t i = 0; i < layers; ++i)
      config.ropeLayer[i] = (i + 1) % interval != 0;
  }

  // layer_types: when given it decides the mask; otherwise RoPE layers are
  // chunked and NoPE layers full.
  config.chunkedLayer = config.ropeLayer;
  if (const Value *types = t.get("layer_types");
      types && types->kind() != Value::Null) {
    const llvm::json::Array *arr = types->getAsArray();
    if (!arr || static_cast<int64_t>(arr->size()) != layers)
      return t.fail("layer_types",
                    llvm::formatv("expected a list of {0} strings", layers));
    for (auto [i, e] : llvm::enumerate(*arr)) {
      std::optional<llvm::StringRef> s = e.getAsString();
      if (!s || (*s != "chunked_attention" && *s != "full_attention"))
        return t.fail("layer_types",
                      llvm::formatv("element {0}: expected 'chunked_attention' "
                                    "or 'full_attention'",
                                    i));
      config.chunkedLayer[i] = *s == "chunked_attention";
    }
  }
  if (config.attentionChunkSize == 0)
    for (int64_t i = 0; i < layers; ++i)
      if (config.chunkedLayer[i])
        return t.fail("attention_chunk_size",
                      llvm::formatv("is null but layer {0} uses chunked "
                                    "attention",
                                    i));
  return config;
}

llvm::Expected<Llama4Config> kiln::readLlama4Config(const std::string &dir) {
  std::string path = dir + "/config.json";
  // A regular file only (a FIFO would block, a directory is no config), and
  // no config is 16 MB.
  std::string text, error;
  if (!kiln::readRegularFile(path, text, error, uint64_t(16) << 20))
    return llvm::createStringError(llvm::inconvertibleErrorCode(), error);
  return parseLlama4Config(text, path);
}

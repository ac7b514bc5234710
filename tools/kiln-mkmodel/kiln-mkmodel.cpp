//===- kiln-mkmodel.cpp - Random Llama 4 checkpoints ----------------------===//
//
// Writes a random Llama 4 checkpoint in exactly the Hugging Face layout:
// config.json plus bf16 safetensors (one file, or shards with an index), the
// tensor names and shapes of spec section 5. Values are a deterministic
// function of --seed. The presets are small models that still exercise every
// Llama 4 feature:
//
//   tiny-scout     16 experts, MoE in every layer, QK norm, llama3 RoPE
//                  scaling, 8 layers (layers 3 and 7 are NoPE)
//   tiny-maverick  128 experts, MoE on odd layers, dense FFN on even layers,
//                  no QK norm, no RoPE scaling
//
// Every size can be overridden by a flag.
//
//===----------------------------------------------------------------------===//

#include "kiln/Import/Llama4Config.h"
#include "kiln/Import/Llama4Import.h"
#include "kiln/runtime/Json.h"
#include "kiln/runtime/Safetensors.h"
#include "kiln/runtime/ToolGuards.h"

#include "llvm/Support/CommandLine.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/WithColor.h"
#include "llvm/Support/raw_ostream.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <unistd.h>

using namespace llvm;

static cl::OptionCategory category("kiln-mkmodel options");
static cl::opt<std::string> outputDir("o", cl::Required, cl::cat(category),
                                      cl::desc("Checkpoint folder to write"),
                                      cl::value_desc("dir"));
static cl::opt<std::string> preset("preset", cl::init("tiny-scout"),
                                   cl::cat(category),
                                   cl::desc("tiny-scout or tiny-maverick"));
static cl::opt<uint64_t> seed("seed", cl::init(0), cl::cat(category),
                              cl::desc("Random seed"));
static cl::opt<unsigned> shards("shards", cl::init(1), cl::cat(category),
                                cl::desc("Number of safetensors shards"));
static cl::opt<bool>
    textOnly("text-only", cl::cat(category),
             cl::desc("Write a text-only Llama4ForCausalLM checkpoint"));
static cl::opt<bool> configOnly("config-only", cl::cat(category),
                                cl::desc("Write config.json but no weights"));

// Size overrides; -1 keeps the preset's value.
#define KILN_INT_OPT(var, flag, help)                                          \
  static cl::opt<int64_t> var(flag, cl::init(-1), cl::cat(category),           \
                              cl::desc(help))
KILN_INT_OPT(hiddenSize, "hidden-size", "hidden_size");
KILN_INT_OPT(numLayers, "layers", "num_hidden_layers");
KILN_INT_OPT(numHeads, "heads", "num_attention_heads");
KILN_INT_OPT(numKvHeads, "kv-heads", "num_key_value_heads");
KILN_INT_OPT(headDim, "head-dim", "head_dim");
KILN_INT_OPT(vocabSize, "vocab", "vocab_size");
KILN_INT_OPT(intermediateSize, "intermediate-size",
             "intermediate_size (experts)");
KILN_INT_OPT(intermediateSizeMlp, "intermediate-size-mlp",
             "intermediate_size_mlp (dense FFN)");
KILN_INT_OPT(numExperts, "experts", "num_local_experts");
KILN_INT_OPT(topK, "top-k", "num_experts_per_tok");
KILN_INT_OPT(moeStep, "interleave-moe-layer-step", "interleave_moe_layer_step");
KILN_INT_OPT(chunkSize, "attention-chunk-size", "attention_chunk_size");
KILN_INT_OPT(floorScale, "floor-scale", "floor_scale");
KILN_INT_OPT(maxPositions, "max-position-embeddings",
             "max_position_embeddings");
#undef KILN_INT_OPT
static cl::opt<double> attnScale("attn-scale", cl::init(-1), cl::cat(category),
                                 cl::desc("attn_scale"));
static cl::opt<double> ropeTheta("rope-theta", cl::init(-1), cl::cat(category),
                                 cl::desc("rope_theta"));
static cl::opt<std::string> qkNorm("qk-norm", cl::init(""), cl::cat(category),
                                   cl::desc("use_qk_norm: on or off"));
static cl::opt<std::string> ropeScaling(
    "rope-scaling", cl::init(""), cl::cat(category),
    cl::desc("none, or llama3:<factor>:<low>:<high>:<original-max>"));
static cl::opt<std::string>
    temperatureTuning("temperature-tuning", cl::init(""), cl::cat(category),
                      cl::desc("attn_temperature_tuning: on or off"));

namespace {

/// SplitMix64: tiny, seedable, identical on every platform.
class Random {
public:
  explicit Random(uint64_t seed) : state(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return (next() >> 11) * (1.0 / 9007199254740992.0); }
  double normal() { // Box-Muller
    double u1 = uniform(), u2 = uniform();
    if (u1 < 1e-300)
      u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  }

private:
  uint64_t state;
};

/// Stable per-tensor stream: the values of a tensor do not depend on which
/// other tensors exist, so changing one size leaves unrelated tensors alone.
uint64_t hashName(const std::string &name, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ seed;
  for (char c : name)
    h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  return h;
}

} // namespace

/// A flag the user gave replaces the preset's value, whatever it is (a
/// negative one is then refused by the config's own checks).
static void applyOverride(int64_t &field, const cl::opt<int64_t> &flag) {
  if (flag.getNumOccurrences() > 0)
    field = flag;
}

/// Shortest decimal that reads back as `v`, always with a '.' or exponent so
/// that JSON readers see a float.
static std::string number(double v) {
  char buf[32];
  if (std::floor(v) == v && std::fabs(v) < 1e15) {
    std::snprintf(buf, sizeof(buf), "%.1f", v);
    return buf;
  }
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v)
      break;
  }
  std::string s = buf;
  if (s.find_first_of(".e") == std::string::npos)
    s += ".0";
  return s;
}

static std::string configJson(const kiln::Llama4Config &c) {
  std::string t;
  raw_string_ostream os(t);
  auto field = [&](const char *key, const std::string &value,
                   bool last = false) {
    os << "    \"" << key << "\": " << value << (last ? "\n" : ",\n");
  };
  os << "{\n";
  field("model_type", "\"llama4_text\"");
  field("hidden_size", std::to_string(c.hiddenSize));
  field("num_hidden_layers", std::to_string(c.numHiddenLayers));
  field("num_attention_heads", std::to_string(c.numAttentionHeads));
  field("num_key_value_heads", std::to_string(c.numKeyValueHeads));
  field("head_dim", std::to_string(c.headDim));
  field("vocab_size", std::to_string(c.vocabSize));
  field("intermediate_size", std::to_string(c.intermediateSize));
  field("intermediate_size_mlp", std::to_string(c.intermediateSizeMlp));
  field("num_local_experts", std::to_string(c.numLocalExperts));
  field("num_experts_per_tok", std::to_string(c.numExpertsPerTok));
  field("interleave_moe_layer_step", std::to_string(c.interleaveMoeLayerStep));
  field("moe_layers", "null");
  field("no_rope_layers", "[]");
  field("attention_chunk_size", std::to_string(c.attentionChunkSize));
  field("rope_theta", number(c.ropeTheta));
  if (c.hasRopeScaling)
    field("rope_scaling",
          formatv("{{\"rope_type\": \"llama3\", \"factor\": {0}, "
                  "\"low_freq_factor\": {1}, \"high_freq_factor\": {2}, "
                  "\"original_max_position_embeddings\": {3}}",
                  number(c.ropeScaling.factor),
                  number(c.ropeScaling.lowFreqFactor),
                  number(c.ropeScaling.highFreqFactor),
                  c.ropeScaling.originalMaxPositionEmbeddings)
              .str());
  else
    field("rope_scaling", "null");
  field("use_qk_norm", c.useQkNorm ? "true" : "false");
  field("attn_temperature_tuning", c.attnTemperatureTuning ? "true" : "false");
  field("floor_scale", std::to_string(c.floorScale));
  field("attn_scale", number(c.attnScale));
  field("rms_norm_eps", "1e-05");
  field("hidden_act", "\"silu\"");
  field("attention_bias", "false");
  field("tie_word_embeddings", "false");
  field("max_position_embeddings", std::to_string(c.maxPositionEmbeddings));
  field("bos_token_id", "1");
  field("eos_token_id", "[2]");
  field("pad_token_id", "0");
  field("torch_dtype", "\"bfloat16\"", /*last=*/true);
  os << "  }";
  std::string text = os.str();

  std::string out = "{\n";
  if (c.multimodal) {
    out += "  \"architectures\": [\"Llama4ForConditionalGeneration\"],\n"
           "  \"model_type\": \"llama4\",\n"
           "  \"tie_word_embeddings\": false,\n"
           "  \"torch_dtype\": \"bfloat16\",\n"
           "  \"text_config\": " +
           text + "\n";
  } else {
    // A text-only config carries the fields at the top level.
    std::string body =
        text.substr(2, text.size() - 5); // strip "{\n" and "\n  }"
    out += "  \"architectures\": [\"Llama4ForCausalLM\"],\n" + body + "\n";
  }
  out += "}\n";
  return out;
}

/// Standard deviation of the random values of a tensor, by role: norms near
/// 1 (so that a forgotten weight shows), projections scaled by fan-in so
/// activations stay O(1) through every layer.
static void fillTensor(const std::string &name,
                       const std::vector<int64_t> &shape,
                       std::vector<float> &values) {
  Random rng(hashName(name, seed));
  int64_t n = 1;
  for (int64_t d : shape)
    n *= d;
  values.resize(n);
  bool isNorm = shape.size() == 1;
  bool isEmbedding = name.find("embed_tokens") != std::string::npos;
  // Expert tensors are [E, in, out]; nn.Linear weights are [out, in].
  int64_t fanIn = shape.size() == 3 ? shape[1] : shape.back();
  double stddev =
      isEmbedding ? 1.0 : 1.0 / std::sqrt(static_cast<double>(fanIn));
  for (float &v : values)
    v = isNorm ? static_cast<float>(1.0 + 0.1 * rng.normal())
               : static_cast<float>(stddev * rng.normal());
}

static int fail(const Twine &message) {
  WithColor::error(errs(), "kiln-mkmodel") << message << "\n";
  return 1;
}

int main(int argc, char **argv) {
  InitLLVM init(argc, argv);
  // After InitLLVM, whose own out-of-memory handler aborts with a stack dump.
  kiln::installToolGuards("kiln-mkmodel");
  cl::HideUnrelatedOptions(category);
  cl::ParseCommandLineOptions(
      argc, argv, "Write a random Llama 4 checkpoint (HF layout)\n");

  kiln::Llama4Config c;
  c.hiddenSize = 64;
  c.numHiddenLayers = 8;
  c.numAttentionHeads = 4;
  c.numKeyValueHeads = 2;
  c.headDim = 16;
  c.vocabSize = 256;
  c.intermediateSize = 32;
  c.intermediateSizeMlp = 64;
  c.numExpertsPerTok = 1;
  c.attentionChunkSize = 8192;
  c.floorScale = 8192;
  c.attnScale = 0.1;
  c.ropeTheta = 500000.0;
  c.maxPositionEmbeddings = 32768;
  c.attnTemperatureTuning = true;
  if (preset == "tiny-scout") {
    c.numLocalExperts = 16;
    c.interleaveMoeLayerStep = 1;
    c.useQkNorm = true;
    c.hasRopeScaling = true;
    c.ropeScaling = {"llama3", 16.0, 1.0, 1.0, 8192};
  } else if (preset == "tiny-maverick") {
    c.numLocalExperts = 128;
    c.interleaveMoeLayerStep = 2;
    c.useQkNorm = false;
    c.hasRopeScaling = false;
  } else {
    return fail("unknown preset '" + preset +
                "' (expected tiny-scout or tiny-maverick)");
  }
  applyOverride(c.hiddenSize, hiddenSize);
  applyOverride(c.numHiddenLayers, numLayers);
  applyOverride(c.numAttentionHeads, numHeads);
  applyOverride(c.numKeyValueHeads, numKvHeads);
  applyOverride(c.headDim, headDim);
  applyOverride(c.vocabSize, vocabSize);
  applyOverride(c.intermediateSize, intermediateSize);
  applyOverride(c.intermediateSizeMlp, intermediateSizeMlp);
  applyOverride(c.numLocalExperts, numExperts);
  applyOverride(c.numExpertsPerTok, topK);
  applyOverride(c.interleaveMoeLayerStep, moeStep);
  applyOverride(c.attentionChunkSize, chunkSize);
  applyOverride(c.floorScale, floorScale);
  applyOverride(c.maxPositionEmbeddings, maxPositions);
  if (attnScale >= 0)
    c.attnScale = attnScale;
  if (ropeTheta > 0)
    c.ropeTheta = ropeTheta;
  if (!qkNorm.empty()) {
    if (qkNorm != "on" && qkNorm != "off")
      return fail("--qk-norm must be 'on' or 'off'");
    c.useQkNorm = qkNorm == "on";
  }
  if (!temperatureTuning.empty()) {
    if (temperatureTuning != "on" && temperatureTuning != "off")
      return fail("--temperature-tuning must be 'on' or 'off'");
    c.attnTemperatureTuning = temperatureTuning == "on";
  }
  if (!ropeScaling.empty()) {
    if (ropeScaling == "none") {
      c.hasRopeScaling = false;
    } else {
      SmallVector<StringRef> parts;
      StringRef(ropeScaling).split(parts, ':');
      double factor, low, high;
      int64_t original;
      if (parts.size() != 5 || parts[0] != "llama3" ||
          parts[1].getAsDouble(factor) || parts[2].getAsDouble(low) ||
          parts[3].getAsDouble(high) || parts[4].getAsInteger(10, original))
        return fail("--rope-scaling must be 'none' or "
                    "'llama3:<factor>:<low>:<high>:<original-max>'");
      c.hasRopeScaling = true;
      c.ropeScaling = {"llama3", factor, low, high, original};
    }
  }
  c.multimodal = !textOnly;
  c.architecture =
      textOnly ? "Llama4ForCausalLM" : "Llama4ForConditionalGeneration";
  if (shards < 1)
    return fail("--shards must be at least 1");

  // Validate through the importer's own checks, so a bad flag combination is
  // reported before anything is written.
  std::string json = configJson(c);
  auto parsed = kiln::parseLlama4Config(json, outputDir + "/config.json");
  if (!parsed)
    return fail(toString(parsed.takeError()));

  if (std::error_code ec = sys::fs::create_directories(outputDir))
    return fail(outputDir + ": cannot create: " + ec.message());
  {
    std::error_code ec;
    raw_fd_ostream os(outputDir + "/config.json", ec);
    if (ec)
      return fail(outputDir + "/config.json: " + ec.message());
    os << json;
  }
  if (configOnly)
    return 0;

  std::vector<kiln::Llama4Weight> weights = kiln::listLlama4Weights(*parsed);
  // The weights are made in memory (f32 while filled, bf16 when written):
  // a configuration whose checkpoint this machine cannot hold is refused,
  // naming the sizes, before anything is allocated.
  {
    double total = 0, largest = 0;
    std::string largestName;
    for (const kiln::Llama4Weight &w : weights) {
      double n = 1;
      for (int64_t d : w.shape)
        n *= static_cast<double>(d);
      total += 2 * n;
      if (4 * n > largest)
        largest = 4 * n, largestName = w.name;
    }
    double memory = static_cast<double>(sysconf(_SC_PHYS_PAGES)) *
                    static_cast<double>(sysconf(_SC_PAGESIZE));
    if (total + largest > memory / 2)
      return fail(formatv("the checkpoint would be {0:F0} bytes of bf16 "
                          "weights, plus {1:F0} while the largest ({2}) is "
                          "filled in f32: more than half of this machine's "
                          "{3:F0} bytes of memory",
                          total, largest, largestName, memory)
                      .str());
  }
  std::vector<kiln::SafetensorsWriter> writers(shards);
  std::vector<std::string> shardNames(shards);
  for (unsigned s = 0; s < shards; ++s) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "model-%05u-of-%05u.safetensors", s + 1,
                  static_cast<unsigned>(shards));
    shardNames[s] = shards == 1 ? std::string("model.safetensors") : buf;
  }
  std::string index = "{\n  \"metadata\": {},\n  \"weight_map\": {\n";
  for (auto [i, w] : llvm::enumerate(weights)) {
    std::vector<float> values;
    fillTensor(w.name, w.shape, values);
    unsigned s = static_cast<unsigned>(i * shards / weights.size());
    writers[s].addBf16(w.name, w.shape, values);
    index += "    ";
    kiln::json::writeString(index, w.name);
    index += ": ";
    kiln::json::writeString(index, shardNames[s]);
    index += i + 1 < weights.size() ? ",\n" : "\n";
  }
  index += "  }\n}\n";
  for (unsigned s = 0; s < shards; ++s) {
    writers[s].setMetadata("format", "pt");
    std::string error;
    if (!writers[s].write(outputDir + "/" + shardNames[s], error))
      return fail(error);
  }
  if (shards > 1) {
    std::error_code ec;
    raw_fd_ostream os(outputDir + "/model.safetensors.index.json", ec);
    if (ec)
      return fail(outputDir + "/model.safetensors.index.json: " + ec.message());
    os << index;
  }
  return 0;
}

//===- Llama4Config.h - Hugging Face Llama 4 configuration ------*- C++ -*-===//
//
// The text-model fields of a Hugging Face Llama 4 config.json, validated, with
// Hugging Face's defaults for absent keys and the derived per-layer facts
// (MoE or dense, RoPE or NoPE, chunked or full attention).
//
//===----------------------------------------------------------------------===//

#ifndef KILN_IMPORT_LLAMA4CONFIG_H
#define KILN_IMPORT_LLAMA4CONFIG_H

#include "llvm/Support/Error.h"

#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

struct Llama4RopeScaling {
  /// "llama3" is the only scaled kind Llama 4 uses.
  std::string ropeType;
  double factor = 1.0;
  double lowFreqFactor = 1.0;
  double highFreqFactor = 1.0;
  int64_t originalMaxPositionEmbeddings = 0;
};

struct Llama4Config {
  /// Where the fields were read from (for diagnostics).
  std::string path;
  /// "Llama4ForConditionalGeneration" (text_config nested; tensors under
  /// `language_model.`) or "Llama4ForCausalLM" (text-only).
  std::string architecture;
  bool multimodal = false;

  int64_t hiddenSize = 5120;
  int64_t numHiddenLayers = 48;
  int64_t numAttentionHeads = 40;
  int64_t numKeyValueHeads = 8;
  int64_t headDim = 128;
  int64_t vocabSize = 202048;
  int64_t intermediateSize = 8192;
  int64_t intermediateSizeMlp = 16384;
  int64_t numLocalExperts = 16;
  int64_t numExpertsPerTok = 1;
  int64_t interleaveMoeLayerStep = 1;
  /// 0 when chunking is switched off (attention_chunk_size: null).
  int64_t attentionChunkSize = 8192;
  double ropeTheta = 500000.0;
  bool hasRopeScaling = false;
  Llama4RopeScaling ropeScaling;
  bool useQkNorm = true;
  bool attnTemperatureTuning = true;
  int64_t floorScale = 8192;
  double attnScale = 0.1;
  double rmsNormEps = 1e-5;
  bool tieWordEmbeddings = false;
  int64_t maxPositionEmbeddings = 4096 * 32;
  /// "bfloat16", "float16" or "float32": weight type when no weights exist.
  std::string torchDtype = "bfloat16";
  int64_t bosTokenId = -1;
  int64_t padTokenId = -1;
  std::vector<int64_t> eosTokenIds;

  /// Per layer: MoE (true) or dense FFN.
  std::vector<bool> moeLayer;
  /// Per layer: RoPE (true) or NoPE.
  std::vector<bool> ropeLayer;
  /// Per layer: chunked (true) or full causal attention.
  std::vector<bool> chunkedLayer;

  /// Tensor-name prefix of the decoder ("language_model.model." or "model.").
  std::string modelPrefix() const;
  /// Name of the output projection (the embedding when tied).
  std::string lmHeadName() const;

  /// The head_dim / 2 RoPE frequencies with scaling applied, in double.
  std::vector<double> ropeInvFreq() const;
};

/// Reads and validates `<dir>/config.json`. Errors name the file and field.
llvm::Expected<Llama4Config> readLlama4Config(const std::string &dir);

/// Validates a config given as JSON text; `path` is used in messages.
llvm::Expected<Llama4Config> parseLlama4Config(const std::string &text,
                                               const std::string &path);

} // namespace kiln

#endif // KILN_IMPORT_LLAMA4CONFIG_H

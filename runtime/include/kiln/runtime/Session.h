//===- Session.h - Running host engines -------------------------*- C++ -*-===//
//
// Loads a host engine (plan + kernels shared object), binds the checkpoint's
// weights to it (zero-copy from the mapped safetensors files; repacked
// weights are built once), and runs the plan on token sequences, keeping one
// KV pool per attention call site so that prefill and decode steps continue
// one sequence. No MLIR, no LLVM: this is what ships.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_RUNTIME_SESSION_H
#define KILN_RUNTIME_SESSION_H

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kiln {

class Checkpoint;
class Sampler;

class Session {
public:
  ~Session();
  Session(const Session &) = delete;
  Session &operator=(const Session &) = delete;

  /// Where an engine runs: its target decides (Auto), or the caller
  /// insists and gets a clear error when the engine is for the other one.
  enum class Device { Auto, Host, Cuda };

  /// Loads `enginePath` (target host-x86_64, or sm_90a on the CUDA backend)
  /// and binds weights from the checkpoint folder. Null with `error` on any
  /// failure. `kvTokens` > 0 reserves the KV caches for that many tokens of
  /// context up front (chunked layers: at most two chunks), so a sequence
  /// within it never grows them, and fails here if they do not fit.
  static std::unique_ptr<Session> create(const std::string &enginePath,
                                         const std::string &checkpointDir,
                                         std::string &error,
                                         Device device = Device::Auto,
                                         int64_t kvTokens = 0);

  /// Runs `tokens` at `positions` after everything run since the last
  /// reset(); `logits` receives [tokens, vocab] float32 rows, or with
  /// `lastOnly` the last token's row alone (the LM head then runs on that
  /// row only: a long prefill skips tokens x vocab x hidden of work).
  bool run(const std::vector<int64_t> &tokens,
           const std::vector<int64_t> &positions, std::vector<float> &logits,
           int64_t &vocab, std::string &error, bool lastOnly = false);

  /// Runs like run(lastOnly) and picks the greedy next token (the largest
  /// last-row logit, ties to the lower id): on the GPU for sm_90a engines,
  /// so the logits never leave the device.
  bool runGreedy(const std::vector<int64_t> &tokens,
                 const std::vector<int64_t> &positions, int64_t &token,
                 std::string &error);

  /// Runs like run(lastOnly) and draws the next token by `sampler`'s rule
  /// and generator (greedy at temperature 0): on the GPU for sm_90a
  /// engines, with the uniform number drawn here, so the same seed gives
  /// the same tokens on either backend up to the logits' rounding.
  bool runSample(const std::vector<int64_t> &tokens,
                 const std::vector<int64_t> &positions, Sampler &sampler,
                 int64_t &token, std::string &error);

  void reset();
  int64_t vocabSize() const;
  const std::vector<int64_t> &eosTokenIds() const;

  struct Impl;

private:
  explicit Session(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl;
};

} // namespace kiln

#endif // KILN_RUNTIME_SESSION_H

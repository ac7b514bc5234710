//===- CudaSession.h - Running sm_90a engines -------------------*- C++ -*-===//

#ifndef KILN_RUNTIME_SRC_CUDASESSION_H
#define KILN_RUNTIME_SRC_CUDASESSION_H

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kiln {

struct EngineFile;
namespace plan {
struct Plan;
}

/// The CUDA backend: one GPU, one stream, the engine's cubin (or its PTX,
/// compiled by the driver), weights and KV pools in device memory.
class CudaSession {
public:
  ~CudaSession();

  /// Loads the driver and the engine's code on GPU 0. Null with a one-line
  /// `error` without a driver, without a GPU, or on a GPU that is not sm_90.
  static std::unique_ptr<CudaSession> open(const EngineFile &engine,
                                           const plan::Plan &plan,
                                           const std::string &enginePath,
                                           std::string &error);

  /// Copies the weights bound in `plan` (and its repackings) to the GPU.
  bool upload(const plan::Plan &plan, std::string &error);
  /// Allocates every KV pool for `tokens` of context (none when 0).
  bool reserve(const plan::Plan &plan, int64_t tokens, std::string &error);

  /// With `token`, the next token is picked on the GPU from the last row
  /// and written there instead of copying logits back: the argmax, or with
  /// `sample` ({temperature, top_k, top_p, u}) a draw by the sampler's rule.
  bool run(plan::Plan &plan, const std::vector<int64_t> &tokens,
           const std::vector<int64_t> &positions, std::vector<float> &logits,
           std::string &error, bool lastOnly = false, int64_t *token = nullptr,
           const double *sample = nullptr);
  void reset();

  struct State;

private:
  explicit CudaSession(std::unique_ptr<State> state);
  std::unique_ptr<State> state;
};

} // namespace kiln

#endif // KILN_RUNTIME_SRC_CUDASESSION_H

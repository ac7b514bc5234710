//===- Communicator.h - The ranks of a tensor-parallel engine ---*- C++ -*-===//
//
// A tensor-parallel engine runs as one process per rank, started by mpirun.
// The communicator says which rank this process is and sums buffers over
// the ranks. Under OpenMPI's mpirun it is MPI's world communicator, with
// libmpi.so.40 loaded at run time (KILN_LIBMPI overrides the path): the
// runtime builds and runs without MPI, and a one-rank engine never loads it.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_RUNTIME_SRC_COMMUNICATOR_H
#define KILN_RUNTIME_SRC_COMMUNICATOR_H

#include "kiln/runtime/Model.h"

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace kiln {

class Communicator {
public:
  virtual ~Communicator() = default;
  virtual int64_t rank() const = 0;
  virtual int64_t size() const = 0;
  /// out[i] = the sum over the ranks of their in[i], on every rank (`in`
  /// and `out` do not overlap); every rank calls it in the same order with
  /// the same count.
  virtual Status allReduceSum(const float *in, float *out, size_t count) = 0;
  /// Data-parallel attention: every rank's block of `counts[rank]` floats,
  /// concatenated in rank order, into `out` (the sum of `counts` floats) on
  /// every rank; this rank gives `in`, counts[rank()] floats.
  virtual Status allGather(const float *in, float *out,
                           const std::vector<size_t> &counts) = 0;
  /// The sum over the ranks of their `in` (the sum of `counts` floats each),
  /// of which this rank keeps its block, counts[rank()] floats, in `out`.
  virtual Status reduceScatterSum(const float *in, float *out,
                                  const std::vector<size_t> &counts) = 0;
  /// The all-to-all of a MoE block's routed rows: this rank sends
  /// `sendCounts[k]` floats of `in` (blocks in rank order) to rank k and
  /// receives `receiveCounts[k]` floats from it into `out` (rank order).
  virtual Status allToAll(const float *in,
                          const std::vector<size_t> &sendCounts, float *out,
                          const std::vector<size_t> &receiveCounts) = 0;
  /// `counts` holds `per` values for each rank; `out` gets the `per` values
  /// every rank holds for this one, in rank order.
  virtual Status allToAllCounts(const std::vector<int64_t> &counts, size_t per,
                                std::vector<int64_t> &out) = 0;
  /// Every rank's `value`, in rank order (a step's token counts).
  virtual Status allGatherCounts(int64_t value, std::vector<int64_t> &out) = 0;
  /// Point to point between two ranks (pipeline stages): `count` floats.
  virtual Status send(const float *data, size_t count, int64_t to) = 0;
  virtual Status receive(float *data, size_t count, int64_t from) = 0;
  /// `count` floats from rank `root` to every rank, in place.
  virtual Status broadcast(float *data, size_t count, int64_t root) = 0;
  /// `bytes` raw bytes from rank `root` to every rank (an NCCL unique id).
  virtual Status broadcastBytes(void *data, size_t bytes, int64_t root) = 0;
  /// Answers other ranks' liveness questions. A rank that waits outside
  /// this communicator's calls (on a GPU stream, for NCCL) calls it while
  /// it waits, so that a rank asking does not take it for stopped.
  virtual void answerLivenessQuestions() {}
  /// The ranks of this process's widest communicator that do not answer a
  /// liveness question within a few seconds, named by their world rank
  /// ("rank 1", "ranks 1, 3"); empty when every rank answers.
  virtual std::string silentRanksNamed() { return {}; }
  /// The ranks that share `color` (a tensor-parallel group of a pipeline
  /// stage), ordered by rank here. Every rank calls it.
  virtual Status split(int64_t color, std::shared_ptr<Communicator> &out) = 0;

  /// This process's communicator: MPI's world when started by mpirun
  /// (OpenMPI's OMPI_COMM_WORLD_SIZE is set) or KILN_LIBMPI is given, else
  /// one rank. MPI is initialized once per process and finalized at exit.
  static Status world(std::shared_ptr<Communicator> &out);
  /// Ends every rank with `code` (MPI_Abort) when MPI is running in this
  /// process; returns otherwise.
  static void abortAll(int code);
};

} // namespace kiln

#endif // KILN_RUNTIME_SRC_COMMUNICATOR_H

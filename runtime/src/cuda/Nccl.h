//===- Nccl.h - NCCL, loaded at run time ------------------------*- C++ -*-===//
//
// Like the driver, NCCL is never linked: `libnccl.so.2` (or KILN_LIBNCCL) is
// dlopen()ed when a multi-rank sm_90a engine loads, and the entry points
// Kiln calls are resolved from one table. The types carry NCCL's C ABI
// (nccl.h, 2.x) so that building needs neither NCCL nor a toolkit.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_RUNTIME_SRC_CUDA_NCCL_H
#define KILN_RUNTIME_SRC_CUDA_NCCL_H

#include <cstddef>
#include <memory>
#include <string>

namespace kiln::nccl {

using ncclResult_t = int;
using ncclComm_t = struct ncclComm *;
using cudaStream_t = struct CUstream_st *;
struct ncclUniqueId {
  char internal[128];
};
constexpr ncclResult_t ncclSuccess = 0;
constexpr ncclResult_t ncclInProgress = 7;
constexpr int ncclFloat32 = 7; // ncclDataType_t
constexpr int ncclBfloat16 = 9;
constexpr int ncclSum = 0; // ncclRedOp_t

// One line per entry point: member, symbol, signature.
#define KILN_NCCL_ENTRY_POINTS(X)                                              \
  X(getVersion, "ncclGetVersion", ncclResult_t (*)(int *))                     \
  X(getUniqueId, "ncclGetUniqueId", ncclResult_t (*)(ncclUniqueId *))          \
  X(commInitRank, "ncclCommInitRank",                                          \
    ncclResult_t (*)(ncclComm_t *, int, ncclUniqueId, int))                    \
  X(commDestroy, "ncclCommDestroy", ncclResult_t (*)(ncclComm_t))              \
  X(commAbort, "ncclCommAbort", ncclResult_t (*)(ncclComm_t))                  \
  X(commGetAsyncError, "ncclCommGetAsyncError",                                \
    ncclResult_t (*)(ncclComm_t, ncclResult_t *))                              \
  X(allReduce, "ncclAllReduce",                                                \
    ncclResult_t (*)(const void *, void *, size_t, int, int, ncclComm_t,       \
                     cudaStream_t))                                            \
  X(allGather, "ncclAllGather",                                                \
    ncclResult_t (*)(const void *, void *, size_t, int, ncclComm_t,            \
                     cudaStream_t))                                            \
  X(reduceScatter, "ncclReduceScatter",                                        \
    ncclResult_t (*)(const void *, void *, size_t, int, int, ncclComm_t,       \
                     cudaStream_t))                                            \
  X(broadcast, "ncclBroadcast",                                                \
    ncclResult_t (*)(const void *, void *, size_t, int, int, ncclComm_t,       \
                     cudaStream_t))                                            \
  X(send, "ncclSend",                                                          \
    ncclResult_t (*)(const void *, size_t, int, int, ncclComm_t,               \
                     cudaStream_t))                                            \
  X(recv, "ncclRecv",                                                          \
    ncclResult_t (*)(void *, size_t, int, int, ncclComm_t, cudaStream_t))      \
  X(groupStart, "ncclGroupStart", ncclResult_t (*)())                          \
  X(groupEnd, "ncclGroupEnd", ncclResult_t (*)())                              \
  X(getErrorString, "ncclGetErrorString", const char *(*)(ncclResult_t))

class Library {
public:
  ~Library();
  Library(const Library &) = delete;
  Library &operator=(const Library &) = delete;
  /// Loads $KILN_LIBNCCL, else libnccl.so.2. Null with a one-line `error`
  /// naming the file when it is missing or is not NCCL.
  static std::unique_ptr<Library> load(std::string &error);
  /// "ncclAllReduce failed: <NCCL's text> (code n)".
  std::string describe(const char *call, ncclResult_t result) const;
  const std::string &path() const { return file; }

#define KILN_NCCL_MEMBER(name, symbol, type)                                   \
  using name##Fn = type;                                                       \
  name##Fn name = nullptr;
  KILN_NCCL_ENTRY_POINTS(KILN_NCCL_MEMBER)
#undef KILN_NCCL_MEMBER

private:
  Library() = default;
  void *handle = nullptr;
  std::string file;
};

} // namespace kiln::nccl

#endif // KILN_RUNTIME_SRC_CUDA_NCCL_H

//===- StandInNccl.cpp - NCCL's C ABI over shared memory, for tests -------===//
//
// Test support, never shipped as NCCL: the part of NCCL's C ABI that Kiln's
// CUDA backend calls (runtime/src/cuda/Nccl.h), for ranks that are separate
// processes on one machine running the sm_90a emulator, whose device
// pointers are host addresses. It lets the backend's collective path run end
// to end under mpirun without GPUs or NCCL.
//
// A communicator is a POSIX shared-memory segment named by the unique id
// (which rank 0 makes and MPI hands out, as with NCCL). Each collective is
// enqueued on the CUDA stream as a host function (cuLaunchHostFunc), so it
// runs in stream order and is captured into CUDA graphs like NCCL's kernels.
// All-reduce, broadcast, all-gather and reduce-scatter go through per-rank
// slots and a barrier, sums in rank order; send/receive through a mailbox per
// ordered pair of ranks. Sends and receives between ncclGroupStart and
// ncclGroupEnd become one host function that moves whichever of them can
// move until all have (as NCCL runs a group's operations concurrently, so
// ranks that send to each other before receiving do not deadlock); those to
// one peer keep their order. A peer that does not arrive within
// KILN_STANDIN_NCCL_TIMEOUT seconds (20) makes the communicator fail with
// ncclRemoteError, which ncclCommGetAsyncError reports, as NCCL reports a lost
// peer. KILN_STANDIN_NCCL_STOP_RANK=R stops rank R (SIGSTOP) in
// ncclCommInitRank.
//
//===----------------------------------------------------------------------===//

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <fcntl.h>
#include <memory>
#include <random>
#include <string>
#include <sys/mman.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

using ncclResult_t = int;
constexpr ncclResult_t ncclSuccess = 0, ncclSystemError = 2,
                       ncclInvalidArgument = 4, ncclInvalidUsage = 5,
                       ncclRemoteError = 6;
constexpr int kMaxRanks = 8;
/// Floats per slot: enough for the tiny models' activations and logits.
constexpr size_t kSlotFloats = size_t(1) << 20;

struct UniqueId {
  char internal[128];
};

/// The shared segment: a barrier, one slot per rank (collectives) and one
/// mailbox per ordered pair (send/receive).
struct Shared {
  std::atomic<int> attached;
  std::atomic<int> arrived;
  std::atomic<uint64_t> generation;
  std::atomic<int> failed;
  std::atomic<int> full[kMaxRanks][kMaxRanks]; // mailbox [from][to] holds data
  float slot[kMaxRanks][kSlotFloats];
  float mailbox[kMaxRanks][kMaxRanks][kSlotFloats / kMaxRanks];
};

struct Work;

struct Comm {
  Shared *shared = nullptr;
  int rank = 0, ranks = 1;
  std::string name;
  std::atomic<int> error{ncclSuccess};
  uint64_t generation = 0;
  /// Every work item enqueued on this communicator: a graph may replay one
  /// any number of times, so they live until the communicator is destroyed.
  std::vector<std::unique_ptr<Work>> work;
};

double timeoutSeconds() {
  const char *t = std::getenv("KILN_STANDIN_NCCL_TIMEOUT");
  return t && *t ? std::atof(t) : 20.0;
}

/// Spins until `ready()`; false (and the communicator failed) after the
/// timeout or when another rank has failed it.
template <typename Ready> bool await(Comm &c, Ready ready) {
  auto start = std::chrono::steady_clock::now();
  double limit = timeoutSeconds();
  while (!ready()) {
    if (c.shared->failed.load()) {
      c.error = ncclRemoteError;
      return false;
    }
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count() > limit) {
      c.shared->failed = 1;
      c.error = ncclRemoteError;
      return false;
    }
    std::this_thread::yield();
  }
  return true;
}

bool barrier(Comm &c) {
  uint64_t target = ++c.generation;
  if (c.shared->arrived.fetch_add(1) + 1 == c.ranks) {
    c.shared->arrived = 0;
    c.shared->generation = target;
    return true;
  }
  return await(c, [&] { return c.shared->generation.load() >= target; });
}

/// cuLaunchHostFunc from the CUDA driver the process already loaded (the
/// emulator, by KILN_LIBCUDA).
using HostFn = void (*)(void *);
int (*launchHostFunc)(void *, HostFn, void *) = nullptr;

bool findDriver() {
  if (launchHostFunc)
    return true;
  const char *path = std::getenv("KILN_LIBCUDA");
  void *lib =
      dlopen(path && *path ? path : "libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
  if (!lib)
    return false;
  launchHostFunc = reinterpret_cast<int (*)(void *, HostFn, void *)>(
      dlsym(lib, "cuLaunchHostFunc"));
  return launchHostFunc != nullptr;
}

enum class Kind {
  AllReduce,
  Broadcast,
  Send,
  Receive,
  AllGather,
  ReduceScatter,
  Group
};
struct Work {
  Comm *comm;
  Kind kind;
  const float *in;
  float *out;
  size_t count;
  int peer;
  size_t elementBytes;
  /// Group: its sends and receives, in the order they were called.
  std::vector<Work> members;
};

/// Moves one send or receive if its mailbox lets it; true once it has.
bool tryPointToPoint(const Work &w) {
  Comm &c = *w.comm;
  Shared &s = *c.shared;
  size_t bytes = w.count * w.elementBytes;
  if (w.kind == Kind::Send) {
    std::atomic<int> &full = s.full[c.rank][w.peer];
    if (full.load() != 0)
      return false;
    std::memcpy(s.mailbox[c.rank][w.peer], w.in, bytes);
    full = 1;
    return true;
  }
  std::atomic<int> &full = s.full[w.peer][c.rank];
  if (full.load() != 1)
    return false;
  std::memcpy(w.out, s.mailbox[w.peer][c.rank], bytes);
  full = 0;
  return true;
}

/// A group: every member moves as soon as its mailbox allows, those of one
/// kind to one peer in order.
void runGroup(const Work &g) {
  Comm &c = *g.comm;
  std::vector<bool> done(g.members.size(), false);
  size_t left = g.members.size();
  auto moved = [&] {
    // One pass: the first pending member per (kind, peer) may move.
    std::vector<bool> blocked(2 * kMaxRanks, false);
    for (size_t i = 0; i < g.members.size(); ++i) {
      if (done[i])
        continue;
      const Work &w = g.members[i];
      size_t lane = (w.kind == Kind::Send ? 0 : kMaxRanks) + w.peer;
      if (blocked[lane])
        continue;
      blocked[lane] = true;
      if (tryPointToPoint(w)) {
        done[i] = true;
        --left;
      }
    }
    return left == 0;
  };
  await(c, moved);
}

void run(void *arg) {
  // Work items live as long as the graphs that replay them.
  const Work &w = *static_cast<const Work *>(arg);
  Comm &c = *w.comm;
  if (c.error != ncclSuccess)
    return;
  Shared &s = *c.shared;
  switch (w.kind) {
  case Kind::AllReduce: {
    std::memcpy(s.slot[c.rank], w.in, w.count * sizeof(float));
    if (!barrier(c))
      return;
    for (size_t i = 0; i < w.count; ++i) {
      float sum = 0;
      for (int r = 0; r < c.ranks; ++r)
        sum += s.slot[r][i];
      w.out[i] = sum;
    }
    barrier(c);
    return;
  }
  case Kind::AllGather: { // `count` elements from each rank, in rank order
    size_t bytes = w.count * w.elementBytes;
    std::memcpy(s.slot[c.rank], w.in, bytes);
    if (!barrier(c))
      return;
    for (int r = 0; r < c.ranks; ++r)
      std::memcpy(reinterpret_cast<char *>(w.out) + r * bytes, s.slot[r],
                  bytes);
    barrier(c);
    return;
  }
  case Kind::ReduceScatter: { // block `rank` of `count` floats of the sum
    std::memcpy(s.slot[c.rank], w.in, w.count * c.ranks * sizeof(float));
    if (!barrier(c))
      return;
    const size_t first = static_cast<size_t>(c.rank) * w.count;
    for (size_t i = 0; i < w.count; ++i) {
      float sum = 0;
      for (int r = 0; r < c.ranks; ++r)
        sum += s.slot[r][first + i];
      w.out[i] = sum;
    }
    barrier(c);
    return;
  }
  case Kind::Broadcast:
    if (c.rank == w.peer)
      std::memcpy(s.slot[w.peer], w.in, w.count * sizeof(float));
    if (!barrier(c))
      return;
    if (c.rank != w.peer)
      std::memcpy(w.out, s.slot[w.peer], w.count * sizeof(float));
    barrier(c);
    return;
  case Kind::Send:
  case Kind::Receive:
    await(c, [&] { return tryPointToPoint(w); });
    return;
  case Kind::Group:
    runGroup(w);
    return;
  }
}

/// Sends and receives called between ncclGroupStart and ncclGroupEnd.
int groupDepth = 0;
Work pendingGroup{};
void *pendingStream = nullptr;

ncclResult_t enqueue(Comm *c, Kind kind, const void *in, void *out,
                     size_t count, int type, int peer, void *stream) {
  // ncclFloat32 everywhere; ncclBfloat16 (9) for an all-gather, a send or a
  // receive (they only move the bytes).
  bool pointToPoint = kind == Kind::Send || kind == Kind::Receive;
  bool bf16 = (kind == Kind::AllGather || pointToPoint) && type == 9;
  if (!c || (type != 7 && !bf16) || peer < 0 || peer >= c->ranks)
    return ncclInvalidArgument;
  size_t elementBytes = bf16 ? size_t(2) : sizeof(float);
  size_t limit = pointToPoint ? kSlotFloats / kMaxRanks
                 : kind == Kind::ReduceScatter
                     ? kSlotFloats / static_cast<size_t>(c ? c->ranks : 1)
                     : kSlotFloats;
  if (count * elementBytes > limit * sizeof(float)) {
    std::fprintf(stderr, "stand-in NCCL: %zu bytes in one call; it holds %zu\n",
                 count * elementBytes, limit * sizeof(float));
    return ncclInvalidUsage;
  }
  if (c->error != ncclSuccess)
    return c->error;
  if (!findDriver())
    return ncclSystemError;
  Work item{c,
            kind,
            static_cast<const float *>(in),
            static_cast<float *>(out),
            count,
            peer,
            elementBytes,
            {}};
  if (groupDepth > 0) {
    // One communicator and one stream per group: all Kiln needs.
    if (!pointToPoint || (pendingGroup.comm &&
                          (pendingGroup.comm != c || pendingStream != stream)))
      return ncclInvalidUsage;
    pendingGroup.comm = c;
    pendingStream = stream;
    pendingGroup.members.push_back(item);
    return ncclSuccess;
  }
  c->work.push_back(std::make_unique<Work>(std::move(item)));
  Work *work = c->work.back().get();
  return launchHostFunc(stream, run, work) == 0 ? ncclSuccess : ncclSystemError;
}

} // namespace

extern "C" {

__attribute__((visibility("default"))) ncclResult_t ncclGetVersion(int *v) {
  *v = 21900; // reports itself as 2.19
  return ncclSuccess;
}

__attribute__((visibility("default"))) const char *
ncclGetErrorString(ncclResult_t r) {
  switch (r) {
  case ncclSuccess:
    return "no error (stand-in NCCL)";
  case ncclRemoteError:
    return "remote process exited or there was a network error (stand-in "
           "NCCL: a peer did not arrive)";
  case ncclInvalidArgument:
    return "invalid argument (stand-in NCCL)";
  case ncclInvalidUsage:
    return "invalid usage (stand-in NCCL)";
  default:
    return "unhandled system error (stand-in NCCL)";
  }
}

__attribute__((visibility("default"))) ncclResult_t
ncclGetUniqueId(UniqueId *id) {
  std::random_device random;
  std::memset(id->internal, 0, sizeof id->internal);
  std::snprintf(id->internal, sizeof id->internal, "/kiln-nccl-%d-%08x",
                static_cast<int>(getpid()), static_cast<unsigned>(random()));
  return ncclSuccess;
}

__attribute__((visibility("default"))) ncclResult_t
ncclCommInitRank(Comm **out, int ranks, UniqueId id, int rank) {
  if (ranks < 1 || ranks > kMaxRanks || rank < 0 || rank >= ranks ||
      id.internal[0] != '/')
    return ncclInvalidArgument;
  // Fault injection for tests: this rank stops (alive, so mpirun cannot
  // tell) on its way into the communicator, as a rank held up while loading.
  if (const char *stop = std::getenv("KILN_STANDIN_NCCL_STOP_RANK");
      stop && *stop && std::atoi(stop) == rank)
    raise(SIGSTOP);
  auto *c = new Comm();
  c->rank = rank;
  c->ranks = ranks;
  c->name.assign(id.internal, strnlen(id.internal, sizeof id.internal));
  int fd = shm_open(c->name.c_str(), O_CREAT | O_RDWR, 0600);
  if (fd < 0 || ftruncate(fd, sizeof(Shared)) != 0) {
    if (fd >= 0)
      close(fd);
    delete c;
    return ncclSystemError;
  }
  void *map =
      mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (map == MAP_FAILED) {
    delete c;
    return ncclSystemError;
  }
  // A fresh segment is zero-filled: the atomics start at 0.
  c->shared = static_cast<Shared *>(map);
  c->shared->attached.fetch_add(1);
  // Everyone has mapped it before anyone unlinks the name.
  // A peer that never comes leaves no segment behind in /dev/shm.
  auto giveUp = [&] {
    shm_unlink(c->name.c_str());
    munmap(map, sizeof(Shared));
    delete c;
    return ncclRemoteError;
  };
  if (!await(*c, [&] { return c->shared->attached.load() >= ranks; }))
    return giveUp();
  if (!barrier(*c))
    return giveUp();
  if (rank == 0)
    shm_unlink(c->name.c_str());
  *out = c;
  return ncclSuccess;
}

__attribute__((visibility("default"))) ncclResult_t
ncclCommGetAsyncError(Comm *c, ncclResult_t *result) {
  if (!c)
    return ncclInvalidArgument;
  *result = c->error;
  return ncclSuccess;
}

__attribute__((visibility("default"))) ncclResult_t ncclCommAbort(Comm *c) {
  if (c && c->shared) {
    c->shared->failed = 1;
    munmap(c->shared, sizeof(Shared));
  }
  delete c;
  return ncclSuccess;
}

__attribute__((visibility("default"))) ncclResult_t ncclCommDestroy(Comm *c) {
  if (c && c->shared)
    munmap(c->shared, sizeof(Shared));
  delete c;
  return ncclSuccess;
}

__attribute__((visibility("default"))) ncclResult_t
ncclAllReduce(const void *in, void *out, size_t count, int type, int op,
              Comm *c, void *stream) {
  if (op != 0 /* ncclSum */)
    return ncclInvalidArgument;
  return enqueue(c, Kind::AllReduce, in, out, count, type, 0, stream);
}

__attribute__((visibility("default"))) ncclResult_t
ncclBroadcast(const void *in, void *out, size_t count, int type, int root,
              Comm *c, void *stream) {
  return enqueue(c, Kind::Broadcast, in, out, count, type, root, stream);
}

__attribute__((visibility("default"))) ncclResult_t
ncclAllGather(const void *in, void *out, size_t count, int type, Comm *c,
              void *stream) {
  return enqueue(c, Kind::AllGather, in, out, count, type, 0, stream);
}

__attribute__((visibility("default"))) ncclResult_t
ncclReduceScatter(const void *in, void *out, size_t count, int type, int op,
                  Comm *c, void *stream) {
  if (op != 0 /* ncclSum */)
    return ncclInvalidArgument;
  return enqueue(c, Kind::ReduceScatter, in, out, count, type, 0, stream);
}

__attribute__((visibility("default"))) ncclResult_t
ncclSend(const void *in, size_t count, int type, int peer, Comm *c,
         void *stream) {
  return enqueue(c, Kind::Send, in, nullptr, count, type, peer, stream);
}

__attribute__((visibility("default"))) ncclResult_t
ncclRecv(void *out, size_t count, int type, int peer, Comm *c, void *stream) {
  return enqueue(c, Kind::Receive, nullptr, out, count, type, peer, stream);
}

__attribute__((visibility("default"))) ncclResult_t ncclGroupStart() {
  ++groupDepth;
  return ncclSuccess;
}

__attribute__((visibility("default"))) ncclResult_t ncclGroupEnd() {
  if (groupDepth == 0)
    return ncclInvalidUsage;
  if (--groupDepth > 0 || !pendingGroup.comm)
    return ncclSuccess;
  Comm *c = pendingGroup.comm;
  pendingGroup.kind = Kind::Group;
  c->work.push_back(std::make_unique<Work>(std::move(pendingGroup)));
  pendingGroup = Work{};
  Work *work = c->work.back().get();
  return launchHostFunc(pendingStream, run, work) == 0 ? ncclSuccess
                                                       : ncclSystemError;
}

} // extern "C"

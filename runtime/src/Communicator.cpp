//===- Communicator.cpp - MPI loaded at run time --------------------------===//
//
// OpenMPI's C ABI: handles are the addresses of its predefined objects
// (ompi_mpi_comm_world, ompi_mpi_float, ompi_mpi_op_sum, ...); the entry
// points are the standard MPI_*
// functions. Errors are returned (MPI_ERRORS_RETURN), not fatal, so a
// failed collective becomes a Status naming the rank.
//
//===----------------------------------------------------------------------===//

#include "Communicator.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <dlfcn.h>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace kiln;

namespace {

class SingleRank final : public Communicator {
public:
  int64_t rank() const override { return 0; }
  int64_t size() const override { return 1; }
  Status allReduceSum(const float *in, float *out, size_t count) override {
    std::copy(in, in + count, out);
    return {};
  }
  Status send(const float *, size_t, int64_t to) override {
    return Status::error(StatusCode::Internal, "send to rank " +
                                                   std::to_string(to) +
                                                   " in a one-rank run");
  }
  Status receive(float *, size_t, int64_t from) override {
    return Status::error(StatusCode::Internal, "receive from rank " +
                                                   std::to_string(from) +
                                                   " in a one-rank run");
  }
  Status allGather(const float *in, float *out,
                   const std::vector<size_t> &counts) override {
    std::copy(in, in + counts.at(0), out);
    return {};
  }
  Status reduceScatterSum(const float *in, float *out,
                          const std::vector<size_t> &counts) override {
    std::copy(in, in + counts.at(0), out);
    return {};
  }
  Status allGatherCounts(int64_t value, std::vector<int64_t> &out) override {
    out.assign(1, value);
    return {};
  }
  Status allToAll(const float *in, const std::vector<size_t> &sendCounts,
                  float *out, const std::vector<size_t> &) override {
    std::copy(in, in + sendCounts.at(0), out);
    return {};
  }
  Status allToAllCounts(const std::vector<int64_t> &counts, size_t,
                        std::vector<int64_t> &out) override {
    out = counts;
    return {};
  }
  Status broadcast(float *, size_t, int64_t) override { return {}; }
  Status broadcastBytes(void *, size_t, int64_t) override { return {}; }
  Status split(int64_t, std::shared_ptr<Communicator> &out) override {
    out = std::make_shared<SingleRank>();
    return {};
  }
};

struct MpiApi {
  void *library = nullptr;
  int (*initialized)(int *) = nullptr;
  int (*finalized)(int *) = nullptr;
  int (*init)(int *, char ***) = nullptr;
  int (*finalize)() = nullptr;
  int (*commRank)(void *, int *) = nullptr;
  int (*commSize)(void *, int *) = nullptr;
  int (*commSetErrhandler)(void *, void *) = nullptr;
  // Nonblocking forms only (MPI_Request is a pointer in OpenMPI): every wait
  // polls, so a peer that stops cannot hang this rank (complete()).
  int (*iallreduce)(const void *, void *, int, void *, void *, void *,
                    void **) = nullptr;
  int (*isend)(const void *, int, void *, int, int, void *, void **) = nullptr;
  int (*irecv)(void *, int, void *, int, int, void *, void **) = nullptr;
  int (*ibcast)(void *, int, void *, int, void *, void **) = nullptr;
  int (*test)(void **, int *, void *) = nullptr;
  int (*iprobe)(int, int, void *, int *, void *) = nullptr;
  int (*commDup)(void *, void **) = nullptr;
  int (*allgather)(const void *, int, void *, void *, int, void *,
                   void *) = nullptr;
  int (*iallgather)(const void *, int, void *, void *, int, void *, void *,
                    void **) = nullptr;
  int (*iallgatherv)(const void *, int, void *, void *, const int *,
                     const int *, void *, void *, void **) = nullptr;
  int (*ireduceScatter)(const void *, void *, const int *, void *, void *,
                        void *, void **) = nullptr;
  int (*ialltoall)(const void *, int, void *, void *, int, void *, void *,
                   void **) = nullptr;
  int (*ialltoallv)(const void *, const int *, const int *, void *, void *,
                    const int *, const int *, void *, void *,
                    void **) = nullptr;
  void *intType = nullptr;
  int (*commSplit)(void *, int, int, void **) = nullptr;
  int (*abort)(void *, int) = nullptr;
  int (*errorString)(int, char *, int *) = nullptr;
  void *commWorld = nullptr, *floatType = nullptr, *byteType = nullptr,
       *sum = nullptr, *errorsReturn = nullptr;
  bool weInitialized = false;
};

MpiApi &mpi() {
  static MpiApi api;
  return api;
}

void finalizeAtExit() {
  MpiApi &api = mpi();
  int done = 0;
  if (api.weInitialized && api.finalized && api.finalized(&done) == 0 && !done)
    api.finalize();
}

/// A communicator of OpenMPI's: the world, or a split of it.
/// How long a liveness question waits for answers. A live rank answers
/// within milliseconds unless it is held inside a call of its own that
/// waits on the stopped rank (under the emulator the stand-in NCCL blocks
/// in the call for its timeout, 3 s in the tests).
constexpr double kLivenessSeconds = 5.0;

class MpiWorld final : public Communicator {
public:
  /// `worldRanks`: each member's rank in MPI's world (empty: this is it).
  MpiWorld(void *comm, int rank, int size, std::vector<int> worldRanks = {})
      : comm(comm), r(rank), n(size), worldRanks(std::move(worldRanks)) {
    if (this->worldRanks.empty())
      for (int i = 0; i < size; ++i)
        this->worldRanks.push_back(i);
    MpiApi &api = mpi();
    // Liveness questions travel apart from the data (complete()).
    if (api.commDup(comm, &control) == 0)
      api.commSetErrhandler(control, api.errorsReturn);
    else
      control = nullptr;
    if (control)
      live().push_back(this);
    const char *limit = std::getenv("KILN_COLLECTIVE_TIMEOUT");
    if (limit && *limit && std::atof(limit) > 0)
      timeoutSeconds = std::atof(limit);
  }
  ~MpiWorld() override {
    auto &all = live();
    all.erase(std::remove(all.begin(), all.end(), this), all.end());
  }
  int64_t rank() const override { return r; }
  int64_t size() const override { return n; }
  Status allReduceSum(const float *in, float *out, size_t count) override {
    MpiApi &api = mpi();
    return inPieces(
        count, "MPI_Allreduce", [&](size_t at, int piece, void **request) {
          return api.iallreduce(in + at, out + at, piece, api.floatType,
                                api.sum, comm, request);
        });
  }
  Status allGather(const float *in, float *out,
                   const std::vector<size_t> &counts) override {
    MpiApi &api = mpi();
    std::vector<int> sizes, offsets;
    if (Status s = blocks(counts, "MPI_Allgatherv", sizes, offsets); !s.ok())
      return s;
    return once("MPI_Allgatherv", [&](void **request) {
      return api.iallgatherv(in, sizes[r], api.floatType, out, sizes.data(),
                             offsets.data(), api.floatType, comm, request);
    });
  }
  Status reduceScatterSum(const float *in, float *out,
                          const std::vector<size_t> &counts) override {
    MpiApi &api = mpi();
    std::vector<int> sizes, offsets;
    if (Status s = blocks(counts, "MPI_Reduce_scatter", sizes, offsets);
        !s.ok())
      return s;
    return once("MPI_Reduce_scatter", [&](void **request) {
      return api.ireduceScatter(in, out, sizes.data(), api.floatType, api.sum,
                                comm, request);
    });
  }
  Status allToAll(const float *in, const std::vector<size_t> &sendCounts,
                  float *out,
                  const std::vector<size_t> &receiveCounts) override {
    MpiApi &api = mpi();
    std::vector<int> sendSizes, sendOffsets, receiveSizes, receiveOffsets;
    if (Status s = blocks(sendCounts, "MPI_Alltoallv", sendSizes, sendOffsets);
        !s.ok())
      return s;
    if (Status s = blocks(receiveCounts, "MPI_Alltoallv", receiveSizes,
                          receiveOffsets);
        !s.ok())
      return s;
    return once("MPI_Alltoallv", [&](void **request) {
      return api.ialltoallv(in, sendSizes.data(), sendOffsets.data(),
                            api.floatType, out, receiveSizes.data(),
                            receiveOffsets.data(), api.floatType, comm,
                            request);
    });
  }
  Status allToAllCounts(const std::vector<int64_t> &counts, size_t per,
                        std::vector<int64_t> &out) override {
    MpiApi &api = mpi();
    out.assign(counts.size(), 0);
    int bytes = static_cast<int>(per * sizeof(int64_t));
    return once("MPI_Alltoall", [&](void **request) {
      return api.ialltoall(counts.data(), bytes, api.byteType, out.data(),
                           bytes, api.byteType, comm, request);
    });
  }
  Status allGatherCounts(int64_t value, std::vector<int64_t> &out) override {
    MpiApi &api = mpi();
    out.assign(static_cast<size_t>(n), 0);
    return once("MPI_Allgather", [&](void **request) {
      return api.iallgather(&value, sizeof value, api.byteType, out.data(),
                            sizeof value, api.byteType, comm, request);
    });
  }
  Status send(const float *data, size_t count, int64_t to) override {
    MpiApi &api = mpi();
    return inPieces(count, "MPI_Send to rank " + std::to_string(to),
                    [&](size_t at, int piece, void **request) {
                      return api.isend(data + at, piece, api.floatType,
                                       static_cast<int>(to), kTag, comm,
                                       request);
                    });
  }
  Status receive(float *data, size_t count, int64_t from) override {
    MpiApi &api = mpi();
    return inPieces(count, "MPI_Recv from rank " + std::to_string(from),
                    [&](size_t at, int piece, void **request) {
                      return api.irecv(data + at, piece, api.floatType,
                                       static_cast<int>(from), kTag, comm,
                                       request);
                    });
  }
  Status broadcast(float *data, size_t count, int64_t root) override {
    MpiApi &api = mpi();
    return inPieces(count, "MPI_Bcast",
                    [&](size_t at, int piece, void **request) {
                      return api.ibcast(data + at, piece, api.floatType,
                                        static_cast<int>(root), comm, request);
                    });
  }
  Status broadcastBytes(void *data, size_t bytes, int64_t root) override {
    MpiApi &api = mpi();
    void *request = nullptr;
    if (int rc = api.ibcast(data, static_cast<int>(bytes), api.byteType,
                            static_cast<int>(root), comm, &request);
        rc != 0)
      return failed("MPI_Bcast", rc);
    return complete(request, "MPI_Bcast");
  }
  Status split(int64_t color, std::shared_ptr<Communicator> &out) override {
    MpiApi &api = mpi();
    void *part = nullptr;
    int rank = 0, size = 1;
    if (int rc = api.commSplit(comm, static_cast<int>(color), r, &part);
        rc != 0)
      return failed("MPI_Comm_split", rc);
    api.commSetErrhandler(part, api.errorsReturn);
    if (api.commRank(part, &rank) != 0 || api.commSize(part, &size) != 0)
      return failed("MPI_Comm_rank / MPI_Comm_size", -1);
    // Errors name ranks as mpirun numbers them.
    std::vector<int> members(size);
    int self = worldRanks[r];
    if (int rc = api.allgather(&self, 1, api.intType, members.data(), 1,
                               api.intType, part);
        rc != 0)
      return failed("MPI_Allgather", rc);
    out = std::make_shared<MpiWorld>(part, rank, size, std::move(members));
    return {};
  }

private:
  static constexpr int kTag = 7;
  static constexpr int kPingTag = 8;
  static constexpr int kPongTag = 9;
  // OpenMPI's MPI_Status.
  struct MpiStatus {
    int source, tag, error, cancelled;
    size_t count;
  };

  /// This process's communicators that answer liveness questions: a rank
  /// waiting in one collective answers on all of them, so a rank asking on
  /// another (a replica's group, the stage's exchange) does not take it for
  /// stopped.
  static std::vector<MpiWorld *> &live() {
    // Never destroyed: the world communicator may outlive static storage.
    static auto *all = new std::vector<MpiWorld *>;
    return *all;
  }
  static void answerAllPings() {
    for (MpiWorld *c : live())
      c->answerPings();
  }

  /// Answers the liveness questions other ranks have sent this one.
  void answerPings() {
    MpiApi &api = mpi();
    for (;;) {
      int flag = 0;
      MpiStatus status{};
      if (api.iprobe(/*MPI_ANY_SOURCE=*/-1, kPingTag, control, &flag,
                     &status) != 0 ||
          !flag)
        return;
      char byte = 0;
      void *request = nullptr;
      api.irecv(&byte, 1, api.byteType, status.source, kPingTag, control,
                &request);
      int done = 0;
      while (!done && api.test(&request, &done, nullptr) == 0) {
      }
      static const char pong = 1;
      void *reply = nullptr;
      api.isend(&pong, 1, api.byteType, status.source, kPongTag, control,
                &reply);
      pendingPongs.push_back(reply);
    }
  }

  void answerLivenessQuestions() override {
    if (control)
      answerAllPings();
  }

  std::string silentRanksNamed() override {
    // Asked on the widest communicator: the peer this one waits for may
    // itself wait on a rank outside it (a replica's rank held up in an
    // all-to-all with a stopped rank of another replica).
    MpiWorld *asked = this;
    for (MpiWorld *c : live())
      if (c->n > asked->n)
        asked = c;
    if (!asked->control)
      return {};
    std::vector<int> silent = asked->silentRanks(kLivenessSeconds);
    std::string who;
    if (!silent.empty())
      who = silent.size() == 1 ? "rank " : "ranks ";
    for (size_t i = 0; i < silent.size(); ++i)
      who += (i ? ", " : "") + std::to_string(asked->worldRanks[silent[i]]);
    return who;
  }

  /// The ranks of this communicator that do not answer within `seconds`
  /// (stopped, hung, dead, or busy outside a collective).
  std::vector<int> silentRanks(double seconds) {
    MpiApi &api = mpi();
    std::vector<void *> pings(n, nullptr), pongs(n, nullptr);
    std::vector<char> answers(n, 0);
    static const char ping = 1;
    for (int peer = 0; peer < n; ++peer) {
      if (peer == r)
        continue;
      api.isend(&ping, 1, api.byteType, peer, kPingTag, control, &pings[peer]);
      api.irecv(&answers[peer], 1, api.byteType, peer, kPongTag, control,
                &pongs[peer]);
    }
    std::vector<bool> answered(n, false);
    answered[r] = true;
    auto start = std::chrono::steady_clock::now();
    while (
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count() < seconds) {
      answerAllPings();
      bool all = true;
      for (int peer = 0; peer < n; ++peer) {
        if (!answered[peer]) {
          int done = 0;
          if (api.test(&pongs[peer], &done, nullptr) == 0 && done)
            answered[peer] = true;
        }
        all = all && answered[peer];
      }
      if (all)
        break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::vector<int> silent;
    for (int peer = 0; peer < n; ++peer)
      if (!answered[peer])
        silent.push_back(peer);
    return silent;
  }

  /// Polls `request` to its end. A peer that has stopped would otherwise
  /// hold this rank forever: after KILN_COLLECTIVE_TIMEOUT seconds (30)
  /// without completion the ranks that do not answer are named and the
  /// step fails (kiln-run then ends every rank with MPI_Abort).
  Status complete(void *&request, const std::string &what) {
    MpiApi &api = mpi();
    auto start = std::chrono::steady_clock::now();
    for (uint64_t spin = 0;; ++spin) {
      int done = 0;
      if (int rc = api.test(&request, &done, nullptr); rc != 0)
        return failed(what, rc);
      if (done)
        return {};
      if (spin % 256 != 255)
        continue;
      if (control)
        answerAllPings();
      double waited = std::chrono::duration<double>(
                          std::chrono::steady_clock::now() - start)
                          .count();
      if (waited < timeoutSeconds) {
        if (waited > 0.01)
          std::this_thread::sleep_for(std::chrono::microseconds(50));
        continue;
      }
      std::string who = control ? silentRanksNamed() : std::string();
      if (who.empty())
        who = "a peer rank";
      char seconds[32];
      std::snprintf(seconds, sizeof seconds, "%g", timeoutSeconds);
      return Status::error(StatusCode::Internal,
                           "rank " + std::to_string(worldRanks[r]) + ": " +
                               what + " did not complete in " + seconds +
                               " s: " + who +
                               (who.rfind("ranks ", 0) == 0 ? " do" : " does") +
                               " not answer (stopped, hung or dead)");
    }
  }

  Status failed(const std::string &what, int rc) const {
    MpiApi &api = mpi();
    char text[512];
    int length = 0;
    std::string why = "error " + std::to_string(rc);
    if (api.errorString && rc > 0 && api.errorString(rc, text, &length) == 0)
      why.assign(text, static_cast<size_t>(length));
    return Status::error(StatusCode::Internal,
                         "rank " + std::to_string(worldRanks[r]) + ": " + what +
                             " failed: " + why);
  }
  /// One nonblocking call (`call` starts it), waited for like the others.
  template <typename Call> Status once(const std::string &what, Call call) {
    void *request = nullptr;
    if (int rc = call(&request); rc != 0)
      return failed(what, rc);
    return complete(request, what);
  }
  /// The per-rank sizes and offsets of a gather or scatter, in MPI's ints:
  /// such an exchange is one call, so its whole buffer must fit them.
  Status blocks(const std::vector<size_t> &counts, const std::string &what,
                std::vector<int> &sizes, std::vector<int> &offsets) const {
    if (counts.size() != static_cast<size_t>(n))
      return Status::error(StatusCode::Internal,
                           what + ": " + std::to_string(counts.size()) +
                               " blocks for " + std::to_string(n) + " ranks");
    size_t total = 0;
    for (size_t c : counts) {
      sizes.push_back(static_cast<int>(c));
      offsets.push_back(static_cast<int>(total));
      total += c;
      if (total > static_cast<size_t>(INT32_MAX))
        return Status::error(StatusCode::InvalidArgument,
                             "rank " + std::to_string(worldRanks[r]) + ": " +
                                 what + " of " + std::to_string(total) +
                                 "+ floats is more than one MPI call moves "
                                 "(2^31 - 1): take fewer tokens a step");
    }
    return {};
  }
  /// MPI counts are ints: large buffers go in pieces.
  template <typename Call>
  Status inPieces(size_t count, const std::string &what, Call call) {
    constexpr size_t kPiece = size_t(1) << 30;
    for (size_t done = 0; done < count; done += kPiece) {
      int piece = static_cast<int>(std::min(kPiece, count - done));
      void *request = nullptr;
      if (int rc = call(done, piece, &request); rc != 0)
        return failed(what, rc);
      if (Status s = complete(request, what); !s.ok())
        return s;
    }
    // Answers to other ranks' questions finish while this rank works on.
    for (auto it = pendingPongs.begin(); it != pendingPongs.end();) {
      int done = 0;
      if (mpi().test(&*it, &done, nullptr) == 0 && !done)
        ++it;
      else
        it = pendingPongs.erase(it);
    }
    return {};
  }

  void *comm;
  void *control = nullptr;
  int r, n;
  std::vector<int> worldRanks;
  double timeoutSeconds = 30.0;
  std::vector<void *> pendingPongs;
};

Status openMpi(std::shared_ptr<Communicator> &out) {
  MpiApi &api = mpi();
  const char *path = std::getenv("KILN_LIBMPI");
  std::string name = path && *path ? path : "libmpi.so.40";
  if (!api.library) {
    // RTLD_GLOBAL: OpenMPI's components are plugins that resolve symbols of
    // libmpi itself.
    api.library = dlopen(name.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (!api.library) {
      const char *why = dlerror();
      return Status::error(StatusCode::NotFound,
                           "cannot load MPI (" +
                               (why ? std::string(why) : name + ": not found") +
                               "); install OpenMPI (openmpi-bin) or set "
                               "KILN_LIBMPI");
    }
  }
  auto symbol = [&](const char *s) { return dlsym(api.library, s); };
  api.initialized = reinterpret_cast<int (*)(int *)>(symbol("MPI_Initialized"));
  api.finalized = reinterpret_cast<int (*)(int *)>(symbol("MPI_Finalized"));
  api.init = reinterpret_cast<int (*)(int *, char ***)>(symbol("MPI_Init"));
  api.finalize = reinterpret_cast<int (*)()>(symbol("MPI_Finalize"));
  api.commRank =
      reinterpret_cast<int (*)(void *, int *)>(symbol("MPI_Comm_rank"));
  api.commSize =
      reinterpret_cast<int (*)(void *, int *)>(symbol("MPI_Comm_size"));
  api.commSetErrhandler = reinterpret_cast<int (*)(void *, void *)>(
      symbol("MPI_Comm_set_errhandler"));
  api.iallreduce =
      reinterpret_cast<int (*)(const void *, void *, int, void *, void *,
                               void *, void **)>(symbol("MPI_Iallreduce"));
  api.errorString =
      reinterpret_cast<int (*)(int, char *, int *)>(symbol("MPI_Error_string"));
  api.isend = reinterpret_cast<int (*)(const void *, int, void *, int, int,
                                       void *, void **)>(symbol("MPI_Isend"));
  api.irecv =
      reinterpret_cast<int (*)(void *, int, void *, int, int, void *, void **)>(
          symbol("MPI_Irecv"));
  api.ibcast =
      reinterpret_cast<int (*)(void *, int, void *, int, void *, void **)>(
          symbol("MPI_Ibcast"));
  api.test =
      reinterpret_cast<int (*)(void **, int *, void *)>(symbol("MPI_Test"));
  api.iprobe = reinterpret_cast<int (*)(int, int, void *, int *, void *)>(
      symbol("MPI_Iprobe"));
  api.commDup =
      reinterpret_cast<int (*)(void *, void **)>(symbol("MPI_Comm_dup"));
  api.allgather =
      reinterpret_cast<int (*)(const void *, int, void *, void *, int, void *,
                               void *)>(symbol("MPI_Allgather"));
  api.iallgather =
      reinterpret_cast<int (*)(const void *, int, void *, void *, int, void *,
                               void *, void **)>(symbol("MPI_Iallgather"));
  api.iallgatherv =
      reinterpret_cast<int (*)(const void *, int, void *, void *, const int *,
                               const int *, void *, void *, void **)>(
          symbol("MPI_Iallgatherv"));
  api.ireduceScatter = reinterpret_cast<int (*)(
      const void *, void *, const int *, void *, void *, void *, void **)>(
      symbol("MPI_Ireduce_scatter"));
  api.ialltoall =
      reinterpret_cast<int (*)(const void *, int, void *, void *, int, void *,
                               void *, void **)>(symbol("MPI_Ialltoall"));
  api.ialltoallv = reinterpret_cast<int (*)(
      const void *, const int *, const int *, void *, void *, const int *,
      const int *, void *, void *, void **)>(symbol("MPI_Ialltoallv"));
  api.intType = symbol("ompi_mpi_int");
  api.commSplit = reinterpret_cast<int (*)(void *, int, int, void **)>(
      symbol("MPI_Comm_split"));
  api.abort = reinterpret_cast<int (*)(void *, int)>(symbol("MPI_Abort"));
  api.commWorld = symbol("ompi_mpi_comm_world");
  api.floatType = symbol("ompi_mpi_float");
  api.byteType = symbol("ompi_mpi_byte");
  api.sum = symbol("ompi_mpi_op_sum");
  api.errorsReturn = symbol("ompi_mpi_errors_return");
  if (!api.initialized || !api.finalized || !api.init || !api.finalize ||
      !api.commRank || !api.commSize || !api.commSetErrhandler ||
      !api.iallreduce || !api.isend || !api.irecv || !api.ibcast || !api.test ||
      !api.iprobe || !api.commDup || !api.allgather || !api.iallgather ||
      !api.iallgatherv || !api.ireduceScatter || !api.ialltoall ||
      !api.ialltoallv || !api.intType || !api.commSplit || !api.abort ||
      !api.commWorld || !api.floatType || !api.byteType || !api.sum ||
      !api.errorsReturn)
    return Status::error(StatusCode::NotFound,
                         name + " is not OpenMPI's libmpi (Kiln calls "
                                "OpenMPI's C ABI)");
  int ready = 0;
  api.initialized(&ready);
  if (!ready) {
    if (api.init(nullptr, nullptr) != 0)
      return Status::error(StatusCode::Internal, "MPI_Init failed");
    api.weInitialized = true;
    std::atexit(finalizeAtExit);
  }
  api.commSetErrhandler(api.commWorld, api.errorsReturn);
  int rank = 0, size = 1;
  if (api.commRank(api.commWorld, &rank) != 0 ||
      api.commSize(api.commWorld, &size) != 0)
    return Status::error(StatusCode::Internal,
                         "MPI_Comm_rank / MPI_Comm_size failed");
  out = std::make_shared<MpiWorld>(api.commWorld, rank, size);
  return {};
}

} // namespace

void Communicator::abortAll(int code) {
  MpiApi &api = mpi();
  int ready = 0, done = 0;
  if (!api.abort || !api.initialized || api.initialized(&ready) != 0 ||
      !ready || api.finalized(&done) != 0 || done)
    return;
  std::fflush(stdout);
  std::fflush(stderr);
  api.abort(api.commWorld, code);
}

Status Communicator::world(std::shared_ptr<Communicator> &out) {
  static std::mutex lock;
  static std::shared_ptr<Communicator> world;
  std::lock_guard<std::mutex> guard(lock);
  if (!world) {
    const char *launched = std::getenv("OMPI_COMM_WORLD_SIZE");
    const char *library = std::getenv("KILN_LIBMPI");
    if ((launched && *launched) || (library && *library)) {
      if (Status s = openMpi(world); !s.ok())
        return s;
    } else {
      world = std::make_shared<SingleRank>();
    }
  }
  out = world;
  return {};
}

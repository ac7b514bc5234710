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
#include <cstdio>
#include <cstdlib>
#include <dlfcn.h>
#include <mutex>
#include <string>

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
  int (*allreduce)(const void *, void *, int, void *, void *, void *) = nullptr;
  int (*sendFn)(const void *, int, void *, int, int, void *) = nullptr;
  int (*recvFn)(void *, int, void *, int, int, void *, void *) = nullptr;
  int (*bcast)(void *, int, void *, int, void *) = nullptr;
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
class MpiWorld final : public Communicator {
public:
  MpiWorld(void *comm, int rank, int size) : comm(comm), r(rank), n(size) {}
  int64_t rank() const override { return r; }
  int64_t size() const override { return n; }
  Status allReduceSum(const float *in, float *out, size_t count) override {
    MpiApi &api = mpi();
    return inPieces(count, "MPI_Allreduce", [&](size_t at, int piece) {
      return api.allreduce(in + at, out + at, piece, api.floatType, api.sum,
                           comm);
    });
  }
  Status send(const float *data, size_t count, int64_t to) override {
    MpiApi &api = mpi();
    return inPieces(count, "MPI_Send to rank " + std::to_string(to),
                    [&](size_t at, int piece) {
                      return api.sendFn(data + at, piece, api.floatType,
                                        static_cast<int>(to), kTag, comm);
                    });
  }
  Status receive(float *data, size_t count, int64_t from) override {
    MpiApi &api = mpi();
    return inPieces(count, "MPI_Recv from rank " + std::to_string(from),
                    [&](size_t at, int piece) {
                      // OpenMPI's MPI_STATUS_IGNORE is a null pointer.
                      return api.recvFn(data + at, piece, api.floatType,
                                        static_cast<int>(from), kTag, comm,
                                        nullptr);
                    });
  }
  Status broadcast(float *data, size_t count, int64_t root) override {
    MpiApi &api = mpi();
    return inPieces(count, "MPI_Bcast", [&](size_t at, int piece) {
      return api.bcast(data + at, piece, api.floatType, static_cast<int>(root),
                       comm);
    });
  }
  Status broadcastBytes(void *data, size_t bytes, int64_t root) override {
    MpiApi &api = mpi();
    if (int rc = api.bcast(data, static_cast<int>(bytes), api.byteType,
                           static_cast<int>(root), comm);
        rc != 0)
      return failed("MPI_Bcast", rc);
    return {};
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
    out = std::make_shared<MpiWorld>(part, rank, size);
    return {};
  }

private:
  static constexpr int kTag = 7;

  Status failed(const std::string &what, int rc) const {
    MpiApi &api = mpi();
    char text[512];
    int length = 0;
    std::string why = "error " + std::to_string(rc);
    if (api.errorString && rc > 0 && api.errorString(rc, text, &length) == 0)
      why.assign(text, static_cast<size_t>(length));
    return Status::error(StatusCode::Internal, "rank " + std::to_string(r) +
                                                   " of " + std::to_string(n) +
                                                   ": " + what +
                                                   " failed: " + why);
  }
  /// MPI counts are ints: large buffers go in pieces.
  template <typename Call>
  Status inPieces(size_t count, const std::string &what, Call call) const {
    constexpr size_t kPiece = size_t(1) << 30;
    for (size_t done = 0; done < count; done += kPiece) {
      int piece = static_cast<int>(std::min(kPiece, count - done));
      if (int rc = call(done, piece); rc != 0)
        return failed(what, rc);
    }
    return {};
  }

  void *comm;
  int r, n;
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
  api.allreduce =
      reinterpret_cast<int (*)(const void *, void *, int, void *, void *,
                               void *)>(symbol("MPI_Allreduce"));
  api.errorString =
      reinterpret_cast<int (*)(int, char *, int *)>(symbol("MPI_Error_string"));
  api.sendFn =
      reinterpret_cast<int (*)(const void *, int, void *, int, int, void *)>(
          symbol("MPI_Send"));
  api.recvFn =
      reinterpret_cast<int (*)(void *, int, void *, int, int, void *, void *)>(
          symbol("MPI_Recv"));
  api.bcast = reinterpret_cast<int (*)(void *, int, void *, int, void *)>(
      symbol("MPI_Bcast"));
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
      !api.allreduce || !api.sendFn || !api.recvFn || !api.bcast ||
      !api.commSplit || !api.abort || !api.commWorld || !api.floatType ||
      !api.byteType || !api.sum || !api.errorsReturn)
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

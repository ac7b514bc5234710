//===- Nccl.cpp - NCCL, loaded at run time --------------------------------===//

#include "Nccl.h"

#include <cstdlib>
#include <dlfcn.h>

using namespace kiln::nccl;

Library::~Library() {
  if (handle)
    dlclose(handle);
}

std::string Library::describe(const char *call, ncclResult_t result) const {
  const char *text = getErrorString ? getErrorString(result) : nullptr;
  return std::string(call) +
         " failed: " + (text ? std::string(text) : std::string("NCCL error")) +
         " (code " + std::to_string(result) + ")";
}

std::unique_ptr<Library> Library::load(std::string &error) {
  const char *override = std::getenv("KILN_LIBNCCL");
  std::string path = override && *override ? override : "libnccl.so.2";
  std::unique_ptr<Library> lib(new Library());
  lib->file = path;
  lib->handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib->handle) {
    const char *why = dlerror();
    error = "cannot load NCCL (" + (why ? std::string(why) : path) +
            "): install NCCL 2 (libnccl2) or set KILN_LIBNCCL";
    return nullptr;
  }
#define KILN_NCCL_RESOLVE(name, symbol, type)                                  \
  lib->name = reinterpret_cast<name##Fn>(dlsym(lib->handle, symbol));          \
  if (!lib->name) {                                                            \
    error = path + " lacks " symbol ": not NCCL 2.x";                          \
    return nullptr;                                                            \
  }
  KILN_NCCL_ENTRY_POINTS(KILN_NCCL_RESOLVE)
#undef KILN_NCCL_RESOLVE
  return lib;
}

//===- CudaDriver.cpp - The CUDA driver, loaded at run time
//----------------===//

#include "kiln/runtime/CudaDriver.h"

#include <cstdlib>
#include <dlfcn.h>

using namespace kiln::cuda;

Driver::~Driver() {
  if (library)
    dlclose(library);
}

std::string Driver::describe(const char *call, CUresult result) const {
  const char *name = nullptr, *text = nullptr;
  if (cuGetErrorName)
    cuGetErrorName(result, &name);
  if (cuGetErrorString)
    cuGetErrorString(result, &text);
  std::string message = std::string(call) + " failed: ";
  message += name ? name : ("CUDA error " + std::to_string(result));
  if (text)
    message += std::string(" (") + text + ")";
  return message;
}

std::unique_ptr<Driver> Driver::load(std::string &error,
                                     const std::string &requested) {
  const char *override = std::getenv("KILN_LIBCUDA");
  std::string path = !requested.empty()       ? requested
                     : override && *override ? override
                                             : "libcuda.so.1";
  std::unique_ptr<Driver> driver(new Driver());
  driver->library = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!driver->library) {
    const char *why = dlerror();
    error = "no CUDA driver on this machine (cannot load " + path +
            (why ? std::string(": ") + why : std::string()) + ")";
    return nullptr;
  }
#define KILN_CUDA_RESOLVE(name, symbol, type)                                  \
  driver->name = reinterpret_cast<name##Fn>(dlsym(driver->library, symbol));   \
  if (!driver->name) {                                                         \
    error = path + " lacks " symbol ": the driver is too old for Kiln";        \
    return nullptr;                                                            \
  }
  KILN_CUDA_ENTRY_POINTS(KILN_CUDA_RESOLVE)
#undef KILN_CUDA_RESOLVE

  CUresult r = driver->cuInit(0);
  if (r == CUDA_ERROR_STUB_LIBRARY) {
    error = path + " is the CUDA toolkit's stub library: there is no GPU "
                   "driver on this machine";
    return nullptr;
  }
  if (r != CUDA_SUCCESS) {
    error = driver->describe("cuInit", r);
    return nullptr;
  }
  if ((r = driver->cuDriverGetVersion(&driver->driverVersion)) !=
          CUDA_SUCCESS ||
      (r = driver->cuDeviceGetCount(&driver->devices)) != CUDA_SUCCESS) {
    error = driver->describe("cuDeviceGetCount", r);
    return nullptr;
  }
  if (driver->devices == 0) {
    error = "the CUDA driver reports no GPU";
    return nullptr;
  }
  return driver;
}

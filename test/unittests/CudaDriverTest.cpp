//===- CudaDriverTest.cpp - Loading the CUDA driver at run time -----------===//
//
// Without a driver the load fails with one clear line; with the toolkit's
// stub library (present on development machines) cuInit reports the stub
// and the runtime says there is no GPU. On a GPU machine the load succeeds.
//
//===----------------------------------------------------------------------===//

#include "kiln/runtime/CudaDriver.h"

#include <cstdlib>
#include <gtest/gtest.h>
#include <sys/stat.h>

using kiln::cuda::Driver;

TEST(CudaDriverTest, LoadsOrExplains) {
  unsetenv("KILN_LIBCUDA");
  std::string error;
  auto driver = Driver::load(error);
  if (driver) {
    EXPECT_GT(driver->deviceCount(), 0);
    EXPECT_GT(driver->version(), 0);
    return;
  }
  EXPECT_FALSE(error.empty());
  EXPECT_EQ(error.find('\n'), std::string::npos) << error;
}

TEST(CudaDriverTest, MissingLibraryIsNamed) {
  setenv("KILN_LIBCUDA", "/nonexistent/libcuda.so.1", 1);
  std::string error;
  EXPECT_EQ(Driver::load(error), nullptr);
  EXPECT_NE(error.find("no CUDA driver on this machine (cannot load "
                       "/nonexistent/libcuda.so.1"),
            std::string::npos)
      << error;
  unsetenv("KILN_LIBCUDA");
}

TEST(CudaDriverTest, ToolkitStubIsRecognised) {
  const char *stub = "/usr/local/cuda/lib64/stubs/libcuda.so";
  struct stat st;
  if (stat(stub, &st) != 0)
    GTEST_SKIP() << "no CUDA toolkit stub at " << stub;
  setenv("KILN_LIBCUDA", stub, 1);
  std::string error;
  EXPECT_EQ(Driver::load(error), nullptr);
  EXPECT_NE(error.find("stub library: there is no GPU driver"),
            std::string::npos)
      << error;
  unsetenv("KILN_LIBCUDA");
}

//===- Device.h - The emulated H100: memory and kernel launches -*- C++ -*-===//
//
// One process-wide emulated device. Device memory is host memory (device
// pointers are host addresses, so copies are memcpy), tracked per
// allocation so every global access is bounds-checked. A launch executes a
// decoded PTX entry block by block; asynchronous work (TMA, cp.async,
// wgmma) completes when the seeded scheduler decides. A kernel that breaks
// a rule fails the launch with one message naming kernel, block, thread,
// PTX line and rule.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_EMU_DEVICE_H
#define KILN_EMU_DEVICE_H

#include "kiln/emu/Ptx.h"

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace kiln::emu {

/// How the emulator runs; `fromEnvironment` reads the KILN_EMU_* variables
/// (docs/emulator.md).
struct Options {
  /// 0: asynchronous work completes as late as possible (only when no warp
  /// can run) and warps switch only when they block; otherwise a seed for
  /// random completion points, warp switches and block order.
  uint64_t seed = 0;
  bool poison = true;    // fresh cuMemAlloc memory reads as NaN (0xff bytes)
  bool hazards = true;   // async/shared/register hazard checks
  bool racecheck = true; // shared-memory races between barriers
  uint64_t memoryBytes = 80ull << 30; // what the device reports and allows
  uint64_t maxWarpInstructions = 0;   // 0: no limit (a runaway guard)
  /// Without a seed, warps take turns every `quantum` instructions (as the
  /// hardware's warp schedulers interleave them), or earlier when they block.
  unsigned quantum = 1;
  bool trace = false; // every warp instruction on stderr (KILN_EMU_TRACE)
  /// Give `.b8 name;` shared scalars their one byte, as ptxas does, instead
  /// of reading them as zero-length arrays at the dynamic base (layoutShared).
  bool strictSharedLayout = false;
  static Options fromEnvironment();
};

/// The emulated device's properties (an H100 SXM as sm_90a sees it).
struct DeviceProperties {
  int multiprocessors = 132;
  int sharedPerBlockOptin = 232448; // 227 KB
  int sharedPerBlock = 49152;
  int registersPerSm = 65536;
  int maxThreadsPerBlock = 1024;
  int warpSize = 32;
};

struct LaunchStats {
  uint64_t launches = 0;
  uint64_t warpInstructions = 0;
  uint64_t threadInstructions = 0;
  uint64_t blocks = 0;
  double seconds = 0;
};

struct LoadedModule {
  std::unique_ptr<Module> ptx;
  std::vector<uint64_t> globalAddresses; // per Module::globals
};

class Device {
public:
  static Device &get();

  Options options;
  DeviceProperties properties;

  // ---- Memory ----
  /// Allocates `bytes` of device memory (poisoned unless turned off).
  bool allocate(uint64_t &address, size_t bytes, std::string &error);
  bool release(uint64_t address);
  /// Whether [address, address + bytes) lies inside one allocation.
  bool contains(uint64_t address, size_t bytes) const;
  uint64_t bytesInUse() const { return inUse; }

  // ---- Modules and launches ----
  std::unique_ptr<LoadedModule> load(const std::string &ptx,
                                     std::string &error);
  /// Runs `fn` to completion. `params` follows cuLaunchKernel: one pointer
  /// per PTX parameter to its value.
  bool launch(const LoadedModule &module, const Function &fn,
              const unsigned grid[3], const unsigned block[3],
              unsigned dynamicShared, void **params, std::string &error);

  LaunchStats totals; // accumulated over all launches
  std::map<std::string, LaunchStats> perKernel;

private:
  Device();
  std::map<uint64_t, size_t> allocations;
  uint64_t inUse = 0;
  friend class Interpreter;
};

/// Shared, local and param state spaces seen through generic addresses:
/// windows above the 47-bit user address space, so no host (global) pointer
/// falls into them.
constexpr uint64_t kSharedWindow = 1ull << 48;
constexpr uint64_t kLocalWindow = 2ull << 48;
constexpr uint64_t kParamWindow = 3ull << 48;
constexpr uint64_t kWindowSize = 1ull << 32;

} // namespace kiln::emu

#endif // KILN_EMU_DEVICE_H

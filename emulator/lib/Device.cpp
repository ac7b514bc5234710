//===- Device.cpp - Emulated device memory, options and modules -----------===//

#include "kiln/emu/Device.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace kiln::emu {

namespace {
bool flag(const char *name, bool fallback) {
  const char *v = std::getenv(name);
  if (!v || !*v)
    return fallback;
  return !(std::strcmp(v, "0") == 0 || std::strcmp(v, "off") == 0 ||
           std::strcmp(v, "no") == 0);
}
} // namespace

Options Options::fromEnvironment() {
  Options o;
  if (const char *s = std::getenv("KILN_EMU_SEED"))
    o.seed = std::strtoull(s, nullptr, 10);
  o.poison = flag("KILN_EMU_POISON", true);
  o.hazards = flag("KILN_EMU_CHECKS", true);
  o.racecheck = flag("KILN_EMU_RACECHECK", o.hazards);
  if (const char *s = std::getenv("KILN_EMU_MEMORY"))
    o.memoryBytes = std::strtoull(s, nullptr, 10);
  if (const char *s = std::getenv("KILN_EMU_MAX_INSTRUCTIONS"))
    o.maxWarpInstructions = std::strtoull(s, nullptr, 10);
  o.strictSharedLayout = flag("KILN_EMU_STRICT_SHARED", false);
  o.trace = flag("KILN_EMU_TRACE", false);
  if (const char *s = std::getenv("KILN_EMU_QUANTUM"))
    o.quantum =
        std::max(1u, static_cast<unsigned>(std::strtoul(s, nullptr, 10)));
  return o;
}

Device::Device() : options(Options::fromEnvironment()) {}

Device &Device::get() {
  static Device device;
  return device;
}

bool Device::allocate(uint64_t &address, size_t bytes, std::string &error) {
  if (inUse + bytes > options.memoryBytes) {
    error = "out of emulated device memory";
    return false;
  }
  // 256-byte alignment, as cuMemAlloc guarantees.
  void *p = std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
  if (!p) {
    error = "host allocation failed";
    return false;
  }
  std::memset(p, options.poison ? 0xff : 0, bytes);
  address = reinterpret_cast<uint64_t>(p);
  allocations[address] = bytes;
  inUse += bytes;
  return true;
}

bool Device::release(uint64_t address) {
  auto it = allocations.find(address);
  if (it == allocations.end())
    return false;
  inUse -= it->second;
  allocations.erase(it);
  std::free(reinterpret_cast<void *>(address));
  return true;
}

bool Device::contains(uint64_t address, size_t bytes) const {
  auto it = allocations.upper_bound(address);
  if (it == allocations.begin())
    return false;
  --it;
  return address >= it->first && address + bytes <= it->first + it->second;
}

std::unique_ptr<LoadedModule> Device::load(const std::string &ptx,
                                           std::string &error) {
  auto m = std::make_unique<LoadedModule>();
  m->ptx = parsePtx(ptx, error);
  if (!m->ptx)
    return nullptr;
  if (m->ptx->target.find("sm_90") == std::string::npos) {
    error =
        "ptx: .target " + m->ptx->target + " (the emulated device is sm_90a)";
    return nullptr;
  }
  if (options.strictSharedLayout)
    for (Function &f : m->ptx->functions)
      layoutShared(f, /*bareB8IsDynamic=*/false);
  for (const GlobalVar &g : m->ptx->globals) {
    uint64_t a;
    if (!allocate(a, g.size ? g.size : 1, error))
      return nullptr;
    std::memset(reinterpret_cast<void *>(a), 0, g.size);
    if (!g.init.empty())
      std::memcpy(reinterpret_cast<void *>(a), g.init.data(), g.init.size());
    m->globalAddresses.push_back(a);
  }
  return m;
}

} // namespace kiln::emu

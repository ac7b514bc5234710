//===- Interpreter.cpp - Executing PTX warps ------------------------------===//
//
// Blocks run one after another (in a seeded order when a seed is set); the
// warps of a block interleave. A warp executes its ready lanes at the
// lowest program counter together (lanes that diverged wait at higher PCs,
// so they reconverge where their paths meet). A lane that cannot proceed
// (bar.sync, an mbarrier wait that fails, a wait_group with work pending)
// blocks; when no warp of the block can run, one piece of asynchronous work
// completes (the oldest, or a random one under a seed); when nothing is in
// flight either, the block is deadlocked and the report says where each
// warp waits.
//
//===----------------------------------------------------------------------===//

#include "kiln/emu/Device.h"
#include "kiln/emu/Hopper.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <random>
#include <sstream>
#include <unordered_map>

namespace kiln::emu {

namespace {

struct KernelError {
  std::string what;
};

inline int ctz(uint32_t m) { return __builtin_ctz(m); }
#define FOR_LANES(mask, l)                                                     \
  for (uint32_t _m = (mask), l = 0; _m && ((l = ctz(_m)), true); _m &= _m - 1)

uint64_t truncTo(uint64_t v, unsigned bytes) {
  return bytes >= 8 ? v : v & ((1ull << (8 * bytes)) - 1);
}
int64_t signExtend(uint64_t v, unsigned bytes) {
  if (bytes >= 8)
    return static_cast<int64_t>(v);
  unsigned shift = 64 - 8 * bytes;
  return static_cast<int64_t>(v << shift) >> shift;
}
float asF32(uint64_t v) {
  uint32_t u = static_cast<uint32_t>(v);
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint64_t fromF32(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
double asF64(uint64_t v) {
  double d;
  std::memcpy(&d, &v, 8);
  return d;
}
uint64_t fromF64(double d) {
  uint64_t u;
  std::memcpy(&u, &d, 8);
  return u;
}
float flushF32(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0 && (u & 0x007fffffu)) // subnormal
    u &= 0x80000000u;
  std::memcpy(&f, &u, 4);
  return f;
}

enum LaneState : uint8_t { Ready, Blocked, AtBarrier, Exited };

struct Mbarrier {
  uint32_t expected = 0, pending = 0;
  int64_t tx = 0;
  uint32_t phase = 0;
};

struct WgmmaOp {
  const Instruction *inst = nullptr;
  unsigned group = 0;       // warpgroup
  unsigned commitIndex = 0; // the commit group it belongs to
  int issuedWarps = 0;
  int retiredWarps = 0;
  bool completed = false;
  uint64_t descA[4] = {}, descB[4] = {};
  uint64_t firstDescA = 0, firstDescB = 0;
  bool scaleD[4] = {};
  bool aFromRegisters = false;
  std::vector<uint32_t> aRegs[4]; // per warp: 32 lanes x 4 registers
  std::vector<std::pair<uint32_t, uint32_t>> readRanges; // shared bytes
};

struct TmaOp {
  uint32_t dst = 0, mbar = 0;
  TensorMap map{};
  int32_t coords[5] = {};
  uint64_t bytes = 0;
  uint64_t rowsDone = 0, rows = 0; // lands one box row at a time
};

struct CpAsyncOp {
  uint32_t dst = 0;
  uint64_t src = 0;
  unsigned size = 0, srcSize = 0;
  unsigned warp = 0, lane = 0;
  uint32_t group = 0;
};

struct AsyncOp {
  enum class Kind { Tma, CpAsync, Wgmma } kind;
  size_t index; // into the block's tma/cp/wgmma vectors
  bool done = false;
};

struct ThreadAsync {
  uint32_t openGroup = 0;              // cp.async group being filled
  std::map<uint32_t, int> outstanding; // committed or open group -> ops left
};

struct Warp {
  unsigned index = 0;
  uint32_t pcs[32] = {};
  uint8_t state[32] = {};
  uint32_t readyMask = 0, blockedMask = 0, barrierMask = 0, exitedMask = 0;
  uint32_t allMask = 0; // lanes that exist (partial last warp)
  bool uniform = true;  // every ready lane at the same pc
  /// Divergent regions: lanes of `mask` that reach `rpc` wait there until
  /// all of them (that have not exited) do.
  struct Region {
    uint32_t rpc, mask;
  };
  std::vector<Region> regions;
  uint8_t barrierId[32] = {};
  // wgmma bookkeeping (per warp of a warpgroup).
  unsigned wgmmaIssued = 0, wgmmaCommits = 0;
  unsigned wgmmaRetiredOps = 0; // ops of this warp released by wait_group
  std::vector<uint16_t> owned;  // per register: in-flight wgmma count
  unsigned ownedCount = 0;
  std::vector<ThreadAsync> threads; // cp.async state per lane (lazy)
  uint32_t waitLine = 0;            // where it blocked, for reports
  std::string waitWhat;
};

struct Shadow {
  std::vector<uint8_t> pendingAsync;   // TMA/cp.async writes in flight
  std::vector<uint8_t> initialized;    // written since the block started
  std::vector<uint8_t> wgmmaReading;   // in-flight wgmma operand reads
  std::vector<uint16_t> genericWriter; // thread+1 of an unfenced write
  std::vector<uint32_t> writerFence;   // writer's fence count at the write
  // racecheck: last writer / reader thread + 1 and the barrier epoch.
  std::vector<uint16_t> lastWriter, lastReader;
  std::vector<uint32_t> writeEpoch, readEpoch;
};

} // namespace

class Interpreter {
public:
  Interpreter(Device &device, const LoadedModule &module, const Function &fn,
              const unsigned grid[3], const unsigned block[3],
              unsigned dynamicShared, void **params)
      : dev(device), mod(module), fn(fn), opts(device.options),
        dynamicShared(dynamicShared) {
    for (int i = 0; i < 3; ++i) {
      this->grid[i] = grid[i];
      this->block[i] = block[i];
    }
    paramBuffer.assign(fn.paramBytes + 8, 0);
    for (size_t i = 0; i < fn.params.size(); ++i)
      std::memcpy(paramBuffer.data() + fn.params[i].offset, params[i],
                  fn.params[i].size);
    threadsPerBlock = block[0] * block[1] * block[2];
    numWarps = (threadsPerBlock + 31) / 32;
    numRegs = fn.registers.size();
    sharedSize = std::max(kReservedShared + fn.staticShared,
                          fn.dynamicBase + dynamicShared);
    rng.seed(opts.seed);
  }

  LaunchStats stats;

  bool run(std::string &error) {
    try {
      uint64_t blocks = uint64_t(grid[0]) * grid[1] * grid[2];
      std::vector<uint64_t> order(blocks);
      for (uint64_t i = 0; i < blocks; ++i)
        order[i] = i;
      if (opts.seed)
        std::shuffle(order.begin(), order.end(), rng);
      for (uint64_t b : order) {
        blockId[0] = static_cast<unsigned>(b % grid[0]);
        blockId[1] = static_cast<unsigned>((b / grid[0]) % grid[1]);
        blockId[2] = static_cast<unsigned>(b / (uint64_t(grid[0]) * grid[1]));
        runBlock();
        ++stats.blocks;
      }
      return true;
    } catch (const KernelError &e) {
      error = e.what;
      return false;
    }
  }

private:
  Device &dev;
  const LoadedModule &mod;
  const Function &fn;
  const Options &opts;
  unsigned grid[3], block[3], blockId[3] = {};
  unsigned dynamicShared;
  unsigned threadsPerBlock = 0, numWarps = 0;
  size_t numRegs = 0;
  uint64_t sharedSize = 0;
  std::vector<uint8_t> paramBuffer;
  std::mt19937_64 rng;

  // Per block state.
  std::vector<Warp> warps;
  std::vector<uint64_t> regs; // [warp][reg][lane]
  std::vector<uint8_t> shared;
  Shadow shadow;
  std::vector<uint8_t> local;      // per thread: fn.localBytes
  std::vector<uint8_t> callParams; // per thread: fn.callParamBytes
  std::unordered_map<uint32_t, Mbarrier> mbarriers;
  std::vector<TmaOp> tmas;
  std::vector<CpAsyncOp> cps;
  std::vector<WgmmaOp> wgmmas;
  std::deque<AsyncOp> async; // in issue order
  size_t asyncPending = 0;
  unsigned pendingWrites = 0, wgmmaReads = 0;
  std::vector<uint32_t> fenceCount; // per thread: fence.proxy.async count
  struct Barrier {
    unsigned arrived = 0, expected = 0;
  } barriers[16];
  uint32_t barrierEpoch = 1;
  bool racecheckOn = false;
  // Cache of the last global allocation hit.
  uint64_t cacheBase = 0, cacheEnd = 0;

  const Warp *current = nullptr;
  uint32_t currentLane = 0;
  const Instruction *currentInst = nullptr;

  // ---- Reporting ---------------------------------------------------------

  [[noreturn]] void fail(const std::string &rule, int lane = -1) {
    std::ostringstream o;
    o << "kiln-emu: kernel " << fn.name << " block (" << blockId[0] << ","
      << blockId[1] << "," << blockId[2] << ")";
    if (current) {
      unsigned l = lane >= 0 ? static_cast<unsigned>(lane) : currentLane;
      o << " thread " << current->index * 32 + l << " (warp " << current->index
        << " lane " << l << ")";
    }
    if (currentInst)
      o << " ptx line " << currentInst->line << " `" << currentInst->form
        << "`";
    o << ": " << rule;
    throw KernelError{o.str()};
  }

  // ---- Registers ---------------------------------------------------------

  uint64_t &R(const Warp &w, int reg, unsigned lane) {
    return regs[(size_t(w.index) * numRegs + reg) * 32 + lane];
  }

  uint64_t special(Special s, const Warp &w, unsigned lane) {
    unsigned t = w.index * 32 + lane;
    switch (s) {
    case Special::TidX:
      return t % block[0];
    case Special::TidY:
      return (t / block[0]) % block[1];
    case Special::TidZ:
      return t / (block[0] * block[1]);
    case Special::NtidX:
      return block[0];
    case Special::NtidY:
      return block[1];
    case Special::NtidZ:
      return block[2];
    case Special::CtaidX:
      return blockId[0];
    case Special::CtaidY:
      return blockId[1];
    case Special::CtaidZ:
      return blockId[2];
    case Special::NctaidX:
      return grid[0];
    case Special::NctaidY:
      return grid[1];
    case Special::NctaidZ:
      return grid[2];
    case Special::LaneId:
      return lane;
    case Special::WarpId:
      return w.index;
    case Special::NWarpId:
      return 64;
    case Special::SmId:
      return (blockId[0] + grid[0] * (blockId[1] + grid[1] * blockId[2])) %
             dev.properties.multiprocessors;
    case Special::NSmId:
      return dev.properties.multiprocessors;
    case Special::Clock:
    case Special::Clock64:
    case Special::GlobalTimer:
      return stats.warpInstructions;
    case Special::ClusterCtaRank:
      return 0;
    case Special::ClusterNCtaRank:
      return 1;
    case Special::ClusterIdX:
      return blockId[0];
    case Special::DynSmemSize:
      return dynamicShared;
    case Special::LanemaskLt:
      return (1u << lane) - 1;
    case Special::LanemaskEq:
      return 1u << lane;
    }
    return 0;
  }

  uint64_t symbolValue(int symbol) {
    const Symbol &s = fn.symbols[symbol];
    switch (s.space) {
    case Space::Shared:
      return s.offset;
    case Space::Global:
    case Space::Const:
      return mod.globalAddresses[s.moduleSymbol];
    case Space::Local:
      return s.offset;
    case Space::Param:
      return s.offset;
    default:
      return 0;
    }
  }

  __attribute__((always_inline)) uint64_t get(const Warp &w, const Operand &o,
                                              unsigned lane) {
    if (__builtin_expect(o.kind == Operand::Kind::Reg, 1)) {
      uint64_t v = regs[(size_t(w.index) * numRegs + o.reg) * 32 + lane];
      return o.negate ? !v : v;
    }
    if (o.kind == Operand::Kind::Imm)
      return static_cast<uint64_t>(o.imm);
    return getSlow(w, o, lane);
  }

  __attribute__((noinline)) uint64_t getSlow(const Warp &w, const Operand &o,
                                             unsigned lane) {
    switch (o.kind) {
    case Operand::Kind::Special:
      return special(static_cast<Special>(o.imm), w, lane);
    case Operand::Kind::Symbol:
      return symbolValue(o.symbol);
    default:
      fail("unsupported source operand");
    }
  }

  __attribute__((always_inline)) void set(Warp &w, const Operand &o,
                                          unsigned lane, uint64_t v) {
    if (__builtin_expect(o.kind == Operand::Kind::Reg, 1)) {
      regs[(size_t(w.index) * numRegs + o.reg) * 32 + lane] = v;
      return;
    }
    if (o.kind != Operand::Kind::Sink)
      fail("destination is not a register");
  }

  // ---- Memory ------------------------------------------------------------

  /// The address an Addr operand names (state-space address).
  uint64_t address(const Warp &w, const Operand &o, unsigned lane) {
    uint64_t base = 0;
    if (o.reg >= 0)
      base = regs[(size_t(w.index) * numRegs + o.reg) * 32 + lane];
    else if (o.symbol >= 0)
      base = symbolValue(o.symbol);
    return base + static_cast<uint64_t>(o.imm);
  }

  struct Resolved {
    Space space;
    uint8_t *ptr;
    uint64_t offset; // shared/local offset
  };

  /// Resolves an access of `size` bytes; checks bounds and alignment.
  Resolved resolve(Space space, uint64_t addr, unsigned size, unsigned align,
                   unsigned lane, bool write,
                   const Symbol *paramSymbol = nullptr) {
    if (space == Space::Generic) {
      if (addr >= kSharedWindow && addr < kSharedWindow + kWindowSize) {
        space = Space::Shared;
        addr -= kSharedWindow;
      } else if (addr >= kLocalWindow && addr < kLocalWindow + kWindowSize) {
        space = Space::Local;
        addr -= kLocalWindow;
      } else if (addr >= kParamWindow && addr < kParamWindow + kWindowSize) {
        space = Space::Param;
        addr -= kParamWindow;
      } else {
        space = Space::Global;
      }
    }
    if (addr & (align - 1)) { // alignments are powers of two
      char b[160];
      std::snprintf(b, sizeof b, "misaligned %u-byte %s of address 0x%llx",
                    size, write ? "store" : "load",
                    static_cast<unsigned long long>(addr));
      fail(b, lane);
    }
    switch (space) {
    case Space::Global:
    case Space::Const: {
      if (!(addr >= cacheBase && addr + size <= cacheEnd)) {
        auto it = dev.allocations.upper_bound(addr);
        bool ok = it != dev.allocations.begin();
        if (ok) {
          --it;
          ok = addr >= it->first && addr + size <= it->first + it->second;
        }
        if (!ok) {
          for (size_t g = 0; g < mod.globalAddresses.size(); ++g) {
            uint64_t b = mod.globalAddresses[g];
            if (addr >= b && addr + size <= b + mod.ptx->globals[g].size)
              return {Space::Global, reinterpret_cast<uint8_t *>(addr), 0};
          }
          char b[200];
          std::snprintf(b, sizeof b,
                        "out-of-bounds global %s of %u bytes at 0x%llx (no "
                        "allocation holds it)",
                        write ? "store" : "load", size,
                        static_cast<unsigned long long>(addr));
          fail(b, lane);
        }
        cacheBase = it->first;
        cacheEnd = it->first + it->second;
      }
      return {Space::Global, reinterpret_cast<uint8_t *>(addr), 0};
    }
    case Space::Shared:
    case Space::SharedCluster: {
      if (addr < kReservedShared) {
        char b[200];
        std::snprintf(b, sizeof b,
                      "shared %s at offset %llu, inside the 1 KB that sm_90 "
                      "reserves (user shared memory starts at %llu)",
                      write ? "store" : "load",
                      static_cast<unsigned long long>(addr),
                      static_cast<unsigned long long>(kReservedShared));
        fail(b, lane);
      }
      if (addr + size > sharedSize || addr >= sharedSize) {
        char b[200];
        std::snprintf(b, sizeof b,
                      "out-of-bounds shared %s of %u bytes at offset %llu "
                      "(the block's window ends at %llu: %llu static + %u "
                      "dynamic bytes after the reserved 1 KB)",
                      write ? "store" : "load", size,
                      static_cast<unsigned long long>(addr),
                      static_cast<unsigned long long>(sharedSize),
                      static_cast<unsigned long long>(fn.staticShared),
                      dynamicShared);
        fail(b, lane);
      }
      touch(addr, size);
      return {Space::Shared, shared.data() + addr, addr};
    }
    case Space::Local: {
      if (addr + size > fn.localBytes)
        fail("out-of-bounds local access", lane);
      unsigned t = current->index * 32 + lane;
      return {Space::Local, local.data() + size_t(t) * fn.localBytes + addr,
              addr};
    }
    case Space::Param: {
      if (paramSymbol && !paramSymbol->moduleScope) {
        if (!paramSymbol->entryParam) {
          unsigned t = current->index * 32 + lane;
          if (addr + size > fn.callParamBytes)
            fail("out-of-bounds call parameter access", lane);
          return {Space::Param,
                  callParams.data() + size_t(t) * fn.callParamBytes + addr,
                  addr};
        }
      }
      if (write)
        fail("store to a kernel parameter", lane);
      if (addr + size > fn.paramBytes)
        fail("out-of-bounds kernel parameter load", lane);
      return {Space::Param, paramBuffer.data() + addr, addr};
    }
    default:
      fail("unsupported state space");
    }
  }

  void checkSharedRead(uint64_t off, unsigned size, unsigned lane) {
    if (!opts.hazards) {
      if (pendingWrites)
        landPending(off, size);
      return;
    }
    if (pendingWrites)
      for (unsigned i = 0; i < size; ++i)
        if (shadow.pendingAsync[off + i])
          fail("read of shared memory at offset " + std::to_string(off + i) +
                   " whose asynchronous copy (TMA or cp.async) has not "
                   "completed: a missing or early wait",
               lane);
    if (std::memchr(&shadow.initialized[off], 0, size))
      for (unsigned i = 0; i < size; ++i)
        if (!shadow.initialized[off + i])
          fail("read of shared memory at offset " + std::to_string(off + i) +
                   " that nothing has written since the block started",
               lane);
    if (racecheckOn) {
      uint16_t me = static_cast<uint16_t>(current->index * 32 + lane + 1);
      for (unsigned i = 0; i < size; ++i) {
        size_t b = off + i;
        if (shadow.writeEpoch[b] == barrierEpoch && shadow.lastWriter[b] &&
            shadow.lastWriter[b] != me &&
            (shadow.lastWriter[b] - 1) / 32 != current->index)
          fail("shared-memory race: thread " +
                   std::to_string(shadow.lastWriter[b] - 1) + " wrote offset " +
                   std::to_string(b) +
                   " since the last barrier and this thread reads it",
               lane);
        shadow.lastReader[b] = me;
        shadow.readEpoch[b] = barrierEpoch;
      }
    }
  }

  void checkSharedWrite(uint64_t off, unsigned size, unsigned lane,
                        bool race = true) {
    if (!opts.hazards) {
      if (pendingWrites)
        landPending(off, size);
      return;
    }
    for (unsigned i = 0; i < size; ++i)
      shadow.initialized[off + i] = 1;
    if (pendingWrites)
      for (unsigned i = 0; i < size; ++i)
        if (shadow.pendingAsync[off + i])
          fail("write to shared memory at offset " + std::to_string(off + i) +
                   " that an asynchronous copy in flight also writes",
               lane);
    if (wgmmaReads)
      for (unsigned i = 0; i < size; ++i)
        if (shadow.wgmmaReading[off + i])
          fail("write to shared memory at offset " + std::to_string(off + i) +
                   " that an in-flight wgmma reads (before its wait_group)",
               lane);
    uint16_t me = static_cast<uint16_t>(current->index * 32 + lane + 1);
    for (unsigned i = 0; i < size; ++i) {
      shadow.genericWriter[off + i] = me;
      shadow.writerFence[off + i] = fenceCount[me - 1];
    }
    if (racecheckOn && race) {
      for (unsigned i = 0; i < size; ++i) {
        size_t b = off + i;
        uint16_t wr = shadow.lastWriter[b], rd = shadow.lastReader[b];
        if (shadow.writeEpoch[b] == barrierEpoch && wr && wr != me &&
            (wr - 1u) / 32 != current->index)
          fail("shared-memory race: threads " + std::to_string(wr - 1) +
                   " and " + std::to_string(me - 1) + " both write offset " +
                   std::to_string(b) + " between two barriers",
               lane);
        if (shadow.readEpoch[b] == barrierEpoch && rd && rd != me &&
            (rd - 1u) / 32 != current->index)
          fail("shared-memory race: thread " + std::to_string(rd - 1) +
                   " read offset " + std::to_string(b) +
                   " since the last barrier and this thread overwrites it",
               lane);
        shadow.lastWriter[b] = me;
        shadow.writeEpoch[b] = barrierEpoch;
      }
    }
  }

  /// Bytes the async proxy reads (wgmma operands): generic writes there
  /// must have been followed by fence.proxy.async of the writing thread.
  void checkProxyFenced(uint32_t off, unsigned size, const char *who) {
    if (!opts.hazards)
      return;
    for (unsigned i = 0; i < size; ++i) {
      uint16_t wr = shadow.genericWriter[off + i];
      if (wr && fenceCount[wr - 1] == shadow.writerFence[off + i])
        fail(std::string(who) + " reads shared offset " +
             std::to_string(off + i) + " that thread " +
             std::to_string(wr - 1) +
             " wrote with a generic store not followed by "
             "fence.proxy.async");
    }
  }

  static uint64_t loadBytes(const uint8_t *p, unsigned n) {
    switch (n) {
    case 1:
      return *p;
    case 2: {
      uint16_t v;
      std::memcpy(&v, p, 2);
      return v;
    }
    case 4: {
      uint32_t v;
      std::memcpy(&v, p, 4);
      return v;
    }
    case 8: {
      uint64_t v;
      std::memcpy(&v, p, 8);
      return v;
    }
    default: {
      uint64_t v = 0;
      std::memcpy(&v, p, n);
      return v;
    }
    }
  }
  static void storeBytes(uint8_t *p, uint64_t v, unsigned n) {
    switch (n) {
    case 1:
      *p = static_cast<uint8_t>(v);
      return;
    case 2: {
      uint16_t x = static_cast<uint16_t>(v);
      std::memcpy(p, &x, 2);
      return;
    }
    case 4: {
      uint32_t x = static_cast<uint32_t>(v);
      std::memcpy(p, &x, 4);
      return;
    }
    default:
      std::memcpy(p, &v, n);
      return;
    }
  }

  // ---- Blocks ------------------------------------------------------------

  /// Shared bytes a block may have touched (everything in [dirtyLo,
  /// dirtyHi)): the next block clears only those, since most blocks of a
  /// big grid touch little of a 227 KB window (or exit at once).
  uint64_t dirtyLo = UINT64_MAX, dirtyHi = 0;
  bool sharedReady = false;

  void touch(uint64_t off, uint64_t n) {
    dirtyLo = std::min(dirtyLo, off);
    dirtyHi = std::max(dirtyHi, off + n);
  }

  /// Fresh shared memory for a block: poisoned like device memory (a read
  /// of a byte nobody wrote gives NaN, not a lucky zero), or zeroed without
  /// checks, as a fresh block on a GPU usually finds it.
  void resetShared() {
    racecheckOn = opts.hazards && opts.racecheck;
    uint8_t fill = opts.poison && opts.hazards ? 0xff : 0;
    size_t sb = opts.hazards ? sharedSize : 0;
    size_t rb = racecheckOn ? sharedSize : 0;
    if (!sharedReady) {
      shared.assign(sharedSize, fill);
      shadow.pendingAsync.assign(sharedSize, 0);
      shadow.initialized.assign(sb, 0);
      shadow.wgmmaReading.assign(sb, 0);
      shadow.genericWriter.assign(sb, 0);
      shadow.writerFence.assign(sb, 0);
      shadow.lastWriter.assign(rb, 0);
      shadow.lastReader.assign(rb, 0);
      shadow.writeEpoch.assign(rb, 0);
      shadow.readEpoch.assign(rb, 0);
      sharedReady = true;
    } else if (dirtyLo < dirtyHi) {
      uint64_t lo = dirtyLo, n = std::min<uint64_t>(dirtyHi, sharedSize) - lo;
      auto clear = [&](auto &v, auto value) {
        if (!v.empty())
          std::fill(v.begin() + lo, v.begin() + lo + n, value);
      };
      clear(shared, fill);
      clear(shadow.pendingAsync, uint8_t(0));
      clear(shadow.initialized, uint8_t(0));
      clear(shadow.wgmmaReading, uint8_t(0));
      clear(shadow.genericWriter, uint16_t(0));
      clear(shadow.writerFence, uint32_t(0));
      clear(shadow.lastWriter, uint16_t(0));
      clear(shadow.lastReader, uint16_t(0));
      clear(shadow.writeEpoch, uint32_t(0));
      clear(shadow.readEpoch, uint32_t(0));
    }
    dirtyLo = UINT64_MAX;
    dirtyHi = 0;
  }

  void runBlock() {
    // Warps and registers are reused from block to block (registers start
    // undefined in PTX; zeroing megabytes per block dominated big grids).
    if (warps.size() != numWarps) {
      warps.assign(numWarps, Warp());
      regs.assign(size_t(numWarps) * numRegs * 32, 0);
    } else {
      for (Warp &w : warps) {
        std::vector<uint16_t> owned = std::move(w.owned);
        w = Warp();
        w.owned = std::move(owned);
      }
    }
    resetShared();
    fenceCount.assign(size_t(numWarps) * 32, 0);
    local.assign(size_t(numWarps) * 32 * fn.localBytes, 0);
    callParams.assign(size_t(numWarps) * 32 * fn.callParamBytes, 0);
    mbarriers.clear();
    tmas.clear();
    cps.clear();
    wgmmas.clear();
    async.clear();
    asyncPending = 0;
    pendingWrites = wgmmaReads = 0;
    for (Barrier &b : barriers)
      b = Barrier();
    barrierEpoch = 1;
    for (unsigned w = 0; w < numWarps; ++w) {
      Warp &wp = warps[w];
      wp.index = w;
      unsigned lanes = std::min(32u, threadsPerBlock - w * 32);
      wp.allMask = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
      wp.readyMask = wp.allMask;
      wp.exitedMask = ~wp.allMask;
      for (unsigned l = 0; l < 32; ++l)
        wp.state[l] = (wp.allMask >> l & 1) ? Ready : Exited;
      if (wp.owned.size() != numRegs)
        wp.owned.assign(numRegs, 0);
      else if (opts.hazards)
        std::fill(wp.owned.begin(), wp.owned.end(), 0);
    }
    unsigned start = 0;
    while (true) {
      bool progressed = false, alive = false;
      for (unsigned k = 0; k < numWarps; ++k) {
        Warp &w = warps[(start + k) % numWarps];
        if (w.exitedMask == 0xffffffffu)
          continue;
        alive = true;
        if (runWarp(w))
          progressed = true;
      }
      if (opts.seed)
        start = static_cast<unsigned>(rng() % numWarps);
      if (!alive) {
        // Work nobody waited for still lands (a TMA into a buffer the block
        // never reads); its errors are still errors.
        while (asyncPending)
          completeOne();
        if (opts.hazards)
          for (const auto &[addr, m] : mbarriers)
            if (m.tx != 0)
              fail("the block ended with the mbarrier at shared offset " +
                   std::to_string(addr) + " holding a tx-count of " +
                   std::to_string(m.tx) +
                   (m.tx < 0 ? ": more bytes arrived than expect_tx announced"
                             : ": expect_tx announced bytes that never "
                               "arrived"));
        break;
      }
      if (progressed)
        continue;
      if (asyncPending) {
        completeOne();
        continue;
      }
      deadlock();
    }
    current = nullptr;
    currentInst = nullptr;
  }

  [[noreturn]] void deadlock() {
    std::ostringstream o;
    o << "deadlock: no warp can run and no asynchronous work is in flight;";
    for (const Warp &w : warps) {
      if (w.exitedMask == 0xffffffffu)
        continue;
      o << " warp " << w.index << ": ";
      if (w.barrierMask)
        o << "bar.sync " << unsigned(w.barrierId[ctz(w.barrierMask)])
          << " (line " << fn.code[w.pcs[ctz(w.barrierMask)]].line << ", "
          << barriers[w.barrierId[ctz(w.barrierMask)]].arrived << " of "
          << barriers[w.barrierId[ctz(w.barrierMask)]].expected
          << " threads arrived)";
      else if (w.blockedMask)
        o << w.waitWhat << " (line " << w.waitLine << ")";
      else if (w.readyMask) {
        // Lanes waiting at a reconvergence point for lanes that never come.
        o << "lanes at lines";
        std::map<uint32_t, uint32_t> at;
        FOR_LANES(w.readyMask, l) at[w.pcs[l]] |= 1u << l;
        for (auto &[pc, lanes] : at)
          o << " " << (pc < fn.code.size() ? fn.code[pc].line : 0) << " (mask "
            << std::hex << lanes << std::dec << ")";
        for (const Warp::Region &r : w.regions)
          o << ", region mask " << std::hex << r.mask << std::dec
            << " meets at line "
            << (r.rpc < fn.code.size() ? fn.code[r.rpc].line : 0);
      }
      o << ";";
    }
    for (const auto &[addr, m] : mbarriers)
      o << " mbarrier at shared offset " << addr << ": phase " << m.phase
        << ", " << m.pending << " of " << m.expected
        << " arrivals pending, tx-count " << m.tx << ";";
    current = nullptr;
    currentInst = nullptr;
    fail(o.str());
  }

  /// Wakes every blocked lane of the block so it retries its wait.
  void wakeAll() {
    for (Warp &w : warps) {
      if (!w.blockedMask)
        continue;
      FOR_LANES(w.blockedMask, l) w.state[l] = Ready;
      w.readyMask |= w.blockedMask;
      w.blockedMask = 0;
      w.uniform = false;
    }
  }

  /// Runs a warp until it blocks, exits or uses its quantum. Returns
  /// whether it executed anything that was not a failed wait.
  bool runWarp(Warp &w) {
    current = &w;
    bool progressed = false;
    unsigned quantum =
        opts.seed ? 1 + static_cast<unsigned>(rng() % 64) : opts.quantum;
    for (unsigned n = 0; n < quantum; ++n) {
      if (!w.readyMask)
        break;
      uint32_t pc, mask;
      if (w.uniform && w.regions.empty()) {
        pc = w.pcs[ctz(w.readyMask)];
        mask = w.readyMask;
      } else {
        uint32_t eligible = w.readyMask & ~parked(w);
        if (!eligible)
          break; // parked lanes wait for blocked ones
        if ((eligible & (eligible - 1)) == 0) { // one lane (a producer)
          pc = w.pcs[ctz(eligible)];
          mask = eligible;
        } else {
          pc = UINT32_MAX;
          for (unsigned l = 0; l < 32; ++l)
            pc = std::min(pc, (eligible >> l & 1) ? w.pcs[l] : UINT32_MAX);
          mask = lanesAt(w, pc) & eligible;
        }
        w.uniform = mask == w.readyMask;
      }
      if (pc >= fn.code.size())
        fail("ran past the end of the kernel (missing ret)");
      if (step(w, pc, mask))
        progressed = true;
      if (opts.maxWarpInstructions &&
          stats.warpInstructions > opts.maxWarpInstructions)
        fail("more than " + std::to_string(opts.maxWarpInstructions) +
             " warp instructions: a runaway loop?");
      // A completion at a random point wakes waiters: that is progress.
      if (opts.seed && asyncPending && rng() % 16 == 0 && completeRandom())
        progressed = true;
    }
    current = nullptr;
    return progressed;
  }

  /// Lanes waiting at the reconvergence point of a region; pops regions
  /// whose lanes have all arrived.
  /// The lanes whose pc equals `pc`, as a mask (a loop over all 32 lanes,
  /// which the compiler vectorizes).
  static uint32_t lanesAt(const Warp &w, uint32_t pc) {
    uint32_t m = 0;
    for (unsigned l = 0; l < 32; ++l)
      m |= static_cast<uint32_t>(w.pcs[l] == pc) << l;
    return m;
  }

  uint32_t parked(Warp &w) {
    while (!w.regions.empty()) {
      const Warp::Region &top = w.regions.back();
      uint32_t live = top.mask & ~w.exitedMask;
      if ((lanesAt(w, top.rpc) & live) != live)
        break;
      w.regions.pop_back();
    }
    uint32_t p = 0;
    for (const Warp::Region &r : w.regions)
      p |= lanesAt(w, r.rpc) & r.mask & w.readyMask;
    return p;
  }

  void advance(Warp &w, uint32_t mask, uint32_t pc) {
    if (mask == 0xffffffffu) {
      for (unsigned l = 0; l < 32; ++l)
        w.pcs[l] = pc + 1;
      return;
    }
    FOR_LANES(mask, l) w.pcs[l] = pc + 1;
  }

  void blockLanes(Warp &w, uint32_t mask, const char *what,
                  const Instruction &in) {
    FOR_LANES(mask, l) w.state[l] = Blocked;
    w.readyMask &= ~mask;
    w.blockedMask |= mask;
    w.waitLine = in.line;
    w.waitWhat = what;
    w.uniform = false;
  }

  void exitLanes(Warp &w, uint32_t mask) {
    FOR_LANES(mask, l) w.state[l] = Exited;
    w.readyMask &= ~mask;
    w.exitedMask |= mask;
    w.uniform = false;
    // Exited threads no longer hold up bar.sync without a count.
    for (unsigned id = 0; id < 16; ++id)
      if (barriers[id].arrived)
        checkBarrier(id);
  }

  unsigned liveThreads() const {
    unsigned n = 0;
    for (const Warp &w : warps)
      n += __builtin_popcount(~w.exitedMask);
    return n;
  }

  void checkBarrier(unsigned id) {
    Barrier &b = barriers[id];
    unsigned expected = b.expected ? b.expected : liveThreads();
    if (b.arrived < expected)
      return;
    for (Warp &w : warps) {
      uint32_t release = 0;
      FOR_LANES(w.barrierMask, l) if (w.barrierId[l] == id) release |= 1u << l;
      FOR_LANES(release, l) {
        w.state[l] = Ready;
        w.pcs[l] += 1;
      }
      w.barrierMask &= ~release;
      w.readyMask |= release;
      if (release)
        w.uniform = false;
    }
    b = Barrier();
    ++barrierEpoch;
  }

  // ---- Asynchronous completion -----------------------------------------

  bool completable(const AsyncOp &a) {
    if (a.done)
      return false;
    if (a.kind != AsyncOp::Kind::Wgmma)
      return true;
    const WgmmaOp &op = wgmmas[a.index];
    if (op.issuedWarps < 4)
      return false;
    for (int k = 0; k < 4; ++k)
      if (warps[op.group * 4 + k].wgmmaCommits <= op.commitIndex)
        return false;
    // A warpgroup's wgmmas complete in issue order: a chain accumulating
    // into the same registers (the first with scale-d 0) means nothing
    // otherwise.
    for (size_t i = 0; i < a.index; ++i)
      if (wgmmas[i].group == op.group && !wgmmas[i].completed)
        return false;
    return true;
  }

  void completeOne() {
    for (AsyncOp &a : async)
      if (completable(a)) {
        complete(a);
        return;
      }
    // In flight but nothing can complete: a wgmma that not all four warps
    // issued or committed.
    for (AsyncOp &a : async)
      if (!a.done && a.kind == AsyncOp::Kind::Wgmma) {
        const WgmmaOp &op = wgmmas[a.index];
        current = nullptr;
        currentInst = op.inst;
        fail("deadlock: a wgmma.mma_async of warpgroup " +
             std::to_string(op.group) + " was issued by " +
             std::to_string(op.issuedWarps) +
             " of its 4 warps (or not committed), and every warp waits");
      }
    fail("internal: asynchronous work pending but none completable");
  }

  bool completeRandom() {
    std::vector<size_t> can;
    for (size_t i = 0; i < async.size(); ++i)
      if (completable(async[i]))
        can.push_back(i);
    if (can.empty())
      return false;
    const Warp *savedWarp = current;
    const Instruction *savedInst = currentInst;
    complete(async[can[rng() % can.size()]]);
    current = savedWarp;
    currentInst = savedInst;
    return true;
  }

  void complete(AsyncOp &a) {
    if (a.kind == AsyncOp::Kind::Tma) {
      // A row alone can wake nobody, unless it completes an mbarrier phase
      // (completeTx wakes waiters then).
      if (!completeTmaRow(tmas[a.index]))
        return;
    }
    a.done = true;
    --asyncPending;
    switch (a.kind) {
    case AsyncOp::Kind::Tma:
      break;
    case AsyncOp::Kind::CpAsync:
      completeCp(cps[a.index]);
      break;
    case AsyncOp::Kind::Wgmma:
      completeWgmma(wgmmas[a.index]);
      break;
    }
    // Drop the finished prefix so the queue stays short.
    while (!async.empty() && async.front().done)
      async.pop_front();
    wakeAll();
  }

  /// Shared bytes an asynchronous copy will write. Tracked in both modes:
  /// with checks a generic access to them is reported, without checks it
  /// waits for them (the copy lands first, as it would within nanoseconds
  /// on a GPU).
  void markPending(uint32_t off, uint64_t n, int delta, bool count = true) {
    for (uint64_t i = 0; i < n; ++i)
      shadow.pendingAsync[off + i] =
          static_cast<uint8_t>(shadow.pendingAsync[off + i] + delta);
    if (!count)
      return;
    if (delta > 0)
      pendingWrites += 1;
    else
      pendingWrites -= 1;
  }

  /// Without checks: completes the asynchronous copies that cover
  /// [off, off + n) so a generic access sees their data.
  void landPending(uint64_t off, unsigned n) {
    auto covered = [&]() {
      for (unsigned i = 0; i < n; ++i)
        if (shadow.pendingAsync[off + i])
          return true;
      return false;
    };
    const Warp *savedWarp = current;
    const Instruction *savedInst = currentInst;
    uint32_t savedLane = currentLane;
    while (covered()) {
      bool any = false;
      for (AsyncOp &a : async)
        if (!a.done && a.kind != AsyncOp::Kind::Wgmma) {
          complete(a);
          any = true;
          break;
        }
      if (!any)
        break;
    }
    current = savedWarp;
    currentInst = savedInst;
    currentLane = savedLane;
  }

  /// Lands the next row of the box (innermost dimension) and signals its
  /// bytes on the mbarrier, as the TMA engine reports progress piecewise:
  /// a phase whose expect_tx is short completes before the copy does.
  /// Returns whether the copy is complete.
  bool completeTmaRow(TmaOp &t) {
    const TensorMap &m = t.map;
    unsigned e = m.elementBytes;
    uint64_t rowBytes = uint64_t(m.box[0]) * e;
    uint64_t row = t.rowsDone++;
    uint32_t rowStart = static_cast<uint32_t>(t.dst + row * rowBytes);
    markPending(rowStart, rowBytes, -1, /*count=*/t.rowsDone == t.rows);
    Swizzle sw = tensorMapSwizzle(m.swizzle);
    // Coordinates of this row's first element.
    int64_t g[5] = {};
    uint64_t rem = row;
    bool rowInside = true;
    uint64_t rowSrc = m.address;
    for (unsigned i = 1; i < m.rank; ++i) {
      uint64_t idx = rem % m.box[i];
      rem /= m.box[i];
      g[i] = int64_t(t.coords[i]) + int64_t(idx);
      if (g[i] < 0 || g[i] >= int64_t(m.dims[i]))
        rowInside = false;
      else
        rowSrc += uint64_t(g[i]) * m.strides[i];
    }
    // The row's in-bounds columns are one contiguous source range: checked
    // against the allocations once.
    int64_t first = std::max<int64_t>(0, -int64_t(t.coords[0]));
    int64_t last =
        std::min<int64_t>(m.box[0], int64_t(m.dims[0]) - int64_t(t.coords[0]));
    if (rowInside && first < last &&
        !dev.contains(rowSrc + uint64_t(int64_t(t.coords[0]) + first) * e,
                      uint64_t(last - first) * e))
      fail("TMA reads global memory outside any allocation (tensor map "
           "address or strides wrong)");
    if (rowStart + rowBytes > sharedSize)
      fail("TMA writes past the block's shared memory");
    if (rowInside && first == 0 && last == m.box[0] && rowBytes % 16 == 0 &&
        rowStart % 16 == 0) {
      // The whole row is inside: swizzling moves 16-byte chunks, so copy
      // chunk by chunk.
      const uint8_t *src = reinterpret_cast<const uint8_t *>(
          rowSrc + uint64_t(int64_t(t.coords[0])) * e);
      for (uint64_t c = 0; c < rowBytes; c += 16) {
        uint32_t dst = swizzleAddress(static_cast<uint32_t>(rowStart + c), sw);
        std::memcpy(shared.data() + dst, src + c, 16);
        if (opts.hazards) {
          std::fill_n(&shadow.genericWriter[dst], 16, uint16_t(0));
          std::fill_n(&shadow.initialized[dst], 16, uint8_t(1));
        }
      }
      completeTx(t.mbar, static_cast<int64_t>(rowBytes));
      return t.rowsDone == t.rows;
    }
    for (unsigned x = 0; x < m.box[0]; ++x) {
      int64_t g0 = int64_t(t.coords[0]) + x;
      bool inside = rowInside && g0 >= 0 && g0 < int64_t(m.dims[0]);
      uint32_t dst = swizzleAddress(rowStart + x * e, sw);
      if (dst + e > sharedSize)
        fail("TMA writes past the block's shared memory");
      if (inside) {
        uint64_t src = rowSrc + uint64_t(g0) * e;
        std::memcpy(shared.data() + dst, reinterpret_cast<void *>(src), e);
      } else if (m.oobFill == 1 &&
                 (m.dataType == kTmaF32 || m.dataType == kTmaF16 ||
                  m.dataType == kTmaBf16 || m.dataType == kTmaF64)) {
        std::memset(shared.data() + dst, 0xff, e); // NaN
      } else {
        std::memset(shared.data() + dst, 0, e);
      }
      if (opts.hazards)
        for (unsigned b = 0; b < e; ++b) {
          shadow.genericWriter[dst + b] = 0; // written by the async proxy
          shadow.initialized[dst + b] = 1;
        }
    }
    completeTx(t.mbar, static_cast<int64_t>(rowBytes));
    return t.rowsDone == t.rows;
  }

  void completeTx(uint32_t mbarAddr, int64_t bytes) {
    auto it = mbarriers.find(mbarAddr);
    if (it == mbarriers.end())
      fail("complete_tx on shared offset " + std::to_string(mbarAddr) +
           ", which holds no initialized mbarrier");
    Mbarrier &m = it->second;
    // The ISA lets the tx-count go below zero for a while (a copy may land
    // before its expect_tx); bytes nobody announces show at block end.
    m.tx -= bytes;
    if (m.tx <= -(1 << 20))
      fail("mbarrier at shared offset " + std::to_string(mbarAddr) +
           ": tx-count below -(2^20-1)");
    uint32_t before = m.phase;
    maybeCompletePhase(m);
    if (m.phase != before)
      wakeAll();
  }

  void maybeCompletePhase(Mbarrier &m) {
    if (m.pending == 0 && m.tx == 0) {
      ++m.phase;
      m.pending = m.expected;
    }
  }

  void completeCp(CpAsyncOp &c) {
    markPending(c.dst, c.size, -1);
    if (c.srcSize && !dev.contains(c.src, c.srcSize)) {
      current = &warps[c.warp];
      fail("cp.async reads global memory outside any allocation", c.lane);
    }
    if (c.srcSize)
      std::memcpy(shared.data() + c.dst, reinterpret_cast<void *>(c.src),
                  c.srcSize);
    std::memset(shared.data() + c.dst + c.srcSize, 0, c.size - c.srcSize);
    if (opts.hazards)
      for (unsigned b = 0; b < c.size; ++b)
        shadow.initialized[c.dst + b] = 1;
    Warp &w = warps[c.warp];
    ThreadAsync &t = w.threads[c.lane];
    if (--t.outstanding[c.group] == 0)
      t.outstanding.erase(c.group);
  }

  void completeWgmma(WgmmaOp &op) {
    op.completed = true;
    const Instruction &in = *op.inst;
    unsigned N = in.shapeN;
    bool f16 = in.srcType == Type::F16;
    auto toF = [&](uint16_t h) { return f16 ? f16ToF32(h) : bf16ToF32(h); };
    // imm-scale-a, imm-scale-b, imm-trans-a, imm-trans-b follow scale-d.
    size_t immBase = 4;
    int scaleA = 1, scaleB = 1, transA = 0, transB = 0;
    auto immAt = [&](size_t i) -> int64_t {
      return i < in.ops.size() && in.ops[i].kind == Operand::Kind::Imm
                 ? in.ops[i].imm
                 : 0;
    };
    if (in.ops.size() > immBase)
      scaleA = static_cast<int>(immAt(immBase));
    if (in.ops.size() > immBase + 1)
      scaleB = static_cast<int>(immAt(immBase + 1));
    if (!op.aFromRegisters && in.ops.size() > immBase + 2)
      transA = static_cast<int>(immAt(immBase + 2));
    if (in.ops.size() > immBase + (op.aFromRegisters ? 2 : 3))
      transB = static_cast<int>(immAt(immBase + (op.aFromRegisters ? 2 : 3)));
    MatrixDescriptor db = decodeDescriptor(op.descB[0]);
    MatrixDescriptor da = decodeDescriptor(op.descA[0]);
    std::vector<float> A(64 * 16), B(16 * N);
    auto smem16 = [&](uint32_t addr) -> uint16_t {
      if (addr + 2 > sharedSize)
        fail("wgmma operand address " + std::to_string(addr) +
             " past the block's shared memory");
      uint16_t v;
      std::memcpy(&v, shared.data() + addr, 2);
      return v;
    };
    for (unsigned n = 0; n < N; ++n)
      for (unsigned k = 0; k < 16; ++k)
        B[k * N + n] = toF(smem16(operandAddress(db, transB, n, k)));
    if (!op.aFromRegisters) {
      for (unsigned m = 0; m < 64; ++m)
        for (unsigned k = 0; k < 16; ++k)
          A[m * 16 + k] = toF(smem16(operandAddress(da, transA, m, k)));
    } else {
      for (unsigned wi = 0; wi < 4; ++wi)
        for (unsigned lane = 0; lane < 32; ++lane)
          for (unsigned r = 0; r < 4; ++r) {
            uint32_t v = op.aRegs[wi][lane * 4 + r];
            for (unsigned h = 0; h < 2; ++h) {
              Coord c = aFragmentCoord(wi, lane, r, h);
              A[c.row * 16 + c.col] = toF(static_cast<uint16_t>(v >> (16 * h)));
            }
          }
    }
    if (scaleA < 0)
      for (float &x : A)
        x = -x;
    if (scaleB < 0)
      for (float &x : B)
        x = -x;
    // A x B for the whole 64xN tile, k in order for every element (rows of
    // B contiguous, so the inner loop runs along n), then added to D.
    std::vector<float> P(64 * N, 0.0f);
    for (unsigned m = 0; m < 64; ++m) {
      float *p = &P[m * N];
      for (unsigned k = 0; k < 16; ++k) {
        float a = A[m * 16 + k];
        const float *b = &B[k * N];
        for (unsigned n = 0; n < N; ++n)
          p[n] += a * b[n];
      }
    }
    const Operand &acc = in.ops[0];
    for (unsigned wi = 0; wi < 4; ++wi) {
      Warp &w = warps[op.group * 4 + wi];
      for (unsigned lane = 0; lane < 32; ++lane)
        for (unsigned i = 0; i < N / 2; ++i) {
          Coord c = accumulatorCoord(wi, lane, i);
          float sum = P[c.row * N + c.col];
          uint64_t &reg = R(w, acc.regs[i], lane);
          float d = op.scaleD[wi] ? asF32(reg) + sum : sum;
          reg = fromF32(d);
        }
    }
  }

  // ---- Instructions --------------------------------------------------------

  /// Executes `pc` for the lanes in `mask`. Returns false when every lane
  /// blocked without doing anything.
  bool step(Warp &w, uint32_t pc, uint32_t mask) {
    const Instruction &in = fn.code[pc];
    currentInst = &in;
    currentLane = ctz(mask);
    ++stats.warpInstructions;
    if (opts.trace)
      std::fprintf(stderr,
                   "kiln-emu trace: %s block %u,%u,%u warp %u mask %08x "
                   "line %u %s\n",
                   fn.name.c_str(), blockId[0], blockId[1], blockId[2], w.index,
                   mask, in.line, in.form.c_str());
    uint32_t active = mask;
    if (in.guardReg >= 0) {
      active = 0;
      FOR_LANES(mask, l) {
        bool p = R(w, in.guardReg, l) != 0;
        if (p != in.guardNeg)
          active |= 1u << l;
      }
    }
    stats.threadInstructions += __builtin_popcount(active);
    if (w.ownedCount && opts.hazards && in.op != Op::WgmmaMma &&
        in.op != Op::WgmmaWait && in.op != Op::WgmmaCommit &&
        in.op != Op::WgmmaFence)
      checkOwned(w, in);
    switch (in.op) {
    case Op::Bra: {
      uint32_t target = static_cast<uint32_t>(in.ops[0].imm);
      FOR_LANES(mask, l) w.pcs[l] = (active >> l & 1) ? target : pc + 1;
      if (active != mask && active) {
        w.uniform = false;
        uint32_t rpc = fn.reconvergence[pc];
        bool nested = !w.regions.empty() && w.regions.back().rpc == rpc &&
                      (w.regions.back().mask & mask) == mask;
        if (rpc < fn.code.size() && !nested)
          w.regions.push_back({rpc, mask});
      }
      return true;
    }
    case Op::Ret:
    case Op::Exit:
      advance(w, mask & ~active, pc);
      exitLanes(w, active);
      if (active != mask)
        w.uniform = false;
      return true;
    case Op::Trap:
      if (active)
        fail("trap executed");
      advance(w, mask, pc);
      return true;
    case Op::BarSync:
    case Op::BarArrive:
      return barrier(w, in, pc, mask, active);
    case Op::MbarTryWait:
    case Op::MbarTestWait:
      return mbarWait(w, in, pc, mask, active);
    case Op::WgmmaWait:
    case Op::CpAsyncWait:
      return asyncWait(w, in, pc, mask, active);
    default:
      break;
    }
    if (active)
      execute(w, in, active);
    advance(w, mask, pc);
    return true;
  }

  void checkOwned(Warp &w, const Instruction &in) {
    auto check = [&](int reg) {
      if (reg >= 0 && w.owned[reg])
        fail("register " + fn.registers[reg].name +
             " belongs to a wgmma in flight (accumulator or A fragment): it "
             "may not be read or written before wgmma.wait_group retires it");
    };
    for (const Operand &o : in.ops) {
      if (o.kind == Operand::Kind::Reg || o.kind == Operand::Kind::Addr)
        check(o.reg);
      for (int32_t r : o.regs)
        check(r >= 0 ? r : -1);
    }
    check(in.guardReg);
  }

  bool barrier(Warp &w, const Instruction &in, uint32_t pc, uint32_t mask,
               uint32_t active) {
    advance(w, mask & ~active, pc);
    if (!active)
      return true;
    unsigned id = in.ops.empty()
                      ? 0
                      : static_cast<unsigned>(get(w, in.ops[0], ctz(active)));
    if (id > 15)
      fail("barrier id " + std::to_string(id) + " outside 0..15");
    unsigned count = 0;
    if (in.ops.size() > 1)
      count = static_cast<unsigned>(get(w, in.ops[1], ctz(active)));
    if (count && count % 32)
      fail("bar.sync thread count " + std::to_string(count) +
           " is not a multiple of 32");
    Barrier &b = barriers[id];
    if (b.arrived && b.expected != count)
      fail("bar.sync " + std::to_string(id) +
           " used with different thread "
           "counts at once");
    b.expected = count;
    b.arrived += __builtin_popcount(active);
    if (in.op == Op::BarArrive) {
      advance(w, active, pc);
    } else {
      FOR_LANES(active, l) {
        w.state[l] = AtBarrier;
        w.barrierId[l] = static_cast<uint8_t>(id);
      }
      w.readyMask &= ~active;
      w.barrierMask |= active;
      w.uniform = false;
    }
    checkBarrier(id);
    return true;
  }

  Mbarrier &mbarrierAt(const Warp &w, const Instruction &in, const Operand &o,
                       unsigned lane, uint32_t &addr) {
    return mbarrierAt(w, in.space, o, lane, addr);
  }
  Mbarrier &mbarrierAt(const Warp &w, Space space, const Operand &o,
                       unsigned lane, uint32_t &addr) {
    uint64_t a = address(w, o, lane);
    if (space == Space::Generic) {
      if (a < kSharedWindow || a >= kSharedWindow + kWindowSize)
        fail("mbarrier operand is not a shared-memory address", lane);
      a -= kSharedWindow;
    }
    if (a % 8 || a + 8 > sharedSize)
      fail("mbarrier address " + std::to_string(a) +
               " is not an 8-byte aligned shared-memory location",
           lane);
    addr = static_cast<uint32_t>(a);
    auto it = mbarriers.find(addr);
    if (it == mbarriers.end())
      fail("mbarrier at shared offset " + std::to_string(addr) +
               " used before mbarrier.init",
           lane);
    return it->second;
  }

  bool mbarWait(Warp &w, const Instruction &in, uint32_t pc, uint32_t mask,
                uint32_t active) {
    // mbarrier.try_wait[.parity] p, [addr], parity-or-state[, hint]
    advance(w, mask & ~active, pc);
    uint32_t waiting = 0;
    FOR_LANES(active, l) {
      uint32_t addr;
      Mbarrier &m = mbarrierAt(w, in, in.ops[1], l, addr);
      uint64_t arg = get(w, in.ops[2], l);
      bool done;
      if (in.uni) // parity: the phase with this parity has completed
        done = (m.phase & 1) != (arg & 1);
      else // state token from arrive: its phase has completed
        done = m.phase != static_cast<uint32_t>(arg);
      if (done || in.op == Op::MbarTestWait) {
        set(w, in.ops[0], l, done ? 1 : 0);
        w.pcs[l] = pc + 1;
      } else {
        waiting |= 1u << l;
      }
    }
    if (waiting)
      blockLanes(w, waiting, "mbarrier.try_wait", in);
    return waiting != active || !active;
  }

  bool asyncWait(Warp &w, const Instruction &in, uint32_t pc, uint32_t mask,
                 uint32_t active) {
    advance(w, mask & ~active, pc);
    if (!active)
      return true;
    unsigned n = in.ops.empty() ? 0 : static_cast<unsigned>(in.ops[0].imm);
    if (in.op == Op::WgmmaWait) {
      if (active != w.allMask)
        fail("wgmma.wait_group.sync.aligned executed by a partial warp");
      unsigned g = w.index / 4;
      // Every group but the newest n must be complete (empty groups count
      // as groups).
      unsigned limit = w.wgmmaCommits > n ? w.wgmmaCommits - n : 0;
      for (const WgmmaOp &op : wgmmas)
        if (op.group == g && op.commitIndex < limit && !op.completed) {
          blockLanes(w, active, "wgmma.wait_group", in);
          return false;
        }
      for (WgmmaOp &op : wgmmas) {
        if (op.group != g || op.commitIndex >= limit || !op.completed)
          continue;
        if (op.retiredWarps & (1 << (w.index % 4)))
          continue;
        // The first warp that waits for it knows the whole MMA is done:
        // its operands are free from then on.
        if (!op.retiredWarps)
          for (auto &r : op.readRanges)
            markWgmmaRead(r.first, r.second, -1);
        op.retiredWarps |= 1 << (w.index % 4);
        releaseOwnership(w, op);
      }
      advance(w, active, pc);
      return true;
    }
    // cp.async.wait_group n / wait_all, per thread.
    uint32_t waiting = 0;
    FOR_LANES(active, l) {
      // Every committed group but the newest n must be complete; wait_all
      // waits for uncommitted copies too.
      bool pending = false;
      if (!w.threads.empty()) {
        ThreadAsync &t = w.threads[l];
        uint32_t limit = in.sub            ? UINT32_MAX
                         : t.openGroup > n ? t.openGroup - n
                                           : 0;
        for (auto &[group, left] : t.outstanding)
          pending = pending || (left > 0 && group < limit);
      }
      if (pending)
        waiting |= 1u << l;
      else
        w.pcs[l] = pc + 1;
    }
    if (waiting)
      blockLanes(w, waiting, "cp.async.wait_group", in);
    return waiting != active;
  }

  void releaseOwnership(Warp &w, const WgmmaOp &op) {
    if (!opts.hazards)
      return;
    for (int32_t r : op.inst->ops[0].regs)
      if (r >= 0 && w.owned[r]) {
        --w.owned[r];
        --w.ownedCount;
      }
    if (op.aFromRegisters)
      for (int32_t r : op.inst->ops[1].regs)
        if (r >= 0 && w.owned[r]) {
          --w.owned[r];
          --w.ownedCount;
        }
  }

  void markWgmmaRead(uint32_t off, uint32_t n, int delta) {
    if (!opts.hazards)
      return;
    for (uint32_t i = 0; i < n; ++i)
      shadow.wgmmaReading[off + i] =
          static_cast<uint8_t>(shadow.wgmmaReading[off + i] + delta);
    if (delta > 0)
      ++wgmmaReads;
    else
      --wgmmaReads;
  }

  /// A source operand seen by all lanes at once: a register's 32 slots or
  /// one immediate (special registers and symbols are materialized), so the
  /// per-lane loops index an array instead of decoding the operand.
  struct View {
    const uint64_t *p = nullptr;
    uint64_t imm = 0;
    bool neg = false;
    uint64_t operator[](unsigned lane) const {
      uint64_t v = p ? p[lane] : imm;
      return neg ? !v : v;
    }
  };
  uint64_t scratch[6][32];

  View view(const Warp &w, const Operand &o, unsigned slot, uint32_t active) {
    View v;
    switch (o.kind) {
    case Operand::Kind::Reg:
      v.p = &regs[(size_t(w.index) * numRegs + o.reg) * 32];
      v.neg = o.negate;
      return v;
    case Operand::Kind::Imm:
      v.imm = static_cast<uint64_t>(o.imm);
      return v;
    case Operand::Kind::Special:
    case Operand::Kind::Symbol:
      FOR_LANES(active, l) scratch[slot][l] = getSlow(w, o, l);
      v.p = scratch[slot];
      return v;
    default:
      return v;
    }
  }

  void execute(Warp &w, const Instruction &in, uint32_t active);
  void executeMemory(Warp &w, const Instruction &in, uint32_t active);
  void executeAsync(Warp &w, const Instruction &in, uint32_t active);
  void executeWgmma(Warp &w, const Instruction &in, uint32_t active);
  void executeCvt(Warp &w, const Instruction &in, uint32_t active);
  void executeSpecialLanes(Warp &w, const Instruction &in, uint32_t active);
  void vprintf(Warp &w, const Instruction &in, unsigned lane);
};

// ---- ALU ----------------------------------------------------------------

namespace {

bool compare(Cmp c, Type t, uint64_t a, uint64_t b) {
  unsigned n = typeBytes(t);
  if (t == Type::F32 || t == Type::F64) {
    double x = t == Type::F32 ? asF32(a) : asF64(a);
    double y = t == Type::F32 ? asF32(b) : asF64(b);
    bool unord = std::isnan(x) || std::isnan(y);
    switch (c) {
    case Cmp::Eq:
      return !unord && x == y;
    case Cmp::Ne:
      return !unord && x != y;
    case Cmp::Lt:
      return !unord && x < y;
    case Cmp::Le:
      return !unord && x <= y;
    case Cmp::Gt:
      return !unord && x > y;
    case Cmp::Ge:
      return !unord && x >= y;
    case Cmp::Equ:
      return unord || x == y;
    case Cmp::Neu:
      return unord || x != y;
    case Cmp::Ltu:
      return unord || x < y;
    case Cmp::Leu:
      return unord || x <= y;
    case Cmp::Gtu:
      return unord || x > y;
    case Cmp::Geu:
      return unord || x >= y;
    case Cmp::Num:
      return !unord;
    case Cmp::Nan:
      return unord;
    default:
      return false;
    }
  }
  if (isSigned(t)) {
    int64_t x = signExtend(a, n), y = signExtend(b, n);
    switch (c) {
    case Cmp::Eq:
      return x == y;
    case Cmp::Ne:
      return x != y;
    case Cmp::Lt:
      return x < y;
    case Cmp::Le:
      return x <= y;
    case Cmp::Gt:
      return x > y;
    case Cmp::Ge:
      return x >= y;
    default:
      break;
    }
  }
  uint64_t x = truncTo(a, n), y = truncTo(b, n);
  switch (c) {
  case Cmp::Eq:
    return x == y;
  case Cmp::Ne:
    return x != y;
  case Cmp::Lt:
  case Cmp::Lo:
    return x < y;
  case Cmp::Le:
  case Cmp::Ls:
    return x <= y;
  case Cmp::Gt:
  case Cmp::Hi:
    return x > y;
  case Cmp::Ge:
  case Cmp::Hs:
    return x >= y;
  default:
    return false;
  }
}

float applyFtz(const Instruction &in, float x) {
  return in.ftz ? flushF32(x) : x;
}

} // namespace

void Interpreter::execute(Warp &w, const Instruction &in, uint32_t active) {
  const Type t = in.type;
  const unsigned n = typeBytes(t);
  const auto &o = in.ops;
  const View v1 = o.size() > 1 ? view(w, o[1], 1, active) : View();
  const View v2 = o.size() > 2 ? view(w, o[2], 2, active) : View();
  const View v3 = o.size() > 3 ? view(w, o[3], 3, active) : View();
  const View v4 = o.size() > 4 ? view(w, o[4], 4, active) : View();
  switch (in.op) {
  case Op::Add:
  case Op::Sub:
  case Op::Mul:
  case Op::Min:
  case Op::Max:
  case Op::Div:
  case Op::Rem:
  case Op::Copysign: {
    if (t == Type::F32) {
      FOR_LANES(active, l) {
        float a = applyFtz(in, asF32(v1[l]));
        float b = applyFtz(in, asF32(v2[l]));
        float r = 0;
        switch (in.op) {
        case Op::Add:
          r = a + b;
          break;
        case Op::Sub:
          r = a - b;
          break;
        case Op::Mul:
          r = a * b;
          break;
        case Op::Div:
          r = a / b;
          break;
        case Op::Copysign:
          r = std::copysign(b, a);
          break;
        case Op::Min:
        case Op::Max:
          if (std::isnan(a) || std::isnan(b)) {
            if (in.nanMode || (std::isnan(a) && std::isnan(b)))
              r = asF32(0x7fffffff);
            else
              r = std::isnan(a) ? b : a;
          } else if (a == b) { // -0 < +0 for min/max
            r = in.op == Op::Min ? (std::signbit(a) ? a : b)
                                 : (std::signbit(a) ? b : a);
          } else {
            r = in.op == Op::Min ? std::min(a, b) : std::max(a, b);
          }
          break;
        default:
          fail("unsupported f32 operation");
        }
        if (in.sat)
          r = std::isnan(r) ? 0.0f : std::min(1.0f, std::max(0.0f, r));
        set(w, o[0], l, fromF32(applyFtz(in, r)));
      }
    } else if (t == Type::F64) {
      FOR_LANES(active, l) {
        double a = asF64(v1[l]), b = asF64(v2[l]), r = 0;
        switch (in.op) {
        case Op::Add:
          r = a + b;
          break;
        case Op::Sub:
          r = a - b;
          break;
        case Op::Mul:
          r = a * b;
          break;
        case Op::Div:
          r = a / b;
          break;
        case Op::Min:
          r = std::isnan(a) ? b : std::isnan(b) ? a : std::min(a, b);
          break;
        case Op::Max:
          r = std::isnan(a) ? b : std::isnan(b) ? a : std::max(a, b);
          break;
        default:
          fail("unsupported f64 operation");
        }
        set(w, o[0], l, fromF64(r));
      }
    } else if (isFloat(t)) {
      fail("half-precision arithmetic is not modeled");
    } else {
      bool s = isSigned(t);
      FOR_LANES(active, l) {
        uint64_t a = v1[l], b = v2[l], r = 0;
        switch (in.op) {
        case Op::Add:
          r = a + b;
          break;
        case Op::Sub:
          r = a - b;
          break;
        case Op::Mul:
          r = a * b;
          break;
        case Op::Div:
        case Op::Rem:
          if (truncTo(b, n) == 0) {
            r = in.op == Op::Div ? truncTo(~0ull, n) : a; // ISA: unspecified
          } else if (s) {
            int64_t x = signExtend(a, n), y = signExtend(b, n);
            r = in.op == Op::Div ? uint64_t(x / y) : uint64_t(x % y);
          } else {
            uint64_t x = truncTo(a, n), y = truncTo(b, n);
            r = in.op == Op::Div ? x / y : x % y;
          }
          break;
        case Op::Min:
        case Op::Max:
          if (s) {
            int64_t x = signExtend(a, n), y = signExtend(b, n);
            r = uint64_t(in.op == Op::Min ? std::min(x, y) : std::max(x, y));
          } else {
            uint64_t x = truncTo(a, n), y = truncTo(b, n);
            r = in.op == Op::Min ? std::min(x, y) : std::max(x, y);
          }
          break;
        default:
          fail("unsupported integer operation");
        }
        if (in.sat && t == Type::S32) {
          int64_t x = signExtend(a, 4), y = signExtend(b, 4);
          int64_t full = in.op == Op::Add   ? x + y
                         : in.op == Op::Sub ? x - y
                                            : x * y;
          full =
              std::min<int64_t>(INT32_MAX, std::max<int64_t>(INT32_MIN, full));
          r = uint64_t(full);
        }
        set(w, o[0], l, truncTo(r, n));
      }
    }
    return;
  }
  case Op::MulHi:
  case Op::MulWide:
  case Op::MadHi:
  case Op::MadWide: {
    bool s = isSigned(t);
    bool mad = in.op == Op::MadHi || in.op == Op::MadWide;
    bool wide = in.op == Op::MulWide || in.op == Op::MadWide;
    FOR_LANES(active, l) {
      uint64_t a = v1[l], b = v2[l], r;
      if (n == 8) {
        __int128 p = s ? __int128(signExtend(a, 8)) * signExtend(b, 8)
                       : __int128((unsigned __int128)a * b);
        if (!s)
          p = (__int128)((unsigned __int128)a * (unsigned __int128)b);
        r = uint64_t(s ? (p >> 64) : (__int128)((unsigned __int128)p >> 64));
        if (wide)
          fail("mul.wide of 64-bit operands does not exist");
      } else {
        int64_t p = s ? signExtend(a, n) * signExtend(b, n)
                      : int64_t(truncTo(a, n) * truncTo(b, n));
        r = wide ? uint64_t(p) : uint64_t(p >> (8 * n));
        r = truncTo(r, wide ? 2 * n : n);
      }
      if (mad)
        r += v3[l];
      set(w, o[0], l, truncTo(r, wide ? 2 * n : n));
    }
    return;
  }
  case Op::Mad:
  case Op::Fma: {
    if (t == Type::F32) {
      FOR_LANES(active, l) {
        float a = applyFtz(in, asF32(v1[l]));
        float b = applyFtz(in, asF32(v2[l]));
        float c = applyFtz(in, asF32(v3[l]));
        float r = std::fma(a, b, c);
        if (in.sat)
          r = std::isnan(r) ? 0.0f : std::min(1.0f, std::max(0.0f, r));
        set(w, o[0], l, fromF32(applyFtz(in, r)));
      }
    } else if (t == Type::F64) {
      FOR_LANES(active, l)
      set(w, o[0], l,
          fromF64(std::fma(asF64(v1[l]), asF64(v2[l]), asF64(v3[l]))));
    } else if (isFloat(t)) {
      fail("half-precision arithmetic is not modeled");
    } else {
      FOR_LANES(active, l)
      set(w, o[0], l, truncTo(v1[l] * v2[l] + v3[l], n));
    }
    return;
  }
  case Op::Neg:
  case Op::Abs: {
    FOR_LANES(active, l) {
      uint64_t a = v1[l];
      uint64_t r;
      if (t == Type::F32) {
        float x = applyFtz(in, asF32(a));
        r = fromF32(in.op == Op::Neg ? -x : std::fabs(x));
      } else if (t == Type::F64) {
        r = fromF64(in.op == Op::Neg ? -asF64(a) : std::fabs(asF64(a)));
      } else {
        int64_t x = signExtend(a, n);
        r = truncTo(uint64_t(in.op == Op::Neg ? -x : (x < 0 ? -x : x)), n);
      }
      set(w, o[0], l, r);
    }
    return;
  }
  case Op::Not:
  case Op::And:
  case Op::Or:
  case Op::Xor: {
    bool pred = t == Type::Pred;
    FOR_LANES(active, l) {
      uint64_t a = v1[l], r;
      if (in.op == Op::Not) {
        r = pred ? !a : ~a;
      } else {
        uint64_t b = v2[l];
        r = in.op == Op::And ? (a & b) : in.op == Op::Or ? (a | b) : (a ^ b);
      }
      set(w, o[0], l, pred ? (r & 1) : truncTo(r, n));
    }
    return;
  }
  case Op::Shl:
  case Op::Shr: {
    bool s = isSigned(t);
    unsigned bits = 8 * n;
    FOR_LANES(active, l) {
      uint64_t a = v1[l];
      uint64_t sh = truncTo(v2[l], 4);
      uint64_t r;
      if (in.op == Op::Shl)
        r = sh >= bits ? 0 : a << sh;
      else if (s)
        r = uint64_t(signExtend(a, n) >> std::min<uint64_t>(sh, bits - 1));
      else
        r = sh >= bits ? 0 : truncTo(a, n) >> sh;
      set(w, o[0], l, truncTo(r, n));
    }
    return;
  }
  case Op::Bfe: {
    bool s = isSigned(t);
    unsigned msb = 8 * n - 1;
    FOR_LANES(active, l) {
      uint64_t a = v1[l];
      unsigned pos = v2[l] & 0xff, len = v3[l] & 0xff;
      uint64_t sbit = 0;
      if (s && len)
        sbit = (a >> std::min(pos + len - 1, msb)) & 1;
      uint64_t r = 0;
      for (unsigned i = 0; i <= msb; ++i) {
        uint64_t bit =
            (i < len && pos + i <= msb) ? (a >> (pos + i)) & 1 : sbit;
        r |= bit << i;
      }
      set(w, o[0], l, r);
    }
    return;
  }
  case Op::Bfi: {
    unsigned msb = 8 * n - 1;
    FOR_LANES(active, l) {
      uint64_t a = v1[l], b = v2[l];
      unsigned pos = v3[l] & 0xff, len = v4[l] & 0xff;
      uint64_t r = b;
      for (unsigned i = 0; i < len && pos + i <= msb; ++i)
        r = (r & ~(1ull << (pos + i))) | (((a >> i) & 1) << (pos + i));
      set(w, o[0], l, truncTo(r, n));
    }
    return;
  }
  case Op::Popc:
  case Op::Clz:
  case Op::Brev: {
    FOR_LANES(active, l) {
      uint64_t a = truncTo(v1[l], n), r = 0;
      if (in.op == Op::Popc)
        r = __builtin_popcountll(a);
      else if (in.op == Op::Clz)
        r = a ? __builtin_clzll(a) - (64 - 8 * n) : 8 * n;
      else
        for (unsigned i = 0; i < 8 * n; ++i)
          r |= ((a >> i) & 1) << (8 * n - 1 - i);
      set(w, o[0], l, r);
    }
    return;
  }
  case Op::Selp: {
    FOR_LANES(active, l)
    set(w, o[0], l, v3[l] ? v1[l] : v2[l]);
    return;
  }
  case Op::Setp: {
    FOR_LANES(active, l) {
      bool r = compare(in.cmp, t, v1[l], v2[l]);
      bool q = !r;
      if (in.boolOp) {
        bool c = v3[l] != 0;
        auto combine = [&](bool x) {
          return in.boolOp == 1   ? (x && c)
                 : in.boolOp == 2 ? (x || c)
                                  : (x != c);
        };
        r = combine(r);
        q = combine(q);
      }
      set(w, o[0], l, r);
      if (!o[0].items.empty())
        set(w, o[0].items[0], l, q);
    }
    return;
  }
  case Op::Testp: {
    FOR_LANES(active, l) {
      double x = t == Type::F32 ? asF32(v1[l]) : asF64(v1[l]);
      bool r = in.sub == 0   ? std::isfinite(x)
               : in.sub == 1 ? std::isinf(x)
               : in.sub == 2 ? !std::isnan(x)
                             : std::isnan(x);
      set(w, o[0], l, r);
    }
    return;
  }
  case Op::Mov: {
    if (o[0].kind == Operand::Kind::Vec || o[1].kind == Operand::Kind::Vec) {
      // mov.b64 {lo, hi}, x  /  mov.b64 x, {lo, hi}: pack/unpack halves.
      if (o[1].kind == Operand::Kind::Vec) {
        unsigned part = n / o[1].regs.size();
        FOR_LANES(active, l) {
          uint64_t v = 0;
          for (size_t i = 0; i < o[1].regs.size(); ++i)
            v |= truncTo(R(w, o[1].regs[i], l), part) << (8 * part * i);
          set(w, o[0], l, v);
        }
      } else {
        unsigned part = n / o[0].regs.size();
        FOR_LANES(active, l) {
          uint64_t v = v1[l];
          for (size_t i = 0; i < o[0].regs.size(); ++i)
            if (o[0].regs[i] >= 0)
              R(w, o[0].regs[i], l) = truncTo(v >> (8 * part * i), part);
        }
      }
      return;
    }
    FOR_LANES(active, l) {
      uint64_t v = v1[l];
      set(w, o[0], l, t == Type::Pred ? (v != 0) : truncTo(v, n));
    }
    return;
  }
  case Op::Cvt:
    executeCvt(w, in, active);
    return;
  case Op::Cvta:
  case Op::CvtaTo: {
    uint64_t window =
        in.space == Space::Shared || in.space == Space::SharedCluster
            ? kSharedWindow
        : in.space == Space::Local ? kLocalWindow
        : in.space == Space::Param ? kParamWindow
                                   : 0;
    FOR_LANES(active, l) {
      uint64_t a = v1[l];
      if (in.op == Op::Cvta) {
        set(w, o[0], l, a + window);
      } else {
        if (window && (a < window || a >= window + kWindowSize))
          fail("cvta.to." +
                   std::string(in.space == Space::Local ? "local" : "shared") +
                   " of an address outside that window",
               l);
        set(w, o[0], l, truncTo(a - window, n));
      }
    }
    return;
  }
  case Op::Ex2:
  case Op::Lg2:
  case Op::Sin:
  case Op::Cos:
  case Op::Rsqrt:
  case Op::Rcp:
  case Op::Sqrt:
  case Op::Tanh: {
    FOR_LANES(active, l) {
      if (t == Type::F64) {
        double x = asF64(v1[l]), r;
        switch (in.op) {
        case Op::Rcp:
          r = 1.0 / x;
          break;
        case Op::Sqrt:
          r = std::sqrt(x);
          break;
        case Op::Rsqrt:
          r = 1.0 / std::sqrt(x);
          break;
        default:
          fail("unsupported f64 special function");
        }
        set(w, o[0], l, fromF64(r));
        continue;
      }
      float x = applyFtz(in, asF32(v1[l])), r;
      switch (in.op) {
      case Op::Ex2:
        r = std::exp2(x);
        break;
      case Op::Lg2:
        r = std::log2(x);
        break;
      case Op::Sin:
        r = std::sin(x);
        break;
      case Op::Cos:
        r = std::cos(x);
        break;
      case Op::Rsqrt:
        r = 1.0f / std::sqrt(x);
        break;
      case Op::Rcp:
        r = 1.0f / x;
        break;
      case Op::Sqrt:
        r = std::sqrt(x);
        break;
      default:
        r = std::tanh(x);
        break;
      }
      set(w, o[0], l, fromF32(applyFtz(in, r)));
    }
    return;
  }
  case Op::Ld:
  case Op::St:
  case Op::Atom:
  case Op::Red:
  case Op::Prefetch:
  case Op::PrefetchTensormap:
    executeMemory(w, in, active);
    return;
  case Op::Shfl:
  case Op::Vote:
  case Op::ElectSync:
  case Op::Call:
    executeSpecialLanes(w, in, active);
    return;
  case Op::Membar:
  case Op::Nop:
  case Op::FenceMbarInit:
    return;
  case Op::FenceProxyAsync:
    FOR_LANES(active, l)++ fenceCount[w.index * 32 + l];
    return;
  case Op::Setmaxnreg: {
    if (active != w.allMask)
      fail("setmaxnreg.sync.aligned executed by a partial warp");
    uint64_t v = o[0].imm;
    if (v < 24 || v > 256 || v % 8)
      fail("setmaxnreg " + std::to_string(v) +
           ": the count must be a multiple of 8 in 24..256");
    return;
  }
  default:
    executeAsync(w, in, active);
    return;
  }
}

void Interpreter::executeCvt(Warp &w, const Instruction &in, uint32_t active) {
  const Type d = in.type, s = in.srcType;
  const auto &o = in.ops;
  const View v1 = o.size() > 1 ? view(w, o[1], 1, active) : View();
  const View v2 = o.size() > 2 ? view(w, o[2], 2, active) : View();
  const View v3 = o.size() > 3 ? view(w, o[3], 3, active) : View();
  const View v4 = o.size() > 4 ? view(w, o[4], 4, active) : View();
  unsigned dn = typeBytes(d), sn = typeBytes(s);
  auto readFloat = [&](uint64_t v) -> double {
    switch (s) {
    case Type::F32:
      return asF32(v);
    case Type::F64:
      return asF64(v);
    case Type::BF16:
      return bf16ToF32(static_cast<uint16_t>(v));
    case Type::F16:
      return f16ToF32(static_cast<uint16_t>(v));
    default:
      return 0;
    }
  };
  auto roundInt = [&](double x) -> double {
    switch (in.rounding) {
    case 1:
      return std::nearbyint(x);
    case 2:
      return std::trunc(x);
    case 3:
      return std::floor(x);
    case 4:
      return std::ceil(x);
    default:
      return std::trunc(x); // float -> int defaults to .rzi
    }
  };
  FOR_LANES(active, l) {
    uint64_t v = v1[l], r = 0;
    if (d == Type::BF16x2 || d == Type::F16x2) {
      // The first source goes to the upper half.
      float a = asF32(v), b = asF32(v2[l]);
      if (in.nanMode) {
        a = std::isnan(a) ? a : std::max(a, 0.0f);
        b = std::isnan(b) ? b : std::max(b, 0.0f);
      }
      uint16_t hi = d == Type::BF16x2 ? f32ToBf16(a) : f32ToF16(a);
      uint16_t lo = d == Type::BF16x2 ? f32ToBf16(b) : f32ToF16(b);
      r = (uint32_t(hi) << 16) | lo;
    } else if (isFloat(s) && isFloat(d)) {
      double x = readFloat(v);
      if (in.sub) // cvt.rni.f32.f32: round to an integral value
        x = roundInt(x);
      if (in.ftz && s == Type::F32)
        x = flushF32(static_cast<float>(x));
      if (in.sat)
        x = std::isnan(x) ? 0 : std::min(1.0, std::max(0.0, x));
      switch (d) {
      case Type::F32: {
        float f = static_cast<float>(x); // rn (the host's mode)
        if (in.ftz)
          f = flushF32(f);
        r = fromF32(f);
        break;
      }
      case Type::F64:
        r = fromF64(x);
        break;
      case Type::BF16:
        r = f32ToBf16(static_cast<float>(x));
        break;
      case Type::F16:
        r = f32ToF16(static_cast<float>(x));
        break;
      default:
        fail("unsupported cvt");
      }
      if (s == Type::F64 && d == Type::BF16) // double rounding is not exact
        fail("cvt.bf16.f64 is not modeled");
    } else if (isFloat(s)) { // float -> int: round, saturate, NaN -> 0
      double x = readFloat(v);
      if (in.ftz && s == Type::F32)
        x = flushF32(static_cast<float>(x));
      x = roundInt(x);
      if (std::isnan(x)) {
        r = 0;
      } else if (isSigned(d)) {
        double lo = -std::ldexp(1.0, 8 * dn - 1), hi = -lo - 1;
        int64_t iv = x <= lo ? int64_t(lo) : x >= hi ? int64_t(hi) : int64_t(x);
        if (dn == 8 && x >= 9.2233720368547758e18)
          iv = INT64_MAX;
        r = truncTo(uint64_t(iv), dn);
      } else {
        double hi = std::ldexp(1.0, 8 * dn) - 1;
        uint64_t uv = x <= 0    ? 0
                      : x >= hi ? (dn == 8 ? UINT64_MAX : uint64_t(hi))
                                : uint64_t(x);
        r = uv;
      }
    } else if (isFloat(d)) { // int -> float
      double x =
          isSigned(s) ? double(signExtend(v, sn)) : double(truncTo(v, sn));
      if (sn == 8) { // 64-bit integers do not fit a double exactly
        if (isSigned(s)) {
          int64_t iv = signExtend(v, 8);
          if (d == Type::F32)
            r = fromF32(static_cast<float>(iv));
          else
            r = fromF64(static_cast<double>(iv));
        } else {
          if (d == Type::F32)
            r = fromF32(static_cast<float>(v));
          else
            r = fromF64(static_cast<double>(v));
        }
        if (d == Type::F32 || d == Type::F64) {
          set(w, o[0], l, r);
          continue;
        }
      }
      switch (d) {
      case Type::F32:
        r = fromF32(static_cast<float>(x));
        break;
      case Type::F64:
        r = fromF64(x);
        break;
      case Type::BF16:
        r = f32ToBf16(static_cast<float>(x));
        break;
      case Type::F16:
        r = f32ToF16(static_cast<float>(x));
        break;
      default:
        fail("unsupported cvt");
      }
    } else { // int -> int
      int64_t x = isSigned(s) ? signExtend(v, sn) : int64_t(truncTo(v, sn));
      if (in.sat) {
        if (isSigned(d)) {
          int64_t lo = dn == 8 ? INT64_MIN : -(int64_t(1) << (8 * dn - 1));
          int64_t hi = dn == 8 ? INT64_MAX : (int64_t(1) << (8 * dn - 1)) - 1;
          x = std::min(hi, std::max(lo, x));
        } else {
          uint64_t hi = dn == 8 ? UINT64_MAX : (1ull << (8 * dn)) - 1;
          if (isSigned(s) && x < 0)
            x = 0;
          else if (uint64_t(x) > hi)
            x = int64_t(hi);
        }
      }
      r = truncTo(uint64_t(x), dn);
      // A destination register wider than the type gets the extension.
      if (isSigned(d) && dn < 8)
        r = truncTo(uint64_t(signExtend(r, dn)),
                    typeBytes(fn.registers[o[0].reg].type));
    }
    set(w, o[0], l, r);
  }
}

void Interpreter::executeMemory(Warp &w, const Instruction &in,
                                uint32_t active) {
  const auto &o = in.ops;
  if (in.op == Op::Prefetch)
    return;
  if (in.op == Op::PrefetchTensormap) {
    FOR_LANES(active, l) {
      uint64_t a = address(w, o[0], l);
      Resolved r = resolve(Space::Generic, a, 128, 64, l, false);
      TensorMap m;
      std::memcpy(&m, r.ptr, sizeof m);
      if (m.magic != kTensorMapMagic)
        fail("prefetch.tensormap of memory that holds no tensor map", l);
    }
    return;
  }
  const unsigned elem = typeBytes(in.type);
  if (in.op == Op::Ld || in.op == Op::St) {
    const Operand &addrOp = in.op == Op::Ld ? o[1] : o[0];
    const Operand &val = in.op == Op::Ld ? o[0] : o[1];
    if (addrOp.kind != Operand::Kind::Addr)
      fail("memory operand expected");
    const Symbol *sym =
        addrOp.symbol >= 0 ? &fn.symbols[addrOp.symbol] : nullptr;
    unsigned total = elem * in.vector;
    FOR_LANES(active, l) {
      uint64_t a = address(w, addrOp, l);
      Resolved r = resolve(in.space, a, total, total, l, in.op == Op::St, sym);
      bool sh = r.space == Space::Shared;
      if (in.op == Op::Ld) {
        if (sh)
          checkSharedRead(r.offset, total, l);
        for (unsigned i = 0; i < in.vector; ++i) {
          uint64_t v = loadBytes(r.ptr + i * elem, elem);
          int reg = val.kind == Operand::Kind::Vec ? val.regs[i] : val.reg;
          if (reg < 0)
            continue;
          unsigned rb = typeBytes(fn.registers[reg].type);
          if (isSigned(in.type) && rb > elem)
            v = truncTo(uint64_t(signExtend(v, elem)), rb);
          if (fn.registers[reg].type == Type::Pred)
            v = v != 0;
          R(w, reg, l) = v;
        }
      } else {
        if (sh)
          checkSharedWrite(r.offset, total, l);
        for (unsigned i = 0; i < in.vector; ++i) {
          uint64_t v;
          if (val.kind == Operand::Kind::Vec) {
            int32_t reg = val.regs[i];
            v = reg >= 0 ? R(w, reg, l) : uint64_t(val.items[-1 - reg].imm);
          } else {
            v = get(w, val, l);
          }
          storeBytes(r.ptr + i * elem, v, elem);
        }
      }
    }
    return;
  }
  // atom / red
  const Operand &addrOp = in.op == Op::Atom ? o[1] : o[0];
  size_t vi = in.op == Op::Atom ? 2 : 1;
  FOR_LANES(active, l) {
    uint64_t a = address(w, addrOp, l);
    Resolved r = resolve(in.space, a, elem, elem, l, true);
    if (r.space == Space::Shared) {
      checkSharedRead(r.offset, elem, l);
      if (opts.hazards && pendingWrites)
        checkSharedWrite(r.offset, elem, l);
    }
    uint64_t old = loadBytes(r.ptr, elem), b = get(w, o[vi], l), nv = old;
    const Type t = in.type;
    bool s = isSigned(t);
    switch (in.sub) {
    case 1: // add
      if (t == Type::F32)
        nv = fromF32(asF32(old) + asF32(b));
      else if (t == Type::F64)
        nv = fromF64(asF64(old) + asF64(b));
      else
        nv = old + b;
      break;
    case 2:
    case 3: // min, max
      if (t == Type::F32) {
        float x = asF32(old), y = asF32(b);
        nv = fromF32(in.sub == 2 ? std::fmin(x, y) : std::fmax(x, y));
      } else if (s) {
        int64_t x = signExtend(old, elem), y = signExtend(b, elem);
        nv = uint64_t(in.sub == 2 ? std::min(x, y) : std::max(x, y));
      } else {
        uint64_t x = truncTo(old, elem), y = truncTo(b, elem);
        nv = in.sub == 2 ? std::min(x, y) : std::max(x, y);
      }
      break;
    case 4:
      nv = b;
      break;
    case 5: // cas: [a] == b ? c : old
      nv = truncTo(old, elem) == truncTo(b, elem) ? get(w, o[vi + 1], l) : old;
      break;
    case 6:
      nv = old & b;
      break;
    case 7:
      nv = old | b;
      break;
    case 8:
      nv = old ^ b;
      break;
    case 9:
      nv = truncTo(old, elem) >= truncTo(b, elem) ? 0 : old + 1;
      break;
    case 10:
      nv = (truncTo(old, elem) == 0 || truncTo(old, elem) > truncTo(b, elem))
               ? b
               : old - 1;
      break;
    }
    std::memcpy(r.ptr, &nv, elem);
    if (in.op == Op::Atom)
      set(w, o[0], l, truncTo(old, elem));
  }
}

void Interpreter::executeSpecialLanes(Warp &w, const Instruction &in,
                                      uint32_t active) {
  const auto &o = in.ops;
  if (in.op == Op::Call) {
    FOR_LANES(active, l) vprintf(w, in, l);
    return;
  }
  if (in.op == Op::ElectSync) {
    // elect.sync d|p, membermask
    uint32_t member = static_cast<uint32_t>(get(w, o[1], ctz(active)));
    uint32_t participants = member & active;
    if ((member & w.allMask & ~w.exitedMask) != (member & active))
      fail("elect.sync: lanes of the member mask are not converged here");
    unsigned leader = participants ? ctz(participants) : 0;
    FOR_LANES(active, l) {
      if (o[0].kind == Operand::Kind::Reg)
        set(w, o[0], l, leader);
      if (!o[0].items.empty())
        set(w, o[0].items[0], l, l == leader);
    }
    return;
  }
  // All lanes of the member mask must execute this instruction together.
  size_t maskOp = in.op == Op::Shfl ? 4 : 2;
  uint32_t member = static_cast<uint32_t>(get(w, o[maskOp], ctz(active)));
  // Without checks the lanes that execute it take part, whatever the mask
  // says (the hardware does not stop on these undefined cases).
  if (!opts.hazards)
    member = active;
  FOR_LANES(active, l) {
    if (opts.hazards && static_cast<uint32_t>(get(w, o[maskOp], l)) != member)
      fail("lanes of one " + in.form + " disagree on the member mask", l);
    if (!(member >> l & 1)) {
      char b[64];
      std::snprintf(b, sizeof b, " 0x%08x", member);
      fail(in.form + " executed by a lane outside its member mask" + b, l);
    }
  }
  uint32_t missing = member & ~active;
  if (missing)
    fail(in.form + ": lane " + std::to_string(ctz(missing)) +
         " of the member mask does not execute it with the others "
         "(diverged or exited)");
  if (in.op == Op::Vote) {
    uint32_t ballot = 0;
    FOR_LANES(active, l) if (get(w, o[1], l)) ballot |= 1u << l;
    FOR_LANES(active, l) {
      uint64_t r;
      switch (in.sub) {
      case 0:
        r = ballot == active;
        break;
      case 1:
        r = ballot != 0;
        break;
      case 2:
        r = ballot == 0 || ballot == active;
        break;
      default:
        r = ballot;
        break;
      }
      set(w, o[0], l, r);
    }
    return;
  }
  // shfl.sync.mode.b32 d[|p], a, b, c, membermask
  uint64_t src[32];
  for (unsigned l = 0; l < 32; ++l)
    src[l] = (w.allMask >> l & 1) ? get(w, o[1], l) : 0;
  uint64_t out[32];
  bool valid[32];
  FOR_LANES(active, l) {
    unsigned b = get(w, o[2], l) & 31, c = get(w, o[3], l);
    unsigned cval = c & 31, segmask = (c >> 8) & 31;
    unsigned maxLane = (l & segmask) | (cval & ~segmask);
    unsigned minLane = l & segmask;
    int j = 0;
    bool p = false;
    switch (in.sub) {
    case 0:
      j = l ^ b;
      p = unsigned(j) <= maxLane;
      break;
    case 1:
      j = int(minLane | (b & ~segmask));
      p = unsigned(j) <= maxLane;
      break;
    case 2:
      j = int(l) - int(b);
      p = j >= int(maxLane);
      break;
    case 3:
      j = int(l) + int(b);
      p = j <= int(maxLane);
      break;
    }
    if (!p)
      j = l;
    if (!(active >> j & 1) && opts.hazards)
      fail("shfl.sync reads lane " + std::to_string(j) +
               ", which does not execute it (an undefined value)",
           l);
    out[l] = src[j];
    valid[l] = p;
  }
  FOR_LANES(active, l) {
    set(w, o[0], l, truncTo(out[l], 4));
    if (!o[0].items.empty())
      set(w, o[0].items[0], l, valid[l]);
  }
}

void Interpreter::vprintf(Warp &w, const Instruction &in, unsigned lane) {
  // call.uni (ret), vprintf, (fmt, args): fmt and args are call parameters
  // holding generic pointers (format in global memory, arguments packed in
  // local memory with natural alignment).
  auto paramValue = [&](const Operand &op) -> uint64_t {
    if (op.kind != Operand::Kind::Symbol)
      fail("vprintf argument is not a parameter");
    const Symbol &s = fn.symbols[op.symbol];
    Resolved r = resolve(Space::Param, s.offset, 8, 8, lane, false, &s);
    return loadBytes(r.ptr, 8);
  };
  size_t first = in.ops.size() >= 3 ? 1 : 0;
  uint64_t fmtAddr = paramValue(in.ops[first]);
  uint64_t args = in.ops.size() > first + 1 ? paramValue(in.ops[first + 1]) : 0;
  std::string fmt;
  for (uint64_t a = fmtAddr;; ++a) {
    Resolved r = resolve(Space::Generic, a, 1, 1, lane, false);
    if (!*r.ptr)
      break;
    fmt += static_cast<char>(*r.ptr);
    if (fmt.size() > 4096)
      fail("vprintf format string without a terminating NUL", lane);
  }
  std::string out;
  uint64_t at = 0;
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] != '%') {
      out += fmt[i];
      continue;
    }
    size_t j = i + 1;
    while (j < fmt.size() && std::strchr("-+ #0123456789.", fmt[j]))
      ++j;
    std::string lenMod;
    while (j < fmt.size() && std::strchr("hlzjt", fmt[j]))
      lenMod += fmt[j++];
    if (j >= fmt.size())
      break;
    char conv = fmt[j];
    std::string spec = fmt.substr(i, j - i + 1);
    i = j;
    if (conv == '%') {
      out += '%';
      continue;
    }
    unsigned size = 4;
    if (std::strchr("fFeEgGaA", conv) || conv == 's' || conv == 'p' ||
        lenMod == "l" || lenMod == "ll" || lenMod == "z" || lenMod == "j")
      size = 8;
    at = (at + size - 1) / size * size;
    Resolved r = resolve(Space::Generic, args + at, size, size, lane, false);
    uint64_t v = loadBytes(r.ptr, size);
    at += size;
    char buf[512];
    if (std::strchr("fFeEgGaA", conv))
      std::snprintf(buf, sizeof buf, spec.c_str(), asF64(v));
    else if (conv == 's')
      std::snprintf(buf, sizeof buf, "%s", "<string>");
    else if (size == 8)
      std::snprintf(buf, sizeof buf, spec.c_str(), (long long)v);
    else
      std::snprintf(buf, sizeof buf, spec.c_str(), static_cast<int>(v));
    out += buf;
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fflush(stdout);
  if (!in.ops.empty() && first == 1 &&
      in.ops[0].kind == Operand::Kind::Symbol) {
    const Symbol &s = fn.symbols[in.ops[0].symbol];
    Resolved r = resolve(Space::Param, s.offset, 4, 4, lane, true, &s);
    int32_t n = static_cast<int32_t>(out.size());
    std::memcpy(r.ptr, &n, 4);
  }
}

void Interpreter::executeAsync(Warp &w, const Instruction &in,
                               uint32_t active) {
  const auto &o = in.ops;
  switch (in.op) {
  case Op::MbarInit: {
    FOR_LANES(active, l) {
      uint64_t a = address(w, o[0], l);
      if (in.space == Space::Generic)
        a -= kSharedWindow;
      if (a % 8 || a + 8 > sharedSize)
        fail("mbarrier.init of a location that is not 8-byte aligned shared "
             "memory",
             l);
      uint64_t count = get(w, o[1], l);
      if (count < 1 || count > (1u << 20) - 1)
        fail("mbarrier.init count " + std::to_string(count) +
                 " outside 1..2^20-1",
             l);
      // Several threads may initialize one mbarrier with the same count
      // (MLIR's nvgpu.mbarrier.init runs on every thread): not a race, as
      // long as nobody has used it in between.
      touch(a, 8);
      checkSharedWrite(a, 8, l, /*race=*/false);
      auto old = mbarriers.find(static_cast<uint32_t>(a));
      if (old != mbarriers.end() && opts.hazards &&
          (old->second.pending != old->second.expected || old->second.tx ||
           old->second.phase || old->second.expected != count))
        fail("mbarrier.init of the mbarrier at shared offset " +
                 std::to_string(a) +
                 " while it is in use (arrivals, tx-count or completed "
                 "phases since its last init; mbarrier.inval first)",
             l);
      Mbarrier m;
      m.expected = m.pending = static_cast<uint32_t>(count);
      mbarriers[static_cast<uint32_t>(a)] = m;
    }
    return;
  }
  case Op::MbarArrive:
  case Op::MbarArriveExpectTx:
  case Op::MbarExpectTx: {
    // arrive: state, [a] {, count}; arrive.expect_tx: state, [a], tx;
    // expect_tx: [a], tx.
    bool hasState = in.op != Op::MbarExpectTx;
    const Operand &addrOp = hasState ? o[1] : o[0];
    FOR_LANES(active, l) {
      uint32_t addr;
      Mbarrier &m = mbarrierAt(w, in, addrOp, l, addr);
      if (in.op != Op::MbarArrive) {
        int64_t tx = static_cast<int64_t>(get(w, o[hasState ? 2 : 1], l));
        m.tx += tx;
        if (m.tx >= (1 << 20))
          fail("mbarrier tx-count above 2^20-1", l);
      }
      if (hasState) {
        uint32_t count = 1;
        if (in.op == Op::MbarArrive && o.size() > 2)
          count = static_cast<uint32_t>(get(w, o[2], l));
        if (count > m.pending)
          fail("mbarrier at shared offset " + std::to_string(addr) +
                   ": more arrivals than the " + std::to_string(m.expected) +
                   " it was initialized with in this phase",
               l);
        if (o[0].kind == Operand::Kind::Reg)
          set(w, o[0], l, m.phase);
        m.pending -= count;
        uint32_t before = m.phase;
        maybeCompletePhase(m);
        if (m.phase != before)
          wakeAll();
      }
    }
    return;
  }
  case Op::MbarInval:
    FOR_LANES(active, l) {
      uint32_t addr;
      mbarrierAt(w, in, o[0], l, addr);
      mbarriers.erase(addr);
    }
    return;
  case Op::CpAsyncBulkTensor: {
    // [dst], [map, {coords}], [mbar]
    FOR_LANES(active, l) {
      TmaOp t;
      uint64_t dst = address(w, o[0], l);
      if (dst % 128)
        fail("cp.async.bulk.tensor destination " + std::to_string(dst) +
                 " is not 128-byte aligned",
             l);
      uint64_t mapAddr = R(w, o[1].reg, l);
      if (mapAddr % 64)
        fail("tensor map address is not 64-byte aligned", l);
      Resolved r = resolve(Space::Generic, mapAddr, 128, 64, l, false);
      std::memcpy(&t.map, r.ptr, sizeof t.map);
      if (t.map.magic != kTensorMapMagic)
        fail("cp.async.bulk.tensor: the operand does not point to a tensor "
             "map made by cuTensorMapEncodeTiled",
             l);
      if (t.map.rank != in.shapeN)
        fail("cp.async.bulk.tensor." + std::to_string(in.shapeN) +
                 "d with a rank-" + std::to_string(t.map.rank) + " tensor map",
             l);
      for (unsigned i = 0; i < t.map.rank; ++i)
        t.coords[i] = static_cast<int32_t>(R(w, o[1].regs[i], l));
      t.bytes = t.map.elementBytes;
      for (unsigned i = 0; i < t.map.rank; ++i)
        t.bytes *= t.map.box[i];
      if (t.map.swizzle) {
        unsigned atom = 8 * swizzleSpan(tensorMapSwizzle(t.map.swizzle));
        if (dst % atom)
          fail(
              "cp.async.bulk.tensor with " +
                  std::to_string(swizzleSpan(tensorMapSwizzle(t.map.swizzle))) +
                  "-byte swizzle into shared offset " + std::to_string(dst) +
                  ", not aligned to the " + std::to_string(atom) +
                  "-byte swizzle atom",
              l);
      }
      if (dst + t.bytes > sharedSize)
        fail("cp.async.bulk.tensor writes past the block's shared memory", l);
      t.dst = static_cast<uint32_t>(dst);
      uint32_t mbar;
      mbarrierAt(w, Space::SharedCluster, o[2], l, mbar);
      t.mbar = mbar;
      if (opts.hazards) {
        for (uint64_t b = 0; b < t.bytes; ++b)
          if (shadow.pendingAsync[dst + b])
            fail("cp.async.bulk.tensor into shared memory that another "
                 "asynchronous copy still writes",
                 l);
        if (wgmmaReads)
          for (uint64_t b = 0; b < t.bytes; ++b)
            if (shadow.wgmmaReading[dst + b])
              fail("cp.async.bulk.tensor overwrites shared memory that an "
                   "in-flight wgmma reads",
                   l);
      }
      t.rows = t.bytes / (uint64_t(t.map.box[0]) * t.map.elementBytes);
      touch(t.dst, t.bytes);
      markPending(t.dst, t.bytes, +1);
      tmas.push_back(t);
      async.push_back({AsyncOp::Kind::Tma, tmas.size() - 1});
      ++asyncPending;
    }
    return;
  }
  case Op::CpAsync: {
    // cp.async.cg.shared.global [dst], [src], cp-size{, src-size}
    if (w.threads.empty())
      w.threads.resize(32);
    FOR_LANES(active, l) {
      CpAsyncOp c;
      uint64_t dst = address(w, o[0], l);
      c.src = address(w, o[1], l);
      c.size = static_cast<unsigned>(get(w, o[2], l));
      c.srcSize =
          o.size() > 3 ? static_cast<unsigned>(get(w, o[3], l)) : c.size;
      if (c.size != 4 && c.size != 8 && c.size != 16)
        fail("cp.async size must be 4, 8 or 16", l);
      if (c.srcSize > c.size)
        fail("cp.async src-size above cp-size", l);
      if (dst % c.size || c.src % c.size)
        fail("misaligned cp.async", l);
      if (dst + c.size > sharedSize)
        fail("cp.async writes past the block's shared memory", l);
      if (c.srcSize && !dev.contains(c.src, c.srcSize))
        fail("cp.async reads global memory outside any allocation", l);
      touch(dst, c.size);
      checkSharedWrite(dst, c.size, l);
      c.dst = static_cast<uint32_t>(dst);
      c.warp = w.index;
      c.lane = l;
      ThreadAsync &t = w.threads[l];
      c.group = t.openGroup;
      ++t.outstanding[c.group];
      markPending(c.dst, c.size, +1);
      cps.push_back(c);
      async.push_back({AsyncOp::Kind::CpAsync, cps.size() - 1});
      ++asyncPending;
    }
    return;
  }
  case Op::CpAsyncCommit:
    if (w.threads.empty())
      w.threads.resize(32);
    FOR_LANES(active, l)++ w.threads[l].openGroup;
    return;
  case Op::WgmmaFence:
    if (active != w.allMask)
      fail("wgmma.fence.sync.aligned executed by a partial warp");
    return;
  case Op::WgmmaCommit:
    if (active != w.allMask)
      fail("wgmma.commit_group.sync.aligned executed by a partial warp");
    ++w.wgmmaCommits;
    return;
  case Op::WgmmaMma:
    executeWgmma(w, in, active);
    return;
  case Op::CpAsyncBulkCommit:
  case Op::CpAsyncBulkWait:
    fail("bulk async-groups (TMA stores) are not modeled");
  default:
    fail("instruction not implemented by the emulator");
  }
}

void Interpreter::executeWgmma(Warp &w, const Instruction &in,
                               uint32_t active) {
  if (active != 0xffffffffu)
    fail("wgmma.mma_async.sync.aligned needs all 32 lanes of the warp");
  if (threadsPerBlock < (w.index / 4 + 1) * 128)
    fail("wgmma in a warpgroup that is not complete (block of " +
         std::to_string(threadsPerBlock) + " threads)");
  unsigned g = w.index / 4, wi = w.index % 4;
  // Find this warp's op: the first of its warpgroup it has not issued.
  unsigned seq = w.wgmmaIssued++;
  WgmmaOp *op = nullptr;
  unsigned count = 0;
  for (WgmmaOp &x : wgmmas)
    if (x.group == g && count++ == seq) {
      op = &x;
      break;
    }
  const auto &o = in.ops;
  bool aRegs = o[1].kind == Operand::Kind::Vec;
  if (!op) {
    WgmmaOp fresh;
    fresh.inst = &in;
    fresh.group = g;
    fresh.commitIndex = w.wgmmaCommits;
    fresh.aFromRegisters = aRegs;
    wgmmas.push_back(fresh);
    op = &wgmmas.back();
  } else if (op->inst != &in) {
    fail("the warps of warpgroup " + std::to_string(g) +
         " issue different wgmma instructions at the same position "
         "(not warpgroup-uniform)");
  }
  // Uniform operands: descriptors and scale-d must agree across lanes.
  uint64_t descB = get(w, o[2], 0);
  uint64_t descA = aRegs ? 0 : get(w, o[1], 0);
  bool scaleD = get(w, o[3], 0) != 0;
  for (unsigned l = 1; l < 32; ++l)
    if (get(w, o[2], l) != descB || (!aRegs && get(w, o[1], l) != descA) ||
        (get(w, o[3], l) != 0) != scaleD)
      fail("wgmma descriptors or scale-d differ between lanes", l);
  if (op->issuedWarps == 0) {
    op->firstDescA = descA;
    op->firstDescB = descB;
  } else if (descB != op->firstDescB || (!aRegs && descA != op->firstDescA)) {
    fail("wgmma descriptors differ between the warps of the warpgroup");
  }
  op->descA[wi] = descA;
  op->descB[wi] = descB;
  op->scaleD[wi] = scaleD;
  if (aRegs) {
    if (o[1].regs.size() != 4)
      fail("wgmma with A from registers needs 4 registers for k16");
    op->aRegs[wi].resize(128);
    for (unsigned l = 0; l < 32; ++l)
      for (unsigned r = 0; r < 4; ++r)
        op->aRegs[wi][l * 4 + r] = static_cast<uint32_t>(R(w, o[1].regs[r], l));
  }
  if (opts.hazards) {
    for (int32_t r : o[0].regs) {
      ++w.owned[r];
      ++w.ownedCount;
    }
    if (aRegs)
      for (int32_t r : o[1].regs) {
        ++w.owned[r];
        ++w.ownedCount;
      }
  }
  if (++op->issuedWarps == 4) {
    // Operand bytes: checked for unfenced generic writes and marked as read
    // until every warp retires the op.
    MatrixDescriptor db = decodeDescriptor(op->descB[0]);
    MatrixDescriptor da = decodeDescriptor(op->descA[0]);
    if (db.baseOffset || (!aRegs && da.baseOffset))
      fail("wgmma descriptor with a non-zero base offset is not modeled");
    size_t immBase = 4;
    bool transA = !aRegs && o.size() > immBase + 2 && o[immBase + 2].imm;
    bool transB = o.size() > immBase + (aRegs ? 2 : 3) &&
                  o[immBase + (aRegs ? 2 : 3)].imm;
    auto mark = [&](const MatrixDescriptor &d, bool t, unsigned rows,
                    const char *which) {
      for (unsigned mn = 0; mn < rows; ++mn)
        for (unsigned k = 0; k < 16; k += 8) {
          uint32_t a0 = operandAddress(d, t, mn, k);
          if (a0 + 16 > sharedSize)
            fail(std::string("wgmma ") + which + " operand address " +
                 std::to_string(a0) + " past the block's shared memory");
          if (opts.hazards) {
            for (unsigned kk = 0; kk < 8; ++kk) {
              uint32_t a = operandAddress(d, t, mn, k + kk);
              checkProxyFenced(a, 2, "wgmma");
              if (shadow.pendingAsync[a] || shadow.pendingAsync[a + 1])
                fail(std::string("wgmma ") + which +
                     " operand reads shared memory whose TMA/cp.async has "
                     "not completed (a missing mbarrier wait)");
              if (!op->readRanges.empty() &&
                  op->readRanges.back().first + op->readRanges.back().second ==
                      a)
                op->readRanges.back().second += 2;
              else
                op->readRanges.push_back({a, 2});
            }
          }
        }
    };
    mark(db, transB, in.shapeN, "B");
    if (!aRegs)
      mark(da, transA, 64, "A");
    if (opts.hazards)
      for (auto &r : op->readRanges)
        markWgmmaRead(r.first, r.second, +1);
    async.push_back(
        {AsyncOp::Kind::Wgmma, static_cast<size_t>(op - wgmmas.data())});
    ++asyncPending;
  }
}

bool Device::launch(const LoadedModule &module, const Function &fn,
                    const unsigned grid[3], const unsigned block[3],
                    unsigned dynamicShared, void **params, std::string &error) {
  auto start = std::chrono::steady_clock::now();
  Interpreter interp(*this, module, fn, grid, block, dynamicShared, params);
  bool ok = interp.run(error);
  auto stop = std::chrono::steady_clock::now();
  interp.stats.seconds = std::chrono::duration<double>(stop - start).count();
  totals.warpInstructions += interp.stats.warpInstructions;
  totals.threadInstructions += interp.stats.threadInstructions;
  totals.blocks += interp.stats.blocks;
  ++totals.launches;
  LaunchStats &k = perKernel[fn.name];
  k.warpInstructions += interp.stats.warpInstructions;
  k.threadInstructions += interp.stats.threadInstructions;
  k.blocks += interp.stats.blocks;
  k.seconds += interp.stats.seconds;
  ++k.launches;
  totals.seconds += interp.stats.seconds;
  return ok;
}

} // namespace kiln::emu

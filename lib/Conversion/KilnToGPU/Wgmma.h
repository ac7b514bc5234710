//===- Wgmma.h - Pieces shared by the wgmma kernels -------------*- C++ -*-===//
//
// Type spellings and shared-memory descriptors for the TMA + mbarrier +
// wgmma kernels (GemmKernel.cpp, GroupedGemmKernel.cpp,
// FlashAttentionKernel.cpp). Tiles are one 128-byte swizzle row wide (64
// bf16 elements), 128-byte swizzled. The operand element type is a
// parameter of these helpers (TileElement); the kernels use bf16 today.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_LIB_CONVERSION_KILNTOGPU_WGMMA_H
#define KILN_LIB_CONVERSION_KILNTOGPU_WGMMA_H

#include "KernelText.h"

#include <string>

namespace mlir::kiln::cuda::wgmma {

/// A wgmma operand element type: its MLIR spelling, its size and the K of
/// one wgmma instruction (32 bytes of K per instruction for every 16- and
/// 8-bit type).
struct TileElement {
  const char *name;
  int64_t bytes;
  constexpr int64_t mmaK() const { return 32 / bytes; }
  /// Elements in one 128-byte swizzle row: a tile's K extent.
  constexpr int64_t tileK() const { return 128 / bytes; }
};
constexpr TileElement kBF16{"bf16", 2};
constexpr TileElement kF16{"f16", 2};
constexpr TileElement kE4M3{"f8E4M3FN", 1};

constexpr int64_t kTileK = kBF16.tileK(); // 128 bytes of bf16: one swizzle row

/// An nvgpu tensor-map type whose box is `shape` (outermost first).
inline std::string tensorMapType(const std::string &shape,
                                 const TileElement &e = kBF16) {
  return "!nvgpu.tensormap.descriptor<tensor = memref<" + shape + "x" + e.name +
         ", 3>, swizzle = swizzle_128b, l2promo = l2promo_256b, oob = "
         "zero, interleave = none>";
}
inline std::string tileType(const std::string &shape,
                            const TileElement &e = kBF16) {
  return "memref<" + shape + "x" + e.name + ", #gpu.address_space<workgroup>>";
}
inline std::string barrierType(int64_t stages) {
  return "!nvgpu.mbarrier.group<memorySpace = #gpu.address_space<workgroup>, "
         "num_barriers = " +
         std::to_string(stages) + ">";
}
/// The accumulator of one m64nNk16 wgmma: N / 2 f32 per thread.
inline std::string accType(int64_t n) {
  std::string t = "!llvm.struct<(";
  for (int64_t i = 0; i < n / 2; ++i)
    t += i ? ", f32" : "f32";
  return t + ")>";
}

/// The wgmma shared-memory descriptor of a 128-byte swizzled tile at shared
/// address `addr` (i64): start address >> 4, leading and stride byte
/// offsets >> 4, swizzle mode 1 (128 B) in bits 62-63. K-major tiles use
/// stride 1024 (8 rows of 128 B; the leading offset is unused); MN-major
/// tiles (64-element-wide boxes, K rows) use stride 1024 between 8-row
/// groups along K and `leadingBytes` between 64-element boxes along N.
inline std::string descriptor(KernelText &k, const std::string &addr,
                              int64_t leadingBytes = 16) {
  std::string masked =
      k.op("arith.andi " + addr + ", " + k.i64(0x3FFFF) + " : i64");
  std::string start =
      k.op("arith.shrui " + masked + ", " + k.i64(4) + " : i64");
  int64_t fixed = ((leadingBytes >> 4) << 16) | (int64_t(1024 >> 4) << 32) |
                  (int64_t(1) << 62);
  return k.op("arith.ori " + start + ", " + k.i64(fixed) + " : i64");
}

/// One m64nNk(32 bytes) wgmma of `e` operands into f32; `bLayout` is "col"
/// for a K-major B, "row" for an MN-major B (transposed; 16-bit types
/// only). With `overwrite`, D = A·B and `acc` is not read (scale-d 0), so a
/// fresh accumulator needs no zeroing.
inline std::string mma(KernelText &k, const std::string &a,
                       const std::string &b, const std::string &acc, int64_t n,
                       const char *bLayout = "col", bool overwrite = false,
                       const TileElement &e = kBF16) {
  std::string element = std::string("<") + e.name + ">";
  return k.op("nvvm.wgmma.mma_async " + a + ", " + b + ", " + acc +
              ", #nvvm.shape<m = 64, n = " + std::to_string(n) + ", k = " +
              std::to_string(e.mmaK()) + ">, D [<f32>, #nvvm.wgmma_scale_out<" +
              (overwrite ? "zero" : "one") + ">], A [" + element +
              ", "
              "#nvvm.wgmma_scale_in<one>, <row>], B [" +
              element +
              ", "
              "#nvvm.wgmma_scale_in<one>, <" +
              bLayout + ">] : " + accType(n) + " -> " + accType(n));
}

/// The four wgmmas of one 128-byte K tile: A (K-major) steps 32 bytes (+2
/// in the descriptor's address field) per instruction; B steps the same
/// when K-major, or mmaK rows of 128 bytes when MN-major ("row"). With
/// `overwrite`, the first one starts the accumulator afresh.
inline std::string mmaKTile(KernelText &k, const std::string &descA,
                            const std::string &descB, std::string acc,
                            int64_t n, const char *bLayout = "col",
                            bool overwrite = false,
                            const TileElement &e = kBF16) {
  int64_t bStep = std::string(bLayout) == "row" ? e.mmaK() * 128 / 16 : 2;
  auto advance = [&](const std::string &desc, int64_t by) {
    return by ? k.op("arith.addi " + desc + ", " + k.i64(by) + " : i64") : desc;
  };
  for (int64_t kk = 0; kk < e.tileK() / e.mmaK(); ++kk)
    acc = mma(k, advance(descA, 2 * kk), advance(descB, bStep * kk), acc, n,
              bLayout, overwrite && kk == 0, e);
  return acc;
}

/// Dynamic shared memory, its offset to the next 1024-byte boundary (which
/// 128-byte swizzled tiles need) and that boundary's address.
struct SharedArena {
  std::string memory, pad, aligned;
};
inline SharedArena alignedDynamicShared(KernelText &k) {
  SharedArena a;
  a.memory = k.op("gpu.dynamic_shared_memory : memref<?xi8, "
                  "#gpu.address_space<workgroup>>");
  std::string base =
      k.op("memref.extract_aligned_pointer_as_index " + a.memory +
           " : memref<?xi8, #gpu.address_space<workgroup>> -> index");
  a.pad =
      k.rem(k.sub(k.index(1024), k.rem(base, k.index(1024))), k.index(1024));
  a.aligned = k.add(base, a.pad);
  return a;
}

/// The mbarrier parity of ring iteration `iter`: (iter / stages) & 1,
/// flipped for a producer waiting on a stage's "empty" barrier (a fresh
/// barrier passes parity 1, so the first round never waits).
inline std::string parity(KernelText &k, const std::string &iter,
                          int64_t stages, bool flip) {
  std::string bit =
      k.op("arith.trunci " +
           k.op("arith.index_cast " + k.div(iter, k.index(stages)) +
                " : index to i64") +
           " : i64 to i1");
  if (!flip)
    return bit;
  return k.op("arith.xori " + bit + ", " + k.op("arith.constant true") +
              " : i1");
}

/// Blocks until `barrier[index]` completes the phase of parity `phase`.
inline void waitParity(KernelText &k, const std::string &barrier,
                       const std::string &index, const std::string &phase,
                       const std::string &type) {
  k.line("nvgpu.mbarrier.try_wait.parity " + barrier + "[" + index + "], " +
         phase + ", " + k.index(10000000) + " : " + type);
}

/// base + index * bytes as an i64 shared address.
inline std::string addressOf(KernelText &k, const std::string &base,
                             const std::string &index, int64_t bytes) {
  std::string i = k.op("arith.index_cast " + index + " : index to i64");
  return k.op("arith.addi " + base + ", " +
              k.op("arith.muli " + i + ", " + k.i64(bytes) + " : i64") +
              " : i64");
}

/// Where a thread's accumulator fragments of an m64nNk16 wgmma sit: thread
/// (warp w, lane l) of consumer warpgroup `cw` holds rows
/// firstRow + 64 cw + 16 w + l/4 (and + 8), columns 8j + 2 (l mod 4) (+1);
/// register 4j + 2h + e is (row h, column 8j + 2 (l mod 4) + e).
struct Fragments {
  std::string rows[2], pairColumn;
};
inline Fragments fragmentsOf(KernelText &k, const std::string &laneInGroup,
                             const std::string &firstRow,
                             const std::string &cw) {
  std::string l = k.rem(laneInGroup, k.index(32));
  std::string w = k.div(laneInGroup, k.index(32));
  Fragments f;
  f.pairColumn = k.mul(k.rem(l, k.index(4)), k.index(2));
  f.rows[0] = k.add(k.add(firstRow, k.mul(cw, k.index(64))),
                    k.add(k.mul(w, k.index(16)), k.div(l, k.index(4))));
  f.rows[1] = k.add(f.rows[0], k.index(8));
  return f;
}

} // namespace mlir::kiln::cuda::wgmma

#endif // KILN_LIB_CONVERSION_KILNTOGPU_WGMMA_H

//===- Wgmma.h - Pieces shared by the wgmma kernels -------------*- C++ -*-===//
//
// Types, shared-memory descriptors, mbarrier phases and wgmma issue for the
// TMA + mbarrier + wgmma kernels (GemmKernel.cpp, GroupedGemmKernel.cpp,
// FlashAttentionKernel.cpp), built on GpuEmitter. Tiles are one 128-byte
// swizzle row wide (64 bf16 elements), 128-byte swizzled. The operand
// element type is a parameter of these helpers (TileElement: bf16, f16,
// e4m3); the kernels use bf16 today.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_LIB_CONVERSION_KILNTOGPU_WGMMA_H
#define KILN_LIB_CONVERSION_KILNTOGPU_WGMMA_H

#include "GpuEmitter.h"

#include "mlir/Dialect/LLVMIR/NVVMDialect.h"
#include "mlir/Dialect/NVGPU/IR/NVGPUDialect.h"

namespace mlir::kiln::cuda::wgmma {

/// A wgmma operand element type: its MLIR spelling, its size and the K of
/// one wgmma instruction (32 bytes of K per instruction for every 16- and
/// 8-bit type).
struct TileElement {
  enum class Kind { BF16, F16, E4M3 };
  Kind kind;
  const char *name;
  int64_t bytes;
  constexpr int64_t mmaK() const { return 32 / bytes; }
  /// Elements in one 128-byte swizzle row: a tile's K extent.
  constexpr int64_t tileK() const { return 128 / bytes; }
  Type type(MLIRContext *context) const {
    switch (kind) {
    case Kind::BF16:
      return BFloat16Type::get(context);
    case Kind::F16:
      return Float16Type::get(context);
    case Kind::E4M3:
      return Float8E4M3FNType::get(context);
    }
    llvm_unreachable("unknown tile element");
  }
  NVVM::WGMMATypes wgmmaType() const {
    switch (kind) {
    case Kind::BF16:
      return NVVM::WGMMATypes::bf16;
    case Kind::F16:
      return NVVM::WGMMATypes::f16;
    case Kind::E4M3:
      return NVVM::WGMMATypes::e4m3;
    }
    llvm_unreachable("unknown tile element");
  }
};
constexpr TileElement kBF16{TileElement::Kind::BF16, "bf16", 2};
constexpr TileElement kF16{TileElement::Kind::F16, "f16", 2};
constexpr TileElement kE4M3{TileElement::Kind::E4M3, "f8E4M3FN", 1};

constexpr int64_t kTileK = kBF16.tileK(); // 128 bytes of bf16: one swizzle row

/// An nvgpu tensor-map type whose box is `shape` (outermost first),
/// 128-byte swizzled.
inline nvgpu::TensorMapDescriptorType
tensorMapType(MLIRContext *context, ArrayRef<int64_t> shape,
              const TileElement &e = kBF16) {
  auto box =
      MemRefType::get(shape, e.type(context), MemRefLayoutAttrInterface(),
                      Builder(context).getI64IntegerAttr(3));
  return nvgpu::TensorMapDescriptorType::get(
      context, box, nvgpu::TensorMapSwizzleKind::SWIZZLE_128B,
      nvgpu::TensorMapL2PromoKind::L2PROMO_256B,
      nvgpu::TensorMapOOBKind::OOB_ZERO,
      nvgpu::TensorMapInterleaveKind::INTERLEAVE_NONE);
}
inline Attribute workgroupSpace(MLIRContext *context) {
  return gpu::AddressSpaceAttr::get(context, gpu::AddressSpace::Workgroup);
}
/// A shared-memory tile of `shape`.
inline MemRefType tileType(MLIRContext *context, ArrayRef<int64_t> shape,
                           const TileElement &e = kBF16) {
  return MemRefType::get(shape, e.type(context), MemRefLayoutAttrInterface(),
                         workgroupSpace(context));
}
inline nvgpu::MBarrierGroupType barrierType(MLIRContext *context,
                                            int64_t stages) {
  return nvgpu::MBarrierGroupType::get(context, workgroupSpace(context),
                                       stages);
}
/// The accumulator of one m64nNk16 wgmma: N / 2 f32 per thread.
inline LLVM::LLVMStructType accType(MLIRContext *context, int64_t n) {
  SmallVector<Type> fields(n / 2, Float32Type::get(context));
  return LLVM::LLVMStructType::getLiteral(context, fields);
}

/// A pipelined kernel in `module`: `maps` TMA descriptors (64-byte aligned
/// pointers) first, then `params`; one block per SM at a time
/// (nvvm.minctasm 1: the kernels size their shared memory for that).
inline gpu::GPUFuncOp createTmaKernel(gpu::GPUModuleOp module, Location loc,
                                      StringRef name, unsigned maps,
                                      ArrayRef<Type> params,
                                      int64_t blockThreads) {
  Builder b(module.getContext());
  SmallVector<Type> arguments(maps, LLVM::LLVMPointerType::get(b.getContext()));
  llvm::append_range(arguments, params);
  gpu::GPUFuncOp fn = GpuEmitter::createKernel(module, loc, name, arguments,
                                               /*workgroup=*/{}, blockThreads);
  fn->setAttr("nvvm.minctasm", b.getI32IntegerAttr(1));
  for (unsigned i = 0; i < maps; ++i)
    fn.setArgAttr(i, "llvm.align", b.getI64IntegerAttr(64));
  return fn;
}
/// TMA descriptor argument `map` seen as the nvgpu tensor map of `type`.
inline Value tensorMapOf(GpuEmitter &e, Value map,
                         nvgpu::TensorMapDescriptorType type) {
  return UnrealizedConversionCastOp::create(*e.b, e.loc, Type(type), map)
      .getResult(0);
}

/// The wgmma shared-memory descriptor of a 128-byte swizzled tile at
/// shared address `addr` (i64): start address >> 4, leading and stride byte
/// offsets >> 4, swizzle mode 1 (128 B) in bits 62-63. K-major tiles use
/// stride 1024 (8 rows of 128 B; the leading offset is unused); MN-major
/// tiles (64-element-wide boxes, K rows) use stride 1024 between 8-row
/// groups along K and `leadingBytes` between 64-element boxes along N.
inline Value descriptor(GpuEmitter &e, Value addr, int64_t leadingBytes = 16) {
  Value start = e.shrUI(e.andI(addr, e.i64(0x3FFFF)), e.i64(4));
  int64_t fixed = ((leadingBytes >> 4) << 16) | (int64_t(1024 >> 4) << 32) |
                  (int64_t(1) << 62);
  return e.orI(start, e.i64(fixed));
}

/// One m64nNk(32 bytes) wgmma of `el` operands into f32; B is K-major
/// (`col`) or MN-major (`row`, 16-bit types only). With `overwrite`,
/// D = A·B and `acc` is not read.
inline Value mma(GpuEmitter &e, Value descA, Value descB, Value acc, int64_t n,
                 NVVM::MMALayout bLayout = NVVM::MMALayout::col,
                 bool overwrite = false, const TileElement &el = kBF16) {
  MLIRContext *context = e.b->getContext();
  return NVVM::WgmmaMmaAsyncOp::create(
      *e.b, e.loc, acc.getType(), acc, descA, descB,
      NVVM::MMAShapeAttr::get(context, 64, n, el.mmaK()), el.wgmmaType(),
      el.wgmmaType(), NVVM::WGMMATypes::f32,
      overwrite ? NVVM::WGMMAScaleOut::zero : NVVM::WGMMAScaleOut::one,
      NVVM::WGMMAScaleIn::one, NVVM::WGMMAScaleIn::one, NVVM::MMALayout::row,
      bLayout, /*satfinite=*/nullptr);
}

/// The wgmmas of one 128-byte K tile: A (K-major) steps 32 bytes (+2 in the
/// descriptor's address field) per instruction; B steps the same when
/// K-major, or mmaK rows of 128 bytes when MN-major (`row`). With
/// `overwrite`, the first one starts the accumulator afresh.
inline Value mmaKTile(GpuEmitter &e, Value descA, Value descB, Value acc,
                      int64_t n, NVVM::MMALayout bLayout = NVVM::MMALayout::col,
                      bool overwrite = false, const TileElement &el = kBF16) {
  int64_t bStep = bLayout == NVVM::MMALayout::row ? el.mmaK() * 128 / 16 : 2;
  auto advance = [&](Value desc, int64_t by) {
    return by ? e.addI(desc, e.i64(by)) : desc;
  };
  for (int64_t kk = 0; kk < el.tileK() / el.mmaK(); ++kk)
    acc = mma(e, advance(descA, 2 * kk), advance(descB, bStep * kk), acc, n,
              bLayout, overwrite && kk == 0, el);
  return acc;
}

/// The accumulator over `kTiles` K tiles: `kStep(it, acc, first)` issues
/// tile `it`; the first overwrites a fresh accumulator (scale-d 0), so it
/// needs no zeroing, and the others carry it through an scf.for.
inline Value
accumulateOverK(GpuEmitter &e, Value kTiles, LLVM::LLVMStructType acc,
                function_ref<Value(Value it, Value acc, bool first)> kStep) {
  Value fresh = LLVM::UndefOp::create(*e.b, e.loc, acc);
  Value first = kStep(e.index(0), fresh, /*first=*/true);
  return e.loopWith(e.index(1), kTiles, {first},
                    [&](Value it, ValueRange carried) -> SmallVector<Value> {
                      return {kStep(it, carried[0], /*first=*/false)};
                    })[0];
}

/// Dynamic shared memory, its offset to the next 1024-byte boundary and
/// that boundary's address.
struct SharedBase {
  Value memory, pad, aligned;
};
inline SharedBase alignedDynamicShared(GpuEmitter &e) {
  MLIRContext *context = e.b->getContext();
  SharedBase a;
  a.memory = gpu::DynamicSharedMemoryOp::create(
      *e.b, e.loc,
      MemRefType::get({ShapedType::kDynamic}, IntegerType::get(context, 8),
                      MemRefLayoutAttrInterface(), workgroupSpace(context)));
  Value base =
      memref::ExtractAlignedPointerAsIndexOp::create(*e.b, e.loc, a.memory);
  a.pad = e.remIndex(e.subIndex(e.index(1024), e.remIndex(base, e.index(1024))),
                     e.index(1024));
  a.aligned = e.addIndex(base, a.pad);
  return a;
}
/// A `shape` tile of `el` at byte `offset` of dynamic shared memory.
inline Value viewTile(GpuEmitter &e, Value memory, Value offset,
                      ArrayRef<int64_t> shape, const TileElement &el = kBF16) {
  return memref::ViewOp::create(*e.b, e.loc,
                                tileType(e.b->getContext(), shape, el), memory,
                                offset, ValueRange{});
}

/// The mbarrier parity of ring iteration `iter`: (iter / stages) & 1,
/// flipped for a producer waiting on a stage's "empty" barrier (a fresh
/// barrier passes parity 1, so the first round never waits).
inline Value parity(GpuEmitter &e, Value iter, int64_t stages, bool flip) {
  Value bit =
      e.truncI(e.toI64(e.divIndex(iter, e.index(stages))), e.b->getI1Type());
  return flip ? e.xorI(bit, e.boolean(true)) : bit;
}
/// Blocks until `barrier[index]` completes the phase of parity `phase`.
inline void waitParity(GpuEmitter &e, Value barrier, Value index, Value phase) {
  nvgpu::MBarrierTryWaitParityOp::create(*e.b, e.loc, barrier, phase,
                                         e.index(10000000), index);
}
/// Arrives on `barrier[index]` (the token is unused).
inline void arrive(GpuEmitter &e, Value barrier, Value index) {
  nvgpu::MBarrierArriveOp::create(
      *e.b, e.loc, nvgpu::MBarrierTokenType::get(e.b->getContext()), barrier,
      index);
}
/// base + index * bytes as an i64 shared address.
inline Value addressOf(GpuEmitter &e, Value base, Value index, int64_t bytes) {
  return e.addI(base, e.mulI(e.toI64(index), e.i64(bytes)));
}

/// Where a thread's accumulator fragments of an m64nNk16 wgmma sit: thread
/// (warp w, lane l) of consumer warpgroup `cw` holds rows
/// firstRow + 64 cw + 16 w + l/4 (and + 8), columns 8j + 2 (l mod 4) (+1);
/// register 4j + 2h + e is (row h, column 8j + 2 (l mod 4) + e).
struct FragmentCoords {
  Value rows[2], pairColumn;
};
inline FragmentCoords fragmentsOf(GpuEmitter &e, Value laneInGroup,
                                  Value firstRow, Value cw) {
  Value l = e.remIndex(laneInGroup, e.index(32));
  Value w = e.divIndex(laneInGroup, e.index(32));
  FragmentCoords f;
  f.pairColumn = e.mulI(e.remIndex(l, e.index(4)), e.index(2));
  f.rows[0] =
      e.addIndex(e.addIndex(firstRow, e.mulI(cw, e.index(64))),
                 e.addIndex(e.mulI(w, e.index(16)), e.divIndex(l, e.index(4))));
  f.rows[1] = e.addIndex(f.rows[0], e.index(8));
  return f;
}

} // namespace mlir::kiln::cuda::wgmma

#endif // KILN_LIB_CONVERSION_KILNTOGPU_WGMMA_H

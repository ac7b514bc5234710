//===- Hopper.h - sm_90a data layouts, as the PTX ISA defines them -*- C++
//-*-===//
//
// The pure functions behind wgmma and TMA: number conversions, the shared
// memory swizzle, the wgmma matrix descriptor and its canonical layouts,
// register fragment maps and the tensor map that cuTensorMapEncodeTiled
// fills. They hold no state so unit tests can check each against values
// worked out by hand from the ISA's tables.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_EMU_HOPPER_H
#define KILN_EMU_HOPPER_H

#include <cstdint>
#include <string>

namespace kiln::emu {

// ---- Numbers -------------------------------------------------------------
float bf16ToF32(uint16_t h);
uint16_t f32ToBf16(float f); // round to nearest even; NaN stays a quiet NaN
float f16ToF32(uint16_t h);
uint16_t f32ToF16(float f); // round to nearest even

// ---- Shared-memory swizzle -----------------------------------------------
/// Swizzle modes as the wgmma descriptor encodes them (bits 62-63).
enum class Swizzle : uint8_t { None = 0, B128 = 1, B64 = 2, B32 = 3 };

/// Bytes of one swizzled row (32/64/128; 16 for None: one core-matrix row).
unsigned swizzleSpan(Swizzle s);

/// The address the hardware touches for logical address `addr`: the 16-byte
/// chunk bits [4, 4+b) are XORed with bits [7, 7+b), b = 3/2/1 for
/// 128/64/32-byte swizzle. The function is its own inverse.
uint32_t swizzleAddress(uint32_t addr, Swizzle s);

// ---- wgmma shared-memory matrix descriptor -------------------------------
struct MatrixDescriptor {
  uint32_t start = 0;        // byte address in shared memory
  uint32_t leadingBytes = 0; // LBO
  uint32_t strideBytes = 0;  // SBO
  uint8_t baseOffset = 0;
  Swizzle swizzle = Swizzle::None;
};
MatrixDescriptor decodeDescriptor(uint64_t bits);
uint64_t encodeDescriptor(const MatrixDescriptor &d);

/// Shared byte address (after swizzling) of element (mn, k) of a 16-bit
/// operand described by `d`: mn is the row of A (M) or the column of B (N),
/// k the reduction index (0..15 within one k16 instruction). `mnMajor` is
/// the transpose bit: false = K-major (k contiguous), true = MN-major.
uint32_t operandAddress(const MatrixDescriptor &d, bool mnMajor, unsigned mn,
                        unsigned k);

// ---- Register fragments of m64nNk16 ----------------------------------------
struct Coord {
  unsigned row, col;
};
/// f32 accumulator: thread `lane` of warp `warp` (0..3 within the
/// warpgroup), register index `i` (0 .. N/2-1) holds D[row][col].
Coord accumulatorCoord(unsigned warp, unsigned lane, unsigned i);
/// 16-bit A from registers: register `r` (0..3), half `h` (0 = low 16 bits)
/// holds A[row][k].
Coord aFragmentCoord(unsigned warp, unsigned lane, unsigned r, unsigned h);

// ---- Tensor maps (CUtensorMap, 128 bytes) ---------------------------------
/// cuda.h's CUtensorMapDataType values that the emulator handles.
enum TensorDataType : int {
  kTmaU8 = 0,
  kTmaU16 = 1,
  kTmaU32 = 2,
  kTmaS32 = 3,
  kTmaU64 = 4,
  kTmaS64 = 5,
  kTmaF16 = 6,
  kTmaF32 = 7,
  kTmaF64 = 8,
  kTmaBf16 = 9,
  kTmaF32Ftz = 10,
};

/// The emulator's private layout of the opaque 128-byte CUtensorMap.
struct TensorMap {
  uint32_t magic;
  uint8_t dataType, rank, interleave, swizzle; // cuda.h enum values
  uint8_t l2Promotion, oobFill, elementBytes, pad0;
  uint64_t address;
  uint64_t dims[5];
  uint64_t strides[5]; // bytes; strides[0] = element size
  uint16_t box[5];
  uint8_t elementStrides[5];
};
static_assert(sizeof(TensorMap) <= 128, "CUtensorMap is 128 bytes");
constexpr uint32_t kTensorMapMagic = 0x4b544d31; // "KTM1"

/// Applies cuTensorMapEncodeTiled's documented rules; on success fills
/// `out` (and returns ""), otherwise returns the rule that failed.
std::string encodeTensorMap(TensorMap &out, int dataType, unsigned rank,
                            uint64_t address, const uint64_t *dims,
                            const uint64_t *strides, const unsigned *box,
                            const unsigned *elementStrides, int interleave,
                            int swizzle, int l2Promotion, int oobFill);

/// The swizzle of a tensor map (cuda.h CU_TENSOR_MAP_SWIZZLE_*) in
/// descriptor terms.
Swizzle tensorMapSwizzle(int cuSwizzle);

} // namespace kiln::emu

#endif // KILN_EMU_HOPPER_H

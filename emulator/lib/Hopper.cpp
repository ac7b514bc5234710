//===- Hopper.cpp - sm_90a data layouts -----------------------------------===//

#include "kiln/emu/Hopper.h"

#include <cmath>
#include <cstring>

namespace kiln::emu {

float bf16ToF32(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t f32ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) // NaN: keep it quiet
    return static_cast<uint16_t>((u >> 16) | 0x40);
  uint32_t lsb = (u >> 16) & 1;
  u += 0x7fff + lsb;
  return static_cast<uint16_t>(u >> 16);
}

float f16ToF32(uint16_t h) {
  uint32_t sign = (h >> 15) & 1, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  float v;
  if (exp == 0)
    v = std::ldexp(static_cast<float>(man), -24);
  else if (exp == 31)
    v = man ? std::nanf("") : INFINITY;
  else
    v = std::ldexp(static_cast<float>(man | 0x400), static_cast<int>(exp) - 25);
  return sign ? -v : v;
}

uint16_t f32ToF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000);
  float a = std::fabs(f);
  if (std::isnan(f))
    return sign | 0x7e00;
  if (a >= 65520.0f) // rounds to infinity
    return sign | 0x7c00;
  if (a < std::ldexp(1.0f, -14)) { // subnormal: multiples of 2^-24
    float q = std::nearbyint(a * std::ldexp(1.0f, 24));
    return sign | static_cast<uint16_t>(q);
  }
  int e;
  float m = std::frexp(a, &e);                // a = m * 2^e, m in [0.5, 1)
  float scaled = std::nearbyint(m * 2048.0f); // 11 significant bits
  if (scaled >= 2048.0f) {
    scaled /= 2;
    ++e;
  }
  uint16_t exp = static_cast<uint16_t>(e - 1 + 15);
  if (exp >= 31)
    return sign | 0x7c00;
  return sign | static_cast<uint16_t>(exp << 10) |
         (static_cast<uint16_t>(scaled) & 0x3ff);
}

unsigned swizzleSpan(Swizzle s) {
  switch (s) {
  case Swizzle::None:
    return 16;
  case Swizzle::B32:
    return 32;
  case Swizzle::B64:
    return 64;
  case Swizzle::B128:
    return 128;
  }
  return 16;
}

uint32_t swizzleAddress(uint32_t addr, Swizzle s) {
  unsigned bits = s == Swizzle::B128  ? 3
                  : s == Swizzle::B64 ? 2
                  : s == Swizzle::B32 ? 1
                                      : 0;
  if (!bits)
    return addr;
  uint32_t mask = (1u << bits) - 1;
  return addr ^ (((addr >> 7) & mask) << 4);
}

MatrixDescriptor decodeDescriptor(uint64_t bits) {
  MatrixDescriptor d;
  d.start = static_cast<uint32_t>(bits & 0x3fff) << 4;
  d.leadingBytes = static_cast<uint32_t>((bits >> 16) & 0x3fff) << 4;
  d.strideBytes = static_cast<uint32_t>((bits >> 32) & 0x3fff) << 4;
  d.baseOffset = static_cast<uint8_t>((bits >> 49) & 7);
  d.swizzle = static_cast<Swizzle>((bits >> 62) & 3);
  return d;
}

uint64_t encodeDescriptor(const MatrixDescriptor &d) {
  return (static_cast<uint64_t>(d.start >> 4) & 0x3fff) |
         ((static_cast<uint64_t>(d.leadingBytes >> 4) & 0x3fff) << 16) |
         ((static_cast<uint64_t>(d.strideBytes >> 4) & 0x3fff) << 32) |
         (static_cast<uint64_t>(d.baseOffset & 7) << 49) |
         (static_cast<uint64_t>(d.swizzle) << 62);
}

uint32_t operandAddress(const MatrixDescriptor &d, bool mnMajor, unsigned mn,
                        unsigned k) {
  // The canonical layouts of the ISA ("Shared Memory Matrix Layout"), for
  // 2-byte elements (8 per 16-byte chunk), in bytes before swizzling.
  uint32_t a;
  if (d.swizzle == Swizzle::None) {
    // Core matrices of 8 rows x 16 bytes.
    if (!mnMajor)
      a = (mn % 8) * 16 + (mn / 8) * d.strideBytes + (k % 8) * 2 +
          (k / 8) * d.leadingBytes;
    else
      a = (mn % 8) * 2 + (mn / 8) * d.strideBytes + (k % 8) * 16 +
          (k / 8) * d.leadingBytes;
  } else {
    unsigned span = swizzleSpan(d.swizzle); // bytes of one swizzled row
    if (!mnMajor) // rows of `span` bytes along k; 8-row groups at SBO
      a = (mn % 8) * span + (mn / 8) * d.strideBytes + k * 2;
    else // rows of `span` bytes along mn; k rows; 8-k groups at SBO
      a = (mn % (span / 2)) * 2 + (mn / (span / 2)) * d.leadingBytes +
          (k % 8) * span + (k / 8) * d.strideBytes;
  }
  return swizzleAddress(d.start + a, d.swizzle);
}

Coord accumulatorCoord(unsigned warp, unsigned lane, unsigned i) {
  unsigned j = i / 4, h = (i / 2) % 2, e = i % 2;
  return {16 * warp + lane / 4 + 8 * h, 8 * j + 2 * (lane % 4) + e};
}

Coord aFragmentCoord(unsigned warp, unsigned lane, unsigned r, unsigned h) {
  unsigned j = r / 2, half = r % 2;
  return {16 * warp + lane / 4 + 8 * half, 8 * j + 2 * (lane % 4) + h};
}

Swizzle tensorMapSwizzle(int cuSwizzle) {
  switch (cuSwizzle) {
  case 1:
    return Swizzle::B32;
  case 2:
    return Swizzle::B64;
  case 3:
    return Swizzle::B128;
  default:
    return Swizzle::None;
  }
}

std::string encodeTensorMap(TensorMap &m, int dataType, unsigned rank,
                            uint64_t address, const uint64_t *dims,
                            const uint64_t *strides, const unsigned *box,
                            const unsigned *elementStrides, int interleave,
                            int swizzle, int l2Promotion, int oobFill) {
  static const unsigned sizes[] = {1, 2, 4, 4, 8, 8, 2, 4, 8, 2, 4, 4, 4};
  if (dataType < 0 || dataType > 12)
    return "tensorDataType " + std::to_string(dataType) +
           " is not a "
           "CUtensorMapDataType";
  if (dataType > 10)
    return "tensorDataType " + std::to_string(dataType) +
           " (tf32) is not modeled";
  unsigned elem = sizes[dataType];
  if (rank < 1 || rank > 5)
    return "tensorRank " + std::to_string(rank) + " outside 1..5";
  if (interleave != 0)
    return "interleaved layouts are not modeled (interleave " +
           std::to_string(interleave) + ")";
  if (swizzle < 0 || swizzle > 3)
    return "swizzle " + std::to_string(swizzle) +
           " is not a "
           "CUtensorMapSwizzle";
  if (oobFill < 0 || oobFill > 1)
    return "oobFill " + std::to_string(oobFill) + " is not valid";
  if (l2Promotion < 0 || l2Promotion > 3)
    return "l2Promotion " + std::to_string(l2Promotion) + " is not valid";
  if (address % 16)
    return "globalAddress must be 16-byte aligned";
  std::memset(&m, 0, sizeof m);
  m.magic = kTensorMapMagic;
  m.dataType = static_cast<uint8_t>(dataType);
  m.rank = static_cast<uint8_t>(rank);
  m.interleave = static_cast<uint8_t>(interleave);
  m.swizzle = static_cast<uint8_t>(swizzle);
  m.l2Promotion = static_cast<uint8_t>(l2Promotion);
  m.oobFill = static_cast<uint8_t>(oobFill);
  m.elementBytes = static_cast<uint8_t>(elem);
  m.address = address;
  m.strides[0] = elem;
  for (unsigned i = 0; i < rank; ++i) {
    std::string dim = "[" + std::to_string(i) + "]";
    if (dims[i] == 0 || dims[i] > (1ull << 32))
      return "globalDim" + dim + " must be in 1..2^32";
    if (box[i] == 0 || box[i] > 256)
      return "boxDim" + dim + " must be in 1..256";
    if (elementStrides[i] == 0 || elementStrides[i] > 8)
      return "elementStrides" + dim + " must be in 1..8";
    if (elementStrides[i] != 1)
      return "elementStrides" + dim + " != 1 is not modeled";
    m.dims[i] = dims[i];
    m.box[i] = static_cast<uint16_t>(box[i]);
    m.elementStrides[i] = static_cast<uint8_t>(elementStrides[i]);
    if (i > 0) {
      uint64_t s = strides[i - 1];
      std::string sd = "[" + std::to_string(i - 1) + "]";
      if (s % 16)
        return "globalStrides" + sd + " must be a multiple of 16";
      if (s >= (1ull << 40))
        return "globalStrides" + sd + " must be below 2^40";
      m.strides[i] = s;
    }
  }
  if ((box[0] * elem) % 16)
    return "boxDim[0] * element size must be a multiple of 16 bytes";
  if (swizzle != 0) {
    unsigned span = swizzleSpan(tensorMapSwizzle(swizzle));
    if (box[0] * elem > span)
      return "boxDim[0] * element size (" + std::to_string(box[0] * elem) +
             " bytes) exceeds the swizzle span (" + std::to_string(span) +
             " bytes)";
  }
  return "";
}

} // namespace kiln::emu

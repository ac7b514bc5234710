//===- EmulatorTest.cpp - The sm_90a emulator against hand-worked values --===//
//
// Layouts from the PTX ISA's tables (swizzle, matrix descriptors, canonical
// operand layouts, register fragments), number conversions, the tensor map
// rules, and small PTX kernels run through the emulator: mbarrier phase
// sequences, shuffles, bit fields, conversions, divergence.
//
//===----------------------------------------------------------------------===//

#include "kiln/emu/Device.h"
#include "kiln/emu/Hopper.h"
#include "kiln/emu/Ptx.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <set>
#include <vector>

using namespace kiln::emu;

namespace {

TEST(EmulatorSwizzle, HandWorkedAddresses) {
  // 128B: chunk bits 4-6 XOR row-in-atom bits 7-9.
  EXPECT_EQ(swizzleAddress(0x000, Swizzle::B128), 0x000u);
  EXPECT_EQ(swizzleAddress(0x080, Swizzle::B128), 0x090u); // row 1 chunk 0
  EXPECT_EQ(swizzleAddress(0x3f0, Swizzle::B128), 0x380u); // row 7 chunk 7
  EXPECT_EQ(swizzleAddress(0x4a4, Swizzle::B128), 0x4b4u); // next atom, row 1
  // 64B: bits 4-5 XOR bits 7-8.
  EXPECT_EQ(swizzleAddress(0x080, Swizzle::B64), 0x090u);
  EXPECT_EQ(swizzleAddress(0x180, Swizzle::B64), 0x1b0u);
  EXPECT_EQ(swizzleAddress(0x240, Swizzle::B64), 0x240u); // bits 7-8 = 0
  // 32B: bit 4 XOR bit 7.
  EXPECT_EQ(swizzleAddress(0x080, Swizzle::B32), 0x090u);
  EXPECT_EQ(swizzleAddress(0x100, Swizzle::B32), 0x100u);
  EXPECT_EQ(swizzleAddress(0x123, Swizzle::None), 0x123u);
}

TEST(EmulatorSwizzle, InvolutionWithinAtoms) {
  for (Swizzle s : {Swizzle::B32, Swizzle::B64, Swizzle::B128}) {
    for (uint32_t a = 0; a < 8192; ++a) {
      uint32_t b = swizzleAddress(a, s);
      EXPECT_EQ(swizzleAddress(b, s), a);
      EXPECT_EQ(a / 1024, b / 1024); // stays in its 1 KB atom
      EXPECT_EQ(a % 16, b % 16);     // moves whole 16-byte chunks
    }
  }
}

TEST(EmulatorDescriptor, DecodesKilnAndUpstreamConstants) {
  // Kiln's GEMM descriptor: 128B swizzle, SBO 1024, LBO 16.
  MatrixDescriptor d = decodeDescriptor(0x4000004000010000ull | (0x4400 >> 4));
  EXPECT_EQ(d.swizzle, Swizzle::B128);
  EXPECT_EQ(d.strideBytes, 1024u);
  EXPECT_EQ(d.leadingBytes, 16u);
  EXPECT_EQ(d.start, 0x4400u);
  EXPECT_EQ(d.baseOffset, 0);
  // Upstream's B descriptor (4611686293338849280): SBO 1024, LBO 8192.
  MatrixDescriptor b = decodeDescriptor(4611686293338849280ull);
  EXPECT_EQ(b.swizzle, Swizzle::B128);
  EXPECT_EQ(b.strideBytes, 1024u);
  EXPECT_EQ(b.leadingBytes, 8192u);
  for (uint64_t bits :
       {0x4000004000010000ull, 0x8000002000400123ull,
        0xc00e00100020ffffull & ~(0x3ull << 14) & ~(3ull << 30) &
            ~(0xfull << 46) & ~(0x3ffull << 52)})
    EXPECT_EQ(encodeDescriptor(decodeDescriptor(bits)), bits);
}

TEST(EmulatorDescriptor, CanonicalLayouts) {
  MatrixDescriptor k128{1024, 16, 1024, 0, Swizzle::B128};
  // K-major, 128B: rows of 128 bytes, 8-row groups at SBO, then swizzled.
  EXPECT_EQ(operandAddress(k128, false, 0, 0), 0x400u);
  EXPECT_EQ(operandAddress(k128, false, 0, 8), 0x410u);
  EXPECT_EQ(operandAddress(k128, false, 1, 0), 0x490u);
  EXPECT_EQ(operandAddress(k128, false, 9, 0), 0x890u);
  // (7, 15): 1024 + 7*128 + 30 = 0x79e; chunk 1 of row 7 becomes chunk 6.
  EXPECT_EQ(operandAddress(k128, false, 7, 15), 0x7eeu);
  // MN-major, 128B: 64 contiguous elements per 128-byte row along N, k rows
  // 128 bytes apart, 8-k groups at SBO, 64-column blocks at LBO.
  MatrixDescriptor mn{1024, 8192, 1024, 0, Swizzle::B128};
  EXPECT_EQ(operandAddress(mn, true, 5, 3), 0x5bau);
  EXPECT_EQ(operandAddress(mn, true, 64, 0), 0x400u + 8192);
  EXPECT_EQ(operandAddress(mn, true, 0, 8), 0x400u + 1024);
  // No swizzle, K-major: 8x16-byte core matrices, SBO between row groups,
  // LBO between the two k halves.
  MatrixDescriptor plain{0, 256, 512, 0, Swizzle::None};
  EXPECT_EQ(operandAddress(plain, false, 3, 5), 3u * 16 + 5 * 2);
  EXPECT_EQ(operandAddress(plain, false, 8, 0), 512u);
  EXPECT_EQ(operandAddress(plain, false, 0, 8), 256u);
  EXPECT_EQ(operandAddress(plain, true, 3, 5), 3u * 2 + 5 * 16);
}

TEST(EmulatorFragments, AccumulatorAndAFromRegisters) {
  EXPECT_EQ(accumulatorCoord(1, 5, 0).row, 17u);
  EXPECT_EQ(accumulatorCoord(1, 5, 0).col, 2u);
  EXPECT_EQ(accumulatorCoord(1, 5, 3).row, 25u);
  EXPECT_EQ(accumulatorCoord(1, 5, 3).col, 3u);
  EXPECT_EQ(accumulatorCoord(1, 5, 4).col, 10u);
  EXPECT_EQ(aFragmentCoord(0, 4, 1, 1).row, 9u);
  EXPECT_EQ(aFragmentCoord(0, 4, 1, 1).col, 1u);
  EXPECT_EQ(aFragmentCoord(3, 31, 3, 1).row, 63u);
  EXPECT_EQ(aFragmentCoord(3, 31, 3, 1).col, 15u);
  // Every m64nNk16 shape: the 128 threads' N/2 registers cover D once.
  for (unsigned n = 8; n <= 256; n += 8) {
    std::set<unsigned> seen;
    for (unsigned w = 0; w < 4; ++w)
      for (unsigned l = 0; l < 32; ++l)
        for (unsigned i = 0; i < n / 2; ++i) {
          Coord c = accumulatorCoord(w, l, i);
          ASSERT_LT(c.row, 64u);
          ASSERT_LT(c.col, n);
          seen.insert(c.row * n + c.col);
        }
    EXPECT_EQ(seen.size(), 64u * n) << "N = " << n;
  }
  std::set<unsigned> a;
  for (unsigned w = 0; w < 4; ++w)
    for (unsigned l = 0; l < 32; ++l)
      for (unsigned r = 0; r < 4; ++r)
        for (unsigned h = 0; h < 2; ++h) {
          Coord c = aFragmentCoord(w, l, r, h);
          a.insert(c.row * 16 + c.col);
        }
  EXPECT_EQ(a.size(), 64u * 16);
}

TEST(EmulatorNumbers, Bf16AndF16Rounding) {
  EXPECT_EQ(f32ToBf16(1.0f), 0x3f80);
  float tieEven, tieOdd, nan = std::nanf("");
  uint32_t u = 0x3f808000; // 1 + 2^-8: halfway, rounds to even (down)
  std::memcpy(&tieEven, &u, 4);
  u = 0x3f818000; // halfway above an odd value: rounds up
  std::memcpy(&tieOdd, &u, 4);
  EXPECT_EQ(f32ToBf16(tieEven), 0x3f80);
  EXPECT_EQ(f32ToBf16(tieOdd), 0x3f82);
  EXPECT_TRUE(std::isnan(bf16ToF32(f32ToBf16(nan))));
  EXPECT_EQ(bf16ToF32(0xc040), -3.0f);
  EXPECT_EQ(f32ToF16(65504.0f), 0x7bff);
  EXPECT_EQ(f32ToF16(65520.0f), 0x7c00); // rounds to infinity
  EXPECT_EQ(f32ToF16(1.0f), 0x3c00);
  EXPECT_EQ(f16ToF32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16ToF32(f32ToF16(0.1f)), 0.0999755859375f);
}

TEST(EmulatorTensorMap, DriverRules) {
  alignas(64) TensorMap m;
  uint64_t dims[2] = {64, 128}, strides[1] = {128};
  unsigned box[2] = {64, 32}, es[2] = {1, 1};
  EXPECT_EQ(encodeTensorMap(m, kTmaBf16, 2, 0x1000, dims, strides, box, es, 0,
                            3, 0, 0),
            "");
  EXPECT_EQ(m.box[1], 32);
  EXPECT_EQ(m.strides[1], 128u);
  EXPECT_NE(encodeTensorMap(m, kTmaBf16, 2, 0x1008, dims, strides, box, es, 0,
                            3, 0, 0)
                .find("16-byte aligned"),
            std::string::npos);
  uint64_t badStride[1] = {120};
  EXPECT_NE(encodeTensorMap(m, kTmaBf16, 2, 0x1000, dims, badStride, box, es, 0,
                            3, 0, 0)
                .find("multiple of 16"),
            std::string::npos);
  unsigned wide[2] = {128, 8}; // 256 bytes > the 128-byte swizzle span
  EXPECT_NE(encodeTensorMap(m, kTmaBf16, 2, 0x1000, dims, strides, wide, es, 0,
                            3, 0, 0)
                .find("swizzle span"),
            std::string::npos);
  unsigned big[2] = {64, 257};
  EXPECT_NE(encodeTensorMap(m, kTmaBf16, 2, 0x1000, dims, strides, big, es, 0,
                            0, 0, 0)
                .find("boxDim[1]"),
            std::string::npos);
  EXPECT_NE(encodeTensorMap(m, kTmaBf16, 6, 0x1000, dims, strides, box, es, 0,
                            0, 0, 0)
                .find("tensorRank"),
            std::string::npos);
}

/// Runs a one-block kernel on the emulated device; `out` receives `words`
/// 32-bit results from the kernel's only parameter.
std::string runKernel(const std::string &body, unsigned threads,
                      std::vector<uint32_t> &out, size_t words,
                      const char *extraDecls = "") {
  std::string ptx = std::string(".version 8.0\n.target sm_90a\n"
                                ".address_size 64\n") +
                    ".visible .entry k(.param .u64 out)\n{\n" + extraDecls +
                    body + "\n}\n";
  Device &d = Device::get();
  std::string error;
  auto m = d.load(ptx, error);
  if (!m)
    return error;
  uint64_t buffer;
  if (!d.allocate(buffer, words * 4, error))
    return error;
  unsigned grid[3] = {1, 1, 1}, block[3] = {threads, 1, 1};
  void *params[] = {&buffer};
  if (!d.launch(*m, m->ptx->functions[0], grid, block, 0, params, error)) {
    d.release(buffer);
    return error;
  }
  out.resize(words);
  std::memcpy(out.data(), reinterpret_cast<void *>(buffer), words * 4);
  d.release(buffer);
  return "";
}

TEST(EmulatorKernels, MbarrierPhaseSequence) {
  // One thread samples the barrier's phases with test_wait while counting
  // arrivals of a 2-count barrier; results land in out[0..5].
  std::vector<uint32_t> out;
  std::string error = runKernel(R"(
  .reg .b64 %rd<8>; .reg .b32 %r<16>; .reg .pred %p<8>;
  .shared .align 8 .b8 bar[8];
  ld.param.u64 %rd1, [out];
  mov.u32 %r1, 2;
  mbarrier.init.shared.b64 [bar], %r1;
  mbarrier.test_wait.parity.shared.b64 %p1, [bar], 0;
  mbarrier.arrive.shared.b64 %rd2, [bar];
  mbarrier.test_wait.parity.shared.b64 %p2, [bar], 0;
  mbarrier.arrive.shared.b64 %rd3, [bar];
  mbarrier.test_wait.parity.shared.b64 %p3, [bar], 0;
  mbarrier.test_wait.parity.shared.b64 %p4, [bar], 1;
  mbarrier.arrive.shared.b64 %rd4, [bar];
  mbarrier.arrive.shared.b64 %rd5, [bar];
  mbarrier.test_wait.parity.shared.b64 %p5, [bar], 1;
  mbarrier.test_wait.shared.b64 %p6, [bar], %rd4;
  selp.u32 %r2, 1, 0, %p1; st.global.u32 [%rd1], %r2;
  selp.u32 %r3, 1, 0, %p2; st.global.u32 [%rd1+4], %r3;
  selp.u32 %r4, 1, 0, %p3; st.global.u32 [%rd1+8], %r4;
  selp.u32 %r5, 1, 0, %p4; st.global.u32 [%rd1+12], %r5;
  selp.u32 %r6, 1, 0, %p5; st.global.u32 [%rd1+16], %r6;
  selp.u32 %r7, 1, 0, %p6; st.global.u32 [%rd1+20], %r7;
  ret;)",
                                1, out, 6);
  ASSERT_EQ(error, "");
  // Phase 0 incomplete, still incomplete after one arrival, complete after
  // two; parity 1 (phase 1) incomplete until two more arrivals complete it.
  EXPECT_EQ(out, (std::vector<uint32_t>{0, 0, 1, 0, 1, 1}));
}

TEST(EmulatorKernels, ShuffleBitFieldAndConversions) {
  std::vector<uint32_t> out;
  std::string error = runKernel(R"(
  .reg .b64 %rd<8>; .reg .b32 %r<16>; .reg .pred %p<4>; .reg .b16 %rs<4>;
  ld.param.u64 %rd1, [out];
  mov.u32 %r1, %tid.x;
  shfl.sync.bfly.b32 %r2, %r1, 1, 31, -1;
  shfl.sync.up.b32 %r3, %r1, 3, 0, -1;
  shfl.sync.idx.b32 %r4, %r1, 7, 31, -1;
  mov.u32 %r9, 0xf0f0a5c3;
  bfe.u32 %r5, %r9, 4, 8;
  bfe.s32 %r6, %r9, 28, 8;
  mov.f32 %r10, 0f3F808000;
  mov.f32 %r11, 0fC0400000;
  cvt.rn.bf16x2.f32 %r7, %r11, %r10;
  cvt.rzi.s32.f32 %r8, %r11;
  mul.wide.u32 %rd2, %r1, 4;
  add.s64 %rd3, %rd1, %rd2;
  st.global.u32 [%rd3], %r2;
  st.global.u32 [%rd3+128], %r3;
  st.global.u32 [%rd3+256], %r4;
  setp.ne.u32 %p1, %r1, 0;
  @%p1 bra DONE;
  st.global.u32 [%rd1+384], %r5;
  st.global.u32 [%rd1+388], %r6;
  st.global.u32 [%rd1+392], %r7;
  st.global.u32 [%rd1+396], %r8;
DONE:
  ret;)",
                                32, out, 100);
  ASSERT_EQ(error, "");
  for (uint32_t l = 0; l < 32; ++l) {
    EXPECT_EQ(out[l], l ^ 1);
    EXPECT_EQ(out[32 + l], l >= 3 ? l - 3 : l); // below the segment: own
    EXPECT_EQ(out[64 + l], 7u);
  }
  EXPECT_EQ(out[96], 0x5cu);       // bits 4..11 of 0xf0f0a5c3
  EXPECT_EQ(out[97], 0xffffffffu); // bits 28..35, sign bit 31 replicated
  EXPECT_EQ(out[98], 0xc0403f80u); // first source to the upper half; tie even
  EXPECT_EQ(out[99], 0xfffffffdu); // -3
}

TEST(EmulatorKernels, DivergentLanesReconverge) {
  // Odd lanes take a longer path; the shuffle after the join needs all 32.
  std::vector<uint32_t> out;
  std::string error = runKernel(R"(
  .reg .b64 %rd<8>; .reg .b32 %r<16>; .reg .pred %p<4>;
  ld.param.u64 %rd1, [out];
  mov.u32 %r1, %tid.x;
  and.b32 %r2, %r1, 1;
  setp.eq.u32 %p1, %r2, 0;
  mov.u32 %r3, 10;
  @%p1 bra EVEN;
  mov.u32 %r4, 0;
LOOP:
  add.u32 %r3, %r3, %r1;
  add.u32 %r4, %r4, 1;
  setp.lt.u32 %p2, %r4, 3;
  @%p2 bra LOOP;
EVEN:
  shfl.sync.bfly.b32 %r5, %r3, 1, 31, -1;
  mul.wide.u32 %rd2, %r1, 4;
  add.s64 %rd3, %rd1, %rd2;
  st.global.u32 [%rd3], %r5;
  ret;)",
                                32, out, 32);
  ASSERT_EQ(error, "");
  for (uint32_t l = 0; l < 32; ++l) {
    uint32_t partner = l ^ 1;
    uint32_t expected = partner & 1 ? 10 + 3 * partner : 10;
    EXPECT_EQ(out[l], expected) << "lane " << l;
  }
}

TEST(EmulatorKernels, ReportsNameKernelThreadLineAndRule) {
  std::vector<uint32_t> out;
  std::string error = runKernel(R"(
  .reg .b64 %rd<8>; .reg .b32 %r<4>;
  ld.param.u64 %rd1, [out];
  mov.u32 %r1, 7;
  st.global.u32 [%rd1+4096], %r1;
  ret;)",
                                32, out, 4);
  EXPECT_NE(error.find("kernel k block (0,0,0) thread 0 (warp 0 lane 0) ptx "
                       "line 10 `st.global.u32`: out-of-bounds global store"),
            std::string::npos)
      << error;
  error = runKernel(R"(
  .reg .b64 %rd<8>; .reg .b32 %r<4>;
  .shared .align 8 .b8 bar[8];
  mov.u32 %r1, 1;
  mbarrier.init.shared.b64 [bar], %r1;
  bar.sync 0;
  { .reg .pred P; W: mbarrier.try_wait.parity.shared.b64 P, [bar], 0; @P bra.uni D; bra.uni W; D: }
  ret;)",
                    64, out, 1);
  EXPECT_NE(error.find("deadlock"), std::string::npos) << error;
  EXPECT_NE(error.find("mbarrier at shared offset 1024: phase 0, 1 of 1 "
                       "arrivals pending"),
            std::string::npos)
      << error;
}

TEST(EmulatorParser, RefusesUnknownFormsWithTheirLine) {
  std::string error;
  auto m =
      parsePtx(".version 8.0\n.target sm_90a\n.address_size 64\n"
               ".visible .entry k()\n{\n  tex.2d.v4.f32.f32 {%f1}, [t];\n}\n",
               error);
  EXPECT_FALSE(m);
  EXPECT_EQ(error, "ptx:6: unsupported instruction form 'tex.2d.v4.f32.f32'");
}

} // namespace

namespace {

TEST(EmulatorKernels, TmaBoxWithOutOfBoundsFillAndSwizzle) {
  // A 40x24 u32 tensor (value = row * 1000 + col); one 16x8 box (64-byte
  // rows) at (col 20, row 36): columns 24.. and rows 40.. lie outside and
  // must read 0. The map asks for 64-byte swizzle; the kernel undoes it by
  // hand (bits 4-5 XOR bits 7-8) while copying the box to `out`.
  Device &d = Device::get();
  std::string error;
  const unsigned rows = 40, cols = 24;
  uint64_t tensor, out, mapDev;
  ASSERT_TRUE(d.allocate(tensor, rows * cols * 4, error));
  ASSERT_TRUE(d.allocate(out, 16 * 8 * 4, error));
  ASSERT_TRUE(d.allocate(mapDev, 128, error));
  auto *t = reinterpret_cast<uint32_t *>(tensor);
  for (unsigned r = 0; r < rows; ++r)
    for (unsigned c = 0; c < cols; ++c)
      t[r * cols + c] = r * 1000 + c;
  alignas(64) TensorMap map;
  uint64_t dims[2] = {cols, rows}, strides[1] = {cols * 4};
  unsigned box[2] = {16, 8}, es[2] = {1, 1};
  ASSERT_EQ(encodeTensorMap(map, kTmaU32, 2, tensor, dims, strides, box, es, 0,
                            2 /*64B*/, 0, 0),
            "");
  std::memcpy(reinterpret_cast<void *>(mapDev), &map, sizeof map);
  std::string ptx = R"(.version 8.0
.target sm_90a
.address_size 64
.visible .entry k(.param .u64 out, .param .u64 map)
{
  .reg .b64 %rd<16>; .reg .b32 %r<16>; .reg .pred %p<4>;
  .shared .align 1024 .b8 tile[512];
  .shared .align 8 .b8 bar[8];
  ld.param.u64 %rd1, [out];
  ld.param.u64 %rd2, [map];
  mov.u32 %r1, 1;
  mbarrier.init.shared.b64 [bar], %r1;
  mov.u32 %r2, 20;
  mov.u32 %r3, 36;
  mbarrier.arrive.expect_tx.shared.b64 %rd3, [bar], 512;
  cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [tile], [%rd2, {%r2, %r3}], [bar];
W:
  mbarrier.try_wait.parity.shared.b64 %p1, [bar], 0;
  @!%p1 bra W;
  mov.u32 %r4, 0;
L:
  shl.b32 %r5, %r4, 2;
  mov.u32 %r6, tile;
  add.u32 %r7, %r6, %r5;
  shr.u32 %r8, %r7, 7;
  and.b32 %r8, %r8, 3;
  shl.b32 %r8, %r8, 4;
  xor.b32 %r9, %r7, %r8;
  ld.shared.u32 %r10, [%r9];
  cvt.u64.u32 %rd4, %r5;
  add.s64 %rd5, %rd1, %rd4;
  st.global.u32 [%rd5], %r10;
  add.u32 %r4, %r4, 1;
  setp.lt.u32 %p2, %r4, 128;
  @%p2 bra L;
  ret;
}
)";
  auto m = d.load(ptx, error);
  ASSERT_TRUE(m) << error;
  unsigned grid[3] = {1, 1, 1}, block[3] = {1, 1, 1};
  void *params[] = {&out, &mapDev};
  ASSERT_TRUE(d.launch(*m, m->ptx->functions[0], grid, block, 0, params, error))
      << error;
  auto *o = reinterpret_cast<uint32_t *>(out);
  for (unsigned r = 0; r < 8; ++r)
    for (unsigned c = 0; c < 16; ++c) {
      unsigned gr = 36 + r, gc = 20 + c;
      uint32_t want = gr < rows && gc < cols ? gr * 1000 + gc : 0;
      EXPECT_EQ(o[r * 16 + c], want) << "box row " << r << " col " << c;
    }
  d.release(tensor);
  d.release(out);
  d.release(mapDev);
}

} // namespace

namespace {

/// Values worked out by hand from the ISA's definitions, one per line of the
/// kernel below (thread 0 stores each 32- or 64-bit result in order).
TEST(EmulatorKernels, AluFamiliesByHand) {
  std::vector<uint32_t> out;
  std::string error = runKernel(R"(
  .reg .b64 %rd<32>; .reg .b32 %r<64>; .reg .pred %p<16>; .reg .b16 %rs<8>;
  ld.param.u64 %rd1, [out];
  // integer
  mov.u32 %r1, 7; mov.u32 %r2, -3;
  div.s32 %r3, %r1, %r2;              // -2 (truncates)
  rem.s32 %r4, %r1, %r2;              // 1
  mov.u64 %rd2, 0xffffffffffffffff;
  mul.hi.u64 %rd3, %rd2, %rd2;        // 0xfffffffffffffffe
  mov.u64 %rd4, -5;
  shr.s64 %rd5, %rd4, 1;              // -3
  shr.u64 %rd6, %rd4, 60;             // 15
  mad.lo.s64 %rd7, %rd4, 3, 100;      // 85
  mul.wide.s32 %rd8, %r2, %r1;        // -21
  min.s64 %rd9, %rd4, 2;              // -5
  max.u64 %rd10, %rd4, 2;             // 0xfffffffffffffffb
  neg.s64 %rd11, %rd4;                // 5
  not.b32 %r5, %r1;                   // 0xfffffff8
  bfe.s64 %rd12, %rd4, 60, 8;         // all ones (sign of bit 63)
  mov.u16 %rs1, 1000; mov.u16 %rs2, 7;
  div.u16 %rs3, %rs1, %rs2;           // 142
  cvt.u32.u16 %r6, %rs3;
  // float
  mov.f32 %r7, 0f7FC00000;            // NaN
  mov.f32 %r8, 0f3F800000;            // 1
  max.f32 %r9, %r7, %r8;              // 1 (NaN ignored)
  max.NaN.f32 %r10, %r7, %r8;         // canonical NaN 0x7fffffff
  setp.nan.f32 %p1, %r7, %r8;         // true
  setp.gt.f32 %p2, %r7, %r8;          // false (unordered)
  setp.gtu.f32 %p3, %r7, %r8;         // true
  selp.u32 %r11, 1, 0, %p1;
  selp.u32 %r12, 2, 0, %p2;
  selp.u32 %r13, 4, 0, %p3;
  or.b32 %r14, %r11, %r12;
  or.b32 %r14, %r14, %r13;            // 5
  mov.f64 %rd13, 0d4004000000000000;  // 2.5
  cvt.rni.s64.f64 %rd14, %rd13;       // 2 (ties to even)
  cvt.rzi.s64.f64 %rd15, %rd13;       // 2
  mov.f64 %rd16, 0dC004000000000000;  // -2.5
  cvt.rmi.s64.f64 %rd17, %rd16;       // -3
  cvt.rzi.f64.f64 %rd18, %rd16;       // -2.0
  mov.f32 %r15, 0f4F800000;           // 2^32
  cvt.rzi.u32.f32 %r16, %r15;         // saturates to 0xffffffff
  cvt.rzi.s32.f32 %r17, %r7;          // NaN -> 0
  mov.u64 %rd19, 0x20000001;          // 2^29 + 1
  cvt.rn.f32.s64 %r18, %rd19;         // rounds to 2^29 = 0x4e000000
  mul.rn.f64 %rd20, %rd13, %rd16;     // -6.25
  rcp.rn.f32 %r19, %r15;              // 2^-32 = 0x2f800000
  div.rn.f32 %r20, %r8, 0f40400000;   // 1/3 = 0x3eaaaaab
  fma.rn.f32 %r21, %r8, %r8, %r8;     // 2
  // stores
  st.global.u32 [%rd1], %r3;
  st.global.u32 [%rd1+4], %r4;
  st.global.u64 [%rd1+8], %rd3;
  st.global.u64 [%rd1+16], %rd5;
  st.global.u64 [%rd1+24], %rd6;
  st.global.u64 [%rd1+32], %rd7;
  st.global.u64 [%rd1+40], %rd8;
  st.global.u64 [%rd1+48], %rd9;
  st.global.u64 [%rd1+56], %rd10;
  st.global.u64 [%rd1+64], %rd11;
  st.global.u32 [%rd1+72], %r5;
  st.global.u32 [%rd1+76], %r6;
  st.global.u64 [%rd1+80], %rd12;
  st.global.u32 [%rd1+88], %r9;
  st.global.u32 [%rd1+92], %r10;
  st.global.u32 [%rd1+96], %r14;
  st.global.u32 [%rd1+100], %r16;
  st.global.u64 [%rd1+104], %rd14;
  st.global.u64 [%rd1+112], %rd15;
  st.global.u64 [%rd1+120], %rd17;
  st.global.u64 [%rd1+128], %rd18;
  st.global.u32 [%rd1+136], %r17;
  st.global.u32 [%rd1+140], %r18;
  st.global.u64 [%rd1+144], %rd20;
  st.global.u32 [%rd1+152], %r19;
  st.global.u32 [%rd1+156], %r20;
  st.global.u32 [%rd1+160], %r21;
  ret;)",
                                1, out, 41);
  ASSERT_EQ(error, "");
  auto u64 = [&](size_t word) {
    return uint64_t(out[word]) | (uint64_t(out[word + 1]) << 32);
  };
  auto f64 = [&](size_t word) {
    uint64_t b = u64(word);
    double d;
    std::memcpy(&d, &b, 8);
    return d;
  };
  EXPECT_EQ(int32_t(out[0]), -2);
  EXPECT_EQ(int32_t(out[1]), 1);
  EXPECT_EQ(u64(2), 0xfffffffffffffffeull);
  EXPECT_EQ(int64_t(u64(4)), -3);
  EXPECT_EQ(u64(6), 15u);
  EXPECT_EQ(int64_t(u64(8)), 85);
  EXPECT_EQ(int64_t(u64(10)), -21);
  EXPECT_EQ(int64_t(u64(12)), -5);
  EXPECT_EQ(u64(14), 0xfffffffffffffffbull);
  EXPECT_EQ(int64_t(u64(16)), 5);
  EXPECT_EQ(out[18], 0xfffffff8u);
  EXPECT_EQ(out[19], 142u);
  EXPECT_EQ(u64(20), ~0ull);
  EXPECT_EQ(out[22], 0x3f800000u);
  EXPECT_EQ(out[23], 0x7fffffffu);
  EXPECT_EQ(out[24], 5u);
  EXPECT_EQ(out[25], 0xffffffffu);
  EXPECT_EQ(int64_t(u64(26)), 2);
  EXPECT_EQ(int64_t(u64(28)), 2);
  EXPECT_EQ(int64_t(u64(30)), -3);
  EXPECT_EQ(f64(32), -2.0);
  EXPECT_EQ(out[34], 0u);
  EXPECT_EQ(out[35], 0x4e000000u);
  EXPECT_EQ(f64(36), -6.25);
  EXPECT_EQ(out[38], 0x2f800000u);
  EXPECT_EQ(out[39], 0x3eaaaaabu);
  EXPECT_EQ(out[40], 0x40000000u);
}

} // namespace

// RUN: kiln-opt %s -split-input-file -kiln-convert-kernels-to-loops="vector-bits=256 parallel=true" | FileCheck %s
// RUN: kiln-opt %s -split-input-file -kiln-convert-kernels-to-loops="vector-bits=512" | FileCheck %s --check-prefix=SERIAL

// A GEMM as register tiles: column blocks split across threads, dot-form
// tiles of 2 rows x 4 columns of 8 lanes, summed across lanes at the end.
// CHECK-LABEL: func.func @gemm_0
// CHECK: scf.parallel
// CHECK: vector.fma
// CHECK: vector.reduction <add>
// SERIAL-LABEL: func.func @gemm_0
// SERIAL-NOT: scf.parallel
// SERIAL: vector.fma {{.*}} : vector<16xf32>
func.func private @gemm_0(%x: tensor<?x64xf32>, %w: tensor<48x64xbf16>) -> tensor<?x24xf32>
    attributes {kiln.kernel = #kiln.kernel<gemm>} {
  %0 = kiln.linear %x, %w : tensor<?x64xf32>, tensor<48x64xbf16> -> tensor<?x48xf32>
  %1 = kiln.packed_swiglu %0 : tensor<?x48xf32> -> tensor<?x24xf32>
  return %1 : tensor<?x24xf32>
}

// -----

// Attention as a tiled online softmax: (token, KV head) units across
// threads, each with its group of 2 query heads; blocks of 64 keys carry
// each head's running max and sum; a block lists its visible keys, scores 4
// of them per tile (one shuffle tree sums the 8 dot products), rescales by
// exp(old max - new max) and adds the value rows of its visible keys only.
// CHECK-LABEL: func.func @attention_0
// CHECK: scf.parallel
// CHECK: memref.alloc() {alignment = 64 : i64} : memref<2x16xf32>
// CHECK: memref.alloc() {alignment = 64 : i64} : memref<64xindex>
// CHECK: scf.for {{.*}} iter_args({{.*}}) -> (f32, f32, f32, f32)
// CHECK: scf.for {{.*}} to %c64{{.*}} iter_args({{.*}}) -> (index)
// CHECK: memref.store {{.*}} : memref<64xindex>
// CHECK: scf.if
// CHECK: scf.for {{.*}} step %c4
// CHECK-COUNT-8: vector.fma
// CHECK: vector.shuffle
// CHECK: vector.reduction <maximumf>
// CHECK: math.exp {{.*}} : f32
// CHECK: math.exp {{.*}} : vector<8xf32>
// CHECK: scf.for {{.*}} -> (vector<8xf32>, vector<8xf32>, vector<8xf32>, vector<8xf32>)
// CHECK: vector.fma
// CHECK: memref.dealloc
// SERIAL-LABEL: func.func @attention_0
// SERIAL-NOT: scf.parallel
// SERIAL: vector.fma {{.*}} : vector<16xf32>
func.func private @attention_0(%q: tensor<?x32xf32>, %k: tensor<?x16xf32>, %v: tensor<?x16xf32>,
                               %p: tensor<?xi64>) -> tensor<?x32xf32>
    attributes {kiln.kernel = #kiln.kernel<attention>} {
  %o = kiln.attention %q, %k, %v, %p {num_heads = 2 : i64, num_kv_heads = 1 : i64,
      scale = 0.25 : f64, mask = #kiln.mask<chunked>, chunk_size = 8 : i64}
      : tensor<?x32xf32>, tensor<?x16xf32>, tensor<?x16xf32>, tensor<?xi64>
  return %o : tensor<?x32xf32>
}

// -----

// Routed experts: each expert's tokens in outer-product tiles, column blocks
// across threads; the gate scales the input row before the GEMM.
// The expert weights are read in panels of 16 columns (two 8-lane vectors),
// which the argument attribute asks the runtime for.
// CHECK-LABEL: func.func @experts_0
// CHECK-SAME: memref<4x64x96xbf16> {kiln.host_panel = 16 : i64}
// CHECK-SAME: memref<4x48x64xbf16> {kiln.host_panel = 16 : i64}
// CHECK: memref.reinterpret_cast {{.*}} to memref<4x6x64x16xbf16, strided<[6144, 1024, 16, 1]>>
// CHECK: scf.parallel
// CHECK: vector.broadcast
// CHECK: vector.fma
// CHECK: math.exp
// CHECK: scf.parallel
// CHECK: vector.fma
func.func private @experts_0(%u: tensor<?x64xf32>, %i: tensor<?xi64>, %o: tensor<5xi64>, %g: tensor<?xf32>,
                             %gu: tensor<4x64x96xbf16>, %dn: tensor<4x48x64xbf16>, %a: tensor<?x64xf32>) -> tensor<?x64xf32>
    attributes {kiln.kernel = #kiln.kernel<gemm>} {
  %h = kiln.expert_gate_up %u, %i, %o, %g, %gu : tensor<?x64xf32>, tensor<?xi64>, tensor<5xi64>, tensor<?xf32>, tensor<4x64x96xbf16> -> tensor<?x48xf32>
  %y = kiln.expert_down %h, %i, %o, %dn, %a : tensor<?x48xf32>, tensor<?xi64>, tensor<5xi64>, tensor<4x48x64xbf16>, tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}

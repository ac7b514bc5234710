// RUN: kiln-opt %s -split-input-file -kiln-convert-kernels-to-loops -verify-diagnostics | FileCheck %s

// A GEMM with its SwiGLU epilogue: inputs then outputs as memrefs, the GEMM
// result a temporary freed at the end, weights widened from bf16 on load.
// CHECK-LABEL: func.func @gemm_0
// CHECK-SAME: (%[[X:.*]]: memref<?x16xf32>, %[[W:.*]]: memref<48x16xbf16>, %[[OUT:.*]]: memref<?x24xf32>)
// CHECK-SAME: attributes {kiln.kernel = #kiln.kernel<gemm>, llvm.emit_c_interface}
// CHECK: %[[T:.*]] = memref.dim %[[X]], %{{.*}} : memref<?x16xf32>
// CHECK: %[[TMP:.*]] = memref.alloc(%[[T]]) : memref<?x48xf32>
// CHECK: scf.for
// CHECK: scf.for
// CHECK: scf.for {{.*}} iter_args
// CHECK: memref.load %[[W]]
// CHECK: arith.extf {{.*}} : bf16 to f32
// CHECK: memref.store {{.*}}, %[[TMP]]
// CHECK: math.exp
// CHECK: memref.store {{.*}}, %[[OUT]]
// CHECK: memref.dealloc %[[TMP]]
// CHECK-NEXT: return
func.func private @gemm_0(%x: tensor<?x16xf32>, %w: tensor<48x16xbf16>) -> tensor<?x24xf32>
    attributes {kiln.kernel = #kiln.kernel<gemm>} {
  %0 = kiln.linear %x, %w : tensor<?x16xf32>, tensor<48x16xbf16> -> tensor<?x48xf32>
  %1 = kiln.packed_swiglu %0 : tensor<?x48xf32> -> tensor<?x24xf32>
  return %1 : tensor<?x24xf32>
}

// -----

// Both results of add_rms_norm go straight to the outputs.
// CHECK-LABEL: func.func @memory_0
// CHECK-SAME: (%{{.*}}: memref<?x16xf32>, %{{.*}}: memref<?x16xf32>, %{{.*}}: memref<16xbf16>, %[[SUM:.*]]: memref<?x16xf32>, %[[NORMED:.*]]: memref<?x16xf32>)
// CHECK-NOT: memref.alloc
// CHECK: math.sqrt
// CHECK-NOT: memref.dealloc
func.func private @memory_0(%x: tensor<?x16xf32>, %r: tensor<?x16xf32>, %w: tensor<16xbf16>)
    -> (tensor<?x16xf32>, tensor<?x16xf32>) attributes {kiln.kernel = #kiln.kernel<memory>} {
  %s, %n = kiln.add_rms_norm %x, %r, %w {epsilon = 1.0e-05 : f64} : tensor<?x16xf32>, tensor<16xbf16>
  return %s, %n : tensor<?x16xf32>, tensor<?x16xf32>
}

// -----

// An attention kernel takes the positions of its keys (cached + new) after
// its inputs.
// CHECK-LABEL: func.func @attention_0
// CHECK-SAME: (%[[Q:.*]]: memref<?x16xf32>, %[[K:.*]]: memref<?x8xf32>, %[[V:.*]]: memref<?x8xf32>, %[[P:.*]]: memref<?xi64>, %[[KP:.*]]: memref<?xi64>, %[[O:.*]]: memref<?x16xf32>)
// CHECK: %[[S:.*]] = memref.dim %[[K]]
// CHECK: %[[SCORES:.*]] = memref.alloc(%[[S]]) : memref<?xf32>
// CHECK: memref.load %[[KP]]
// CHECK: arith.cmpi sle
// CHECK: arith.divsi
// CHECK: math.exp
// CHECK: scf.if
// CHECK: memref.dealloc %[[SCORES]]
func.func private @attention_0(%q: tensor<?x16xf32>, %k: tensor<?x8xf32>, %v: tensor<?x8xf32>,
                               %p: tensor<?xi64>) -> tensor<?x16xf32>
    attributes {kiln.kernel = #kiln.kernel<attention>} {
  %o = kiln.attention %q, %k, %v, %p {num_heads = 2 : i64, num_kv_heads = 1 : i64,
      scale = 0.25 : f64, mask = #kiln.mask<chunked>, chunk_size = 8 : i64}
      : tensor<?x16xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
  return %o : tensor<?x16xf32>
}

// -----

// An expert-parallel route: the rank's group (rank * 2 / 4) picks its
// experts' offsets; other pairs go last as token 0 with gate 0.
// CHECK-LABEL: func.func @router_0
// CHECK-SAME: %[[RANK:[^:]*]]: memref<1xi64>
// CHECK: %[[R:.*]] = memref.load %[[RANK]]
// CHECK: %[[RI:.*]] = arith.index_cast %[[R]] : i64 to index
// CHECK: %[[SCALED:.*]] = arith.muli %[[RI]], %{{.*}} : index
// CHECK: %[[GROUP:.*]] = arith.divui %[[SCALED]], %{{.*}} : index
// CHECK: %[[FIRST:.*]] = arith.muli %[[GROUP]], %{{.*}} : index
// CHECK: scf.for
// CHECK: arith.cmpi uge, %{{.*}}, %[[FIRST]] : index
// CHECK: %[[HELD:.*]] = arith.andi
// CHECK: arith.select %[[HELD]], %{{.*}}, %{{.*}} : i64
// CHECK: arith.select %[[HELD]], %{{.*}}, %{{.*}} : f32
func.func private @router_0(%u: tensor<?x16xf32>, %r: tensor<4x16xbf16>, %rank: tensor<1xi64>)
    -> (tensor<?xi64>, tensor<3xi64>, tensor<?xf32>) attributes {kiln.kernel = #kiln.kernel<router>} {
  %idx, %off, %g = kiln.moe_route %u, %r rank %rank {expert_groups = 2 : i64, ranks = 4 : i64, top_k = 1 : i64}
      : tensor<?x16xf32>, tensor<4x16xbf16> -> tensor<?xi64>, tensor<3xi64>, tensor<?xf32>
  return %idx, %off, %g : tensor<?xi64>, tensor<3xi64>, tensor<?xf32>
}

// -----

func.func private @moe_0(%u: tensor<?x16xf32>, %r: tensor<4x16xbf16>, %gu: tensor<4x16x24xbf16>,
                         %dn: tensor<4x12x16xbf16>) -> tensor<?x16xf32>
    attributes {kiln.kernel = #kiln.kernel<moe>} {
  // expected-error @+1 {{'kiln.moe' op has no host loop lowering yet (kernel kind 'moe')}}
  %y = kiln.moe %u router %r experts %gu, %dn {top_k = 1 : i64}
      : tensor<?x16xf32>, tensor<4x16xbf16>, tensor<4x16x24xbf16>, tensor<4x12x16xbf16>
  return %y : tensor<?x16xf32>
}

// -----

// expected-error @+1 {{lower kernels in a module of their own: @forward is not a kernel}}
func.func @forward(%x: tensor<?x16xf32>) -> tensor<?x16xf32> {
  return %x : tensor<?x16xf32>
}

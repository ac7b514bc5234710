// RUN: kiln-opt %s -split-input-file -kiln-shard-tensor-parallel=ranks=4 -verify-diagnostics

func.func @heads_do_not_split(%x: tensor<?x24xf32>, %pos: tensor<?xi64> {kiln.input = "positions"},
                              %wq: tensor<24x24xbf16> {kiln.weight = "wq"},
                              %wk: tensor<8x24xbf16> {kiln.weight = "wk"},
                              %wv: tensor<8x24xbf16> {kiln.weight = "wv"},
                              %wo: tensor<24x24xbf16> {kiln.weight = "wo"}) -> tensor<?x24xf32> {
  %q = kiln.linear %x, %wq : tensor<?x24xf32>, tensor<24x24xbf16> -> tensor<?x24xf32>
  %k = kiln.linear %x, %wk : tensor<?x24xf32>, tensor<8x24xbf16> -> tensor<?x8xf32>
  %v = kiln.linear %x, %wv : tensor<?x24xf32>, tensor<8x24xbf16> -> tensor<?x8xf32>
  // expected-error @+1 {{has 3 query heads, which do not split over 4 ranks}}
  %a = kiln.attention %q, %k, %v, %pos {mask = #kiln.mask<causal>, num_heads = 3 : i64, num_kv_heads = 1 : i64, scale = 0.35 : f64}
      : tensor<?x24xf32>, tensor<?x8xf32>, tensor<?x8xf32>, tensor<?xi64>
  %o = kiln.linear %a, %wo : tensor<?x24xf32>, tensor<24x24xbf16> -> tensor<?x24xf32>
  return %o : tensor<?x24xf32>
}

// -----

func.func @intermediate_does_not_split(%x: tensor<?x32xf32>, %wg: tensor<6x32xbf16> {kiln.weight = "gate"},
                                       %wu: tensor<6x32xbf16> {kiln.weight = "up"},
                                       %wd: tensor<32x6xbf16> {kiln.weight = "down"}) -> tensor<?x32xf32> {
  // expected-error @+1 {{weight argument 1 has extent 6 along dimension 0, which does not split into 4 parts}}
  %g = kiln.linear %x, %wg : tensor<?x32xf32>, tensor<6x32xbf16> -> tensor<?x6xf32>
  %u = kiln.linear %x, %wu : tensor<?x32xf32>, tensor<6x32xbf16> -> tensor<?x6xf32>
  %h = kiln.swiglu %g, %u : tensor<?x6xf32>
  %y = kiln.linear %h, %wd : tensor<?x6xf32>, tensor<32x6xbf16> -> tensor<?x32xf32>
  return %y : tensor<?x32xf32>
}

// -----

func.func @not_a_weight(%x: tensor<?x32xf32>, %wg: tensor<8x32xbf16>,
                        %wu: tensor<8x32xbf16> {kiln.weight = "up"},
                        %wd: tensor<32x8xbf16> {kiln.weight = "down"}) -> tensor<?x32xf32> {
  // expected-error @+1 {{reads a weight that is not a checkpoint tensor argument}}
  %g = kiln.linear %x, %wg : tensor<?x32xf32>, tensor<8x32xbf16> -> tensor<?x8xf32>
  %u = kiln.linear %x, %wu : tensor<?x32xf32>, tensor<8x32xbf16> -> tensor<?x8xf32>
  %h = kiln.swiglu %g, %u : tensor<?x8xf32>
  %y = kiln.linear %h, %wd : tensor<?x8xf32>, tensor<32x8xbf16> -> tensor<?x32xf32>
  return %y : tensor<?x32xf32>
}

// -----

func.func @no_down_projection(%x: tensor<?x32xf32>, %wg: tensor<8x32xbf16> {kiln.weight = "gate"},
                              %wu: tensor<8x32xbf16> {kiln.weight = "up"}) -> tensor<?x8xf32> {
  %g = kiln.linear %x, %wg : tensor<?x32xf32>, tensor<8x32xbf16> -> tensor<?x8xf32>
  %u = kiln.linear %x, %wu : tensor<?x32xf32>, tensor<8x32xbf16> -> tensor<?x8xf32>
  // expected-error @+1 {{is not followed by its down projection}}
  %h = kiln.swiglu %g, %u : tensor<?x8xf32>
  return %h : tensor<?x8xf32>
}

// -----

// expected-error @+1 {{the graph is already tensor-parallel}}
module attributes {kiln.tensor_parallel = 4 : i64} {
}

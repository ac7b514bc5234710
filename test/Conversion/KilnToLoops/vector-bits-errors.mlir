// RUN: kiln-opt %s -kiln-convert-kernels-to-loops="vector-bits=384" -verify-diagnostics

// Only widths of real vector registers are accepted.
// expected-error @+1 {{vector-bits must be 0, 128, 256 or 512, not 384}}
module {
}

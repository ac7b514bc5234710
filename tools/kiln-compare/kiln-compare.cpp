//===- kiln-compare.cpp - Compare two logits files ------------------------===//
//
//   kiln-compare ACTUAL.npy EXPECTED.npy [--tol 1e-5] [--metric max-rel|rel-l2]
//
// The numeric contract of Kiln ("max relative error <= 1e-5 in float32",
// "relative L2 <= 1e-2 in bf16") as a command, so tests need no NumPy.
// max-rel is max |a - e| / max |e|; rel-l2 is ||a - e|| / ||e||. Also reports
// how many rows agree on their argmax. Exits 1 when the error exceeds --tol,
// 2 when an input cannot be read or the command line is wrong.
//
//===----------------------------------------------------------------------===//

#include "kiln/runtime/Npy.h"
#include "kiln/runtime/ToolGuards.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

int main(int argc, char **argv) {
  kiln::installToolGuards("kiln-compare");
  std::vector<std::string> files;
  double tol = 1e-5;
  std::string metric = "max-rel";
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--tol" && i + 1 < argc) {
      char *end;
      tol = std::strtod(argv[++i], &end);
      if (*end || !(tol >= 0)) {
        std::fprintf(stderr, "kiln-compare: error: bad --tol '%s'\n", argv[i]);
        return 2;
      }
    } else if (arg == "--metric" && i + 1 < argc) {
      metric = argv[++i];
      if (metric != "max-rel" && metric != "rel-l2") {
        std::fprintf(stderr, "kiln-compare: error: --metric must be max-rel or "
                             "rel-l2\n");
        return 2;
      }
    } else if (!arg.empty() && arg[0] == '-') {
      std::fprintf(stderr,
                   "usage: kiln-compare ACTUAL.npy EXPECTED.npy [--tol T] "
                   "[--metric max-rel|rel-l2]\n");
      return 2;
    } else {
      files.push_back(arg);
    }
  }
  if (files.size() != 2) {
    std::fprintf(stderr,
                 "usage: kiln-compare ACTUAL.npy EXPECTED.npy [--tol T] "
                 "[--metric max-rel|rel-l2]\n");
    return 2;
  }
  std::vector<int64_t> shapeA, shapeE;
  std::vector<float> a, e;
  std::string error;
  if (!kiln::readNpyF32(files[0], shapeA, a, error) ||
      !kiln::readNpyF32(files[1], shapeE, e, error)) {
    std::fprintf(stderr, "kiln-compare: error: %s\n", error.c_str());
    return 2;
  }
  if (shapeA != shapeE) {
    std::fprintf(stderr, "kiln-compare: error: shapes differ\n");
    return 1;
  }
  double maxDiff = 0, maxRef = 0, diffSq = 0, refSq = 0;
  bool nonFinite = false;
  for (size_t i = 0; i < a.size(); ++i) {
    double d = std::fabs(static_cast<double>(a[i]) - e[i]);
    if (!std::isfinite(a[i]) || !std::isfinite(e[i]))
      nonFinite = true;
    maxDiff = std::fmax(maxDiff, d);
    maxRef = std::fmax(maxRef, std::fabs(static_cast<double>(e[i])));
    diffSq += d * d;
    refSq += static_cast<double>(e[i]) * e[i];
  }
  double err =
      metric == "max-rel" ? maxDiff / maxRef : std::sqrt(diffSq / refSq);
  int64_t rows = shapeA.size() == 2 ? shapeA[0] : 1;
  int64_t cols =
      shapeA.size() == 2 ? shapeA[1] : static_cast<int64_t>(a.size());
  int64_t agree = 0;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t ba = 0, be = 0;
    for (int64_t c = 1; c < cols; ++c) {
      if (a[r * cols + c] > a[r * cols + ba])
        ba = c;
      if (e[r * cols + c] > e[r * cols + be])
        be = c;
    }
    agree += ba == be;
  }
  bool pass = !nonFinite && err <= tol;
  std::printf("%s: %s = %.3e (tolerance %.1e); argmax agrees on %lld/%lld "
              "rows%s\n",
              pass ? "PASS" : "FAIL", metric.c_str(), err, tol,
              static_cast<long long>(agree), static_cast<long long>(rows),
              nonFinite ? "; non-finite values" : "");
  return pass ? 0 : 1;
}

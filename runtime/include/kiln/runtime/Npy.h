//===- Npy.h - NumPy .npy arrays --------------------------------*- C++ -*-===//
//
// Writes and reads float32 arrays in the NumPy .npy format, version 1.0,
// little-endian, C order: the format of `--dump-logits`.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_RUNTIME_NPY_H
#define KILN_RUNTIME_NPY_H

#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

bool writeNpyF32(const std::string &path, const std::vector<int64_t> &shape,
                 const float *data, std::string &error);

bool readNpyF32(const std::string &path, std::vector<int64_t> &shape,
                std::vector<float> &data, std::string &error);

} // namespace kiln

#endif // KILN_RUNTIME_NPY_H

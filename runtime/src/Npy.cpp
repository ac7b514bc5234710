//===- Npy.cpp - NumPy .npy arrays
//-----------------------------------------===//
//
// Format 1.0: magic "\x93NUMPY", version 1.0, a 2-byte header length, then a
// Python dict literal padded with spaces and a newline so that the data starts
// at a multiple of 64 bytes.
//
//===----------------------------------------------------------------------===//

#include "kiln/runtime/Npy.h"
#include "kiln/runtime/Files.h"

#include <cerrno>
#include <cstring>
#include <fstream>

using namespace kiln;

bool kiln::writeNpyF32(const std::string &path,
                       const std::vector<int64_t> &shape, const float *data,
                       std::string &error) {
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  int64_t count = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    dict += std::to_string(shape[i]);
    dict += (shape.size() == 1 || i + 1 < shape.size()) ? ", " : "";
    count *= shape[i];
  }
  dict += "), }";
  size_t total = 10 + dict.size() + 1;
  dict.append((64 - total % 64) % 64, ' ');
  dict += '\n';
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) {
    error = path + ": cannot create: " + std::strerror(errno);
    return false;
  }
  const char magic[] = "\x93NUMPY\x01\x00";
  out.write(magic, 8);
  uint16_t len = static_cast<uint16_t>(dict.size());
  char lenBytes[2] = {static_cast<char>(len & 0xFF),
                      static_cast<char>(len >> 8)};
  out.write(lenBytes, 2);
  out.write(dict.data(), static_cast<std::streamsize>(dict.size()));
  // x86-64 and aarch64 are little-endian, as '<f4' requires.
  out.write(reinterpret_cast<const char *>(data),
            static_cast<std::streamsize>(count * sizeof(float)));
  if (!out) {
    error = path + ": write failed";
    return false;
  }
  return true;
}

bool kiln::readNpyF32(const std::string &path, std::vector<int64_t> &shape,
                      std::vector<float> &data, std::string &error) {
  std::string bytes;
  if (!readRegularFile(path, bytes, error))
    return false;
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0 ||
      bytes[6] != 1) {
    error = path + ": not a version 1.x .npy file";
    return false;
  }
  size_t len = static_cast<uint8_t>(bytes[8]) |
               (static_cast<size_t>(static_cast<uint8_t>(bytes[9])) << 8);
  if (10 + len > bytes.size()) {
    error = path + ": truncated .npy header";
    return false;
  }
  std::string dict = bytes.substr(10, len);
  if (dict.find("'descr': '<f4'") == std::string::npos ||
      dict.find("'fortran_order': False") == std::string::npos) {
    error = path + ": expected a C-order little-endian float32 array";
    return false;
  }
  size_t open = dict.find('('), close = dict.find(')');
  if (open == std::string::npos || close == std::string::npos) {
    error = path + ": .npy header has no shape";
    return false;
  }
  shape.clear();
  int64_t count = 1;
  std::string dims = dict.substr(open + 1, close - open - 1);
  size_t pos = 0;
  while (pos < dims.size()) {
    while (pos < dims.size() && (dims[pos] == ' ' || dims[pos] == ','))
      ++pos;
    if (pos >= dims.size())
      break;
    size_t end = pos;
    while (end < dims.size() && dims[end] >= '0' && dims[end] <= '9')
      ++end;
    if (end == pos) {
      error = path + ": malformed shape in .npy header";
      return false;
    }
    // Every extent, and their product, must fit what the file can hold:
    // the data follows the header, so no count beyond its bytes is real.
    uint64_t limit = bytes.size() / sizeof(float);
    if (end - pos > 18) {
      error = path + ": .npy extent " + dims.substr(pos, end - pos) +
              " is larger than the file could hold";
      return false;
    }
    int64_t extent = std::stoll(dims.substr(pos, end - pos));
    shape.push_back(extent);
    if (extent != 0 &&
        static_cast<uint64_t>(count) > limit / static_cast<uint64_t>(extent)) {
      error = path + ": .npy shape holds more elements than the file's " +
              std::to_string(bytes.size()) + " bytes";
      return false;
    }
    count *= extent;
    pos = end;
  }
  size_t need = 10 + len + static_cast<size_t>(count) * sizeof(float);
  if (bytes.size() != need) {
    error = path + ": .npy data is " + std::to_string(bytes.size() - 10 - len) +
            " bytes but its shape needs " +
            std::to_string(static_cast<size_t>(count) * sizeof(float));
    return false;
  }
  data.resize(static_cast<size_t>(count));
  if (count >
      0) // an empty array has no storage to copy into (found by fuzzing)
    std::memcpy(data.data(), bytes.data() + 10 + len, count * sizeof(float));
  return true;
}

//===- Safetensors.h - Safetensors checkpoints ------------------*- C++ -*-===//
//
// Reads Hugging Face safetensors files (memory-mapped, validated before any
// byte is trusted) and sharded checkpoints described by
// model.safetensors.index.json; writes single-file checkpoints. Every error
// names the file and, where there is one, the tensor.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_RUNTIME_SAFETENSORS_H
#define KILN_RUNTIME_SAFETENSORS_H

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace kiln {

enum class DType {
  F64,
  F32,
  F16,
  BF16,
  F8E4M3,
  F8E5M2,
  I64,
  I32,
  I16,
  I8,
  U8,
  Bool
};

/// The safetensors spelling ("BF16", ...).
const char *dtypeName(DType dtype);
/// Parses a safetensors dtype string; false when unknown.
bool parseDType(const std::string &name, DType &out);
size_t dtypeSize(DType dtype);

/// Widens one bf16 / f16 value exactly to float.
float bf16ToFloat(uint16_t bits);
float f16ToFloat(uint16_t bits);
/// Rounds to nearest even (used to write checkpoints).
uint16_t floatToBf16(float value);

class SafetensorsFile;

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  /// Byte range inside the file's data section.
  uint64_t begin = 0, end = 0;
  /// The file that holds the bytes.
  const SafetensorsFile *file = nullptr;

  int64_t numElements() const;
  const uint8_t *data() const;
  std::string shapeString() const;
};

/// One memory-mapped .safetensors file.
class SafetensorsFile {
public:
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile &) = delete;
  SafetensorsFile &operator=(const SafetensorsFile &) = delete;

  /// Maps and validates `path`. On failure returns null and sets `error`.
  static std::unique_ptr<SafetensorsFile> open(const std::string &path,
                                               std::string &error);

  const std::string &path() const { return filePath; }
  const TensorInfo *find(const std::string &name) const;
  const std::map<std::string, TensorInfo> &tensors() const { return infos; }
  const uint8_t *dataSection() const { return dataStart; }

private:
  SafetensorsFile() = default;
  std::string filePath;
  void *mapping = nullptr;
  size_t mappingSize = 0;
  const uint8_t *dataStart = nullptr;
  std::map<std::string, TensorInfo> infos;
};

/// The weights of a checkpoint folder: `model.safetensors`, or the shards
/// listed in `model.safetensors.index.json`.
class Checkpoint {
public:
  /// Opens the weights in `dir`. A folder without any safetensors file is not
  /// an error: `hasWeights()` is then false. Malformed or truncated files, an
  /// index naming missing shards, or a tensor missing from its shard are.
  static std::unique_ptr<Checkpoint> open(const std::string &dir,
                                          std::string &error);

  bool hasWeights() const { return !files.empty(); }
  const TensorInfo *find(const std::string &name) const;
  /// Where `name` is expected to live, for error messages.
  std::string locationOf(const std::string &name) const;
  const std::vector<std::unique_ptr<SafetensorsFile>> &shards() const {
    return files;
  }

private:
  std::string directory;
  std::string indexPath;
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  std::map<std::string, const TensorInfo *> byName;
};

/// Widens a float tensor (f32, f16, bf16 or f64) into `out`. False, with
/// `error`, for any other dtype.
template <typename T>
bool readAsFloat(const TensorInfo &info, std::vector<T> &out,
                 std::string &error);

/// Collects tensors and writes one safetensors file.
class SafetensorsWriter {
public:
  void add(const std::string &name, DType dtype, std::vector<int64_t> shape,
           std::vector<uint8_t> bytes);
  /// Adds a tensor given as floats, stored as bf16.
  void addBf16(const std::string &name, std::vector<int64_t> shape,
               const std::vector<float> &values);
  void setMetadata(const std::string &key, const std::string &value);
  bool write(const std::string &path, std::string &error) const;

private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<Entry> entries;
  std::map<std::string, std::string> metadata;
};

} // namespace kiln

#endif // KILN_RUNTIME_SAFETENSORS_H

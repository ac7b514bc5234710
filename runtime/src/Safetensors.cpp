//===- Safetensors.cpp - Safetensors checkpoints
//---------------------------===//
//
// Layout of a safetensors file: an 8-byte little-endian header length N, N
// bytes of JSON ({name: {dtype, shape, data_offsets}, "__metadata__": {...}}),
// then the data section. Offsets are relative to the data section. Nothing in
// the header is trusted until checked against the file size.
//
//===----------------------------------------------------------------------===//

#include "kiln/runtime/Safetensors.h"
#include "kiln/runtime/Files.h"
#include "kiln/runtime/Json.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <limits>
#include <set>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

using namespace kiln;

//===----------------------------------------------------------------------===//
// Data types
//===----------------------------------------------------------------------===//

namespace {
struct DTypeEntry {
  DType dtype;
  const char *name;
  size_t size;
};
constexpr DTypeEntry kDTypes[] = {
    {DType::F64, "F64", 8},        {DType::F32, "F32", 4},
    {DType::F16, "F16", 2},        {DType::BF16, "BF16", 2},
    {DType::F8E4M3, "F8_E4M3", 1}, {DType::F8E5M2, "F8_E5M2", 1},
    {DType::I64, "I64", 8},        {DType::I32, "I32", 4},
    {DType::I16, "I16", 2},        {DType::I8, "I8", 1},
    {DType::U8, "U8", 1},          {DType::Bool, "BOOL", 1},
};
} // namespace

const char *kiln::dtypeName(DType dtype) {
  for (const DTypeEntry &e : kDTypes)
    if (e.dtype == dtype)
      return e.name;
  return "?";
}

size_t kiln::dtypeSize(DType dtype) {
  for (const DTypeEntry &e : kDTypes)
    if (e.dtype == dtype)
      return e.size;
  return 0;
}

bool kiln::parseDType(const std::string &name, DType &out) {
  for (const DTypeEntry &e : kDTypes)
    if (name == e.name) {
      out = e.dtype;
      return true;
    }
  return false;
}

float kiln::bf16ToFloat(uint16_t bits) {
  uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &wide, sizeof(f));
  return f;
}

float kiln::f16ToFloat(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F;
  uint32_t mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else { // subnormal: renormalise
      exp = 127 - 15 + 1;
      while (!(mant & 0x400)) {
        mant <<= 1;
        --exp;
      }
      mant &= 0x3FF;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1F) {
    bits = sign | 0x7F800000 | (mant << 13);
  } else {
    bits = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

uint16_t kiln::floatToBf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  if ((bits & 0x7F800000) == 0x7F800000 && (bits & 0x7FFFFF))
    return static_cast<uint16_t>((bits >> 16) | 0x40); // quiet NaN
  uint32_t roundingBias = 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>((bits + roundingBias) >> 16);
}

//===----------------------------------------------------------------------===//
// TensorInfo
//===----------------------------------------------------------------------===//

int64_t TensorInfo::numElements() const {
  int64_t n = 1;
  for (int64_t d : shape)
    n *= d;
  return n;
}

const uint8_t *TensorInfo::data() const { return file->dataSection() + begin; }

std::string TensorInfo::shapeString() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

//===----------------------------------------------------------------------===//
// SafetensorsFile
//===----------------------------------------------------------------------===//

SafetensorsFile::~SafetensorsFile() {
  if (mapping)
    munmap(mapping, mappingSize);
}

/// Reads a non-negative integer that fits in 63 bits from a JSON number.
static bool asCount(const json::Value &v, uint64_t &out) {
  if (!v.isNumber() || !v.isInteger || v.integer < 0)
    return false;
  out = static_cast<uint64_t>(v.integer);
  return true;
}

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const std::string &path,
                                                       std::string &error) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->filePath = path;
  uint64_t size = 0;
  int fd = openRegularFile(path, size, error);
  if (fd < 0)
    return nullptr;
  if (size < 8) {
    ::close(fd);
    error = path + ": truncated safetensors file (" + std::to_string(size) +
            " bytes, the 8-byte header length is missing)";
    return nullptr;
  }
  void *map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) {
    error = path + ": cannot map: " + std::strerror(errno);
    return nullptr;
  }
  file->mapping = map;
  file->mappingSize = size;
  const uint8_t *bytes = static_cast<const uint8_t *>(map);

  uint64_t headerLen = 0;
  for (int i = 7; i >= 0; --i)
    headerLen = (headerLen << 8) | bytes[i];
  if (headerLen > size - 8) {
    error = path + ": truncated safetensors file: header claims " +
            std::to_string(headerLen) + " bytes but only " +
            std::to_string(size - 8) + " follow";
    return nullptr;
  }
  std::string headerText(reinterpret_cast<const char *>(bytes + 8), headerLen);
  // Writers pad the header with trailing spaces.
  json::Value header;
  std::string jsonError;
  if (!json::parse(headerText, header, jsonError)) {
    error = path + ": malformed safetensors header: " + jsonError;
    return nullptr;
  }
  if (!header.isObject()) {
    error = path + ": malformed safetensors header: expected a JSON object";
    return nullptr;
  }
  file->dataStart = bytes + 8 + headerLen;
  uint64_t dataSize = size - 8 - headerLen;

  for (const auto &member : header.object) {
    const std::string &name = member.first;
    const json::Value &entry = member.second;
    if (name == "__metadata__")
      continue;
    auto bad = [&](const std::string &what) {
      error = path + ": tensor '" + name + "': " + what;
      return nullptr;
    };
    if (!entry.isObject())
      return bad("header entry is not an object");
    TensorInfo info;
    info.name = name;
    info.file = file.get();
    const json::Value *dtype = entry.find("dtype");
    if (!dtype || !dtype->isString())
      return bad("missing string field 'dtype'");
    if (!parseDType(dtype->string, info.dtype))
      return bad("unknown dtype '" + dtype->string + "'");
    const json::Value *shape = entry.find("shape");
    if (!shape || !shape->isArray())
      return bad("missing array field 'shape'");
    uint64_t numel = 1;
    for (const json::Value &d : shape->array) {
      uint64_t extent;
      if (!asCount(d, extent))
        return bad("'shape' must hold non-negative integers");
      if (extent != 0 &&
          numel > std::numeric_limits<uint64_t>::max() / 16 / extent)
        return bad("'shape' is too large");
      numel *= extent;
      info.shape.push_back(static_cast<int64_t>(extent));
    }
    const json::Value *offsets = entry.find("data_offsets");
    if (!offsets || !offsets->isArray() || offsets->array.size() != 2 ||
        !asCount(offsets->array[0], info.begin) ||
        !asCount(offsets->array[1], info.end) || info.begin > info.end)
      return bad("'data_offsets' must be [begin, end] with begin <= end");
    uint64_t expected = numel * dtypeSize(info.dtype);
    if (info.end - info.begin != expected)
      return bad("'data_offsets' span " +
                 std::to_string(info.end - info.begin) + " bytes but " +
                 dtype->string + " " + info.shapeString() + " needs " +
                 std::to_string(expected));
    if (info.end > dataSize)
      return bad("truncated file: data ends at byte " +
                 std::to_string(info.end) + " of a " +
                 std::to_string(dataSize) + "-byte data section");
    file->infos.emplace(name, std::move(info));
  }
  // Two tensors may not share bytes: an edited header could otherwise make
  // one weight an alias of another.
  std::vector<const TensorInfo *> byOffset;
  for (const auto &[name, info] : file->infos)
    if (info.end > info.begin)
      byOffset.push_back(&info);
  std::sort(byOffset.begin(), byOffset.end(),
            [](const TensorInfo *a, const TensorInfo *b) {
              return a->begin < b->begin;
            });
  for (size_t i = 1; i < byOffset.size(); ++i)
    if (byOffset[i]->begin < byOffset[i - 1]->end) {
      error = path + ": tensors '" + byOffset[i - 1]->name + "' (bytes " +
              std::to_string(byOffset[i - 1]->begin) + ".." +
              std::to_string(byOffset[i - 1]->end) + ") and '" +
              byOffset[i]->name + "' (from byte " +
              std::to_string(byOffset[i]->begin) +
              ") overlap in the data section";
      return nullptr;
    }
  return file;
}

const TensorInfo *SafetensorsFile::find(const std::string &name) const {
  auto it = infos.find(name);
  return it == infos.end() ? nullptr : &it->second;
}

//===----------------------------------------------------------------------===//
// Checkpoint
//===----------------------------------------------------------------------===//

/// Whether anything is at `path`: what is there must then be a regular
/// file, which the readers check and say.
static bool fileExists(const std::string &path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

static bool readWholeFile(const std::string &path, std::string &out,
                          std::string &error) {
  // Shard indexes and configs are a few MB at most.
  return readRegularFile(path, out, error, uint64_t(256) << 20);
}

std::unique_ptr<Checkpoint> Checkpoint::open(const std::string &dir,
                                             std::string &error) {
  auto ckpt = std::unique_ptr<Checkpoint>(new Checkpoint());
  ckpt->directory = dir;
  std::string single = dir + "/model.safetensors";
  std::string index = dir + "/model.safetensors.index.json";

  if (fileExists(index)) {
    ckpt->indexPath = index;
    std::string text;
    if (!readWholeFile(index, text, error))
      return nullptr;
    json::Value root;
    std::string jsonError;
    if (!json::parse(text, root, jsonError)) {
      error = index + ": " + jsonError;
      return nullptr;
    }
    const json::Value *map = root.find("weight_map");
    if (!map || !map->isObject()) {
      error = index + ": missing object field 'weight_map'";
      return nullptr;
    }
    std::map<std::string, SafetensorsFile *> shardByName;
    for (const auto &[tensor, shard] : map->object) {
      if (!shard.isString() || shard.string.empty() ||
          shard.string.find('/') != std::string::npos) {
        error = index + ": weight_map['" + tensor +
                "'] must be a file name in the checkpoint folder";
        return nullptr;
      }
      SafetensorsFile *&file = shardByName[shard.string];
      if (!file) {
        auto opened = SafetensorsFile::open(dir + "/" + shard.string, error);
        if (!opened) {
          error = "shard listed in " + index + ": " + error;
          return nullptr;
        }
        file = opened.get();
        ckpt->files.push_back(std::move(opened));
      }
      const TensorInfo *info = file->find(tensor);
      if (!info) {
        error = file->path() + ": tensor '" + tensor + "' listed in " + index +
                " is missing from this shard";
        return nullptr;
      }
      ckpt->byName[tensor] = info;
    }
    return ckpt;
  }

  if (fileExists(single)) {
    auto opened = SafetensorsFile::open(single, error);
    if (!opened)
      return nullptr;
    for (const auto &[name, info] : opened->tensors())
      ckpt->byName[name] = &info;
    ckpt->files.push_back(std::move(opened));
  }
  return ckpt;
}

const TensorInfo *Checkpoint::find(const std::string &name) const {
  auto it = byName.find(name);
  return it == byName.end() ? nullptr : it->second;
}

std::string Checkpoint::locationOf(const std::string &name) const {
  if (const TensorInfo *info = find(name))
    return info->file->path();
  if (!indexPath.empty())
    return indexPath;
  if (files.size() == 1)
    return files[0]->path();
  return directory;
}

template <typename T>
bool kiln::readAsFloat(const TensorInfo &info, std::vector<T> &out,
                       std::string &error) {
  int64_t n = info.numElements();
  out.resize(static_cast<size_t>(n));
  const uint8_t *p = info.data();
  switch (info.dtype) {
  case DType::F32:
    for (int64_t i = 0; i < n; ++i) {
      float v;
      std::memcpy(&v, p + 4 * i, 4);
      out[i] = static_cast<T>(v);
    }
    return true;
  case DType::F64:
    for (int64_t i = 0; i < n; ++i) {
      double v;
      std::memcpy(&v, p + 8 * i, 8);
      out[i] = static_cast<T>(v);
    }
    return true;
  case DType::BF16:
  case DType::F16:
    for (int64_t i = 0; i < n; ++i) {
      uint16_t bits = static_cast<uint16_t>(p[2 * i] | (p[2 * i + 1] << 8));
      out[i] = static_cast<T>(info.dtype == DType::BF16 ? bf16ToFloat(bits)
                                                        : f16ToFloat(bits));
    }
    return true;
  default:
    error = info.file->path() + ": tensor '" + info.name + "' has dtype " +
            dtypeName(info.dtype) + "; expected F32, F16 or BF16";
    return false;
  }
}

template bool kiln::readAsFloat<float>(const TensorInfo &, std::vector<float> &,
                                       std::string &);
template bool kiln::readAsFloat<double>(const TensorInfo &,
                                        std::vector<double> &, std::string &);

//===----------------------------------------------------------------------===//
// SafetensorsWriter
//===----------------------------------------------------------------------===//

void SafetensorsWriter::add(const std::string &name, DType dtype,
                            std::vector<int64_t> shape,
                            std::vector<uint8_t> bytes) {
  entries.push_back({name, dtype, std::move(shape), std::move(bytes)});
}

void SafetensorsWriter::addBf16(const std::string &name,
                                std::vector<int64_t> shape,
                                const std::vector<float> &values) {
  std::vector<uint8_t> bytes(values.size() * 2);
  for (size_t i = 0; i < values.size(); ++i) {
    uint16_t b = floatToBf16(values[i]);
    bytes[2 * i] = static_cast<uint8_t>(b & 0xFF);
    bytes[2 * i + 1] = static_cast<uint8_t>(b >> 8);
  }
  add(name, DType::BF16, std::move(shape), std::move(bytes));
}

void SafetensorsWriter::setMetadata(const std::string &key,
                                    const std::string &value) {
  metadata[key] = value;
}

bool SafetensorsWriter::write(const std::string &path,
                              std::string &error) const {
  std::string header = "{";
  bool first = true;
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool firstMeta = true;
    for (const auto &[k, v] : metadata) {
      if (!firstMeta)
        header += ",";
      firstMeta = false;
      json::writeString(header, k);
      header += ":";
      json::writeString(header, v);
    }
    header += "}";
    first = false;
  }
  uint64_t offset = 0;
  for (const Entry &e : entries) {
    if (!first)
      header += ",";
    first = false;
    json::writeString(header, e.name);
    header += ":{\"dtype\":\"";
    header += dtypeName(e.dtype);
    header += "\",\"shape\":[";
    for (size_t i = 0; i < e.shape.size(); ++i)
      header += (i ? "," : "") + std::to_string(e.shape[i]);
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + e.bytes.size()) + "]}";
    offset += e.bytes.size();
  }
  header += "}";
  while (header.size() % 8 != 0) // keep the data section 8-byte aligned
    header += ' ';

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) {
    error = path + ": cannot create: " + std::strerror(errno);
    return false;
  }
  uint64_t len = header.size();
  char lenBytes[8];
  for (int i = 0; i < 8; ++i)
    lenBytes[i] = static_cast<char>((len >> (8 * i)) & 0xFF);
  out.write(lenBytes, 8);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  for (const Entry &e : entries)
    out.write(reinterpret_cast<const char *>(e.bytes.data()),
              static_cast<std::streamsize>(e.bytes.size()));
  if (!out) {
    error = path + ": write failed";
    return false;
  }
  return true;
}

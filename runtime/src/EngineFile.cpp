//===- EngineFile.cpp - The versioned engine container
//---------------------===//

#include "kiln/runtime/EngineFile.h"
#include "kiln/kiln_version.h"
#include "kiln/runtime/Files.h"

#include <cerrno>
#include <cstring>
#include <fstream>

using namespace kiln;

const char *kiln::compilerVersion() { return "kiln " KILN_VERSION_STRING; }

uint64_t kiln::fnv1a64(const uint8_t *data, size_t size, uint64_t h) {
  for (size_t i = 0; i < size; ++i)
    h = (h ^ data[i]) * 1099511628211ull;
  return h;
}

namespace {
constexpr size_t kHeaderSize = 88;

void putU32(std::string &s, uint32_t v) {
  for (int i = 0; i < 4; ++i)
    s += static_cast<char>((v >> (8 * i)) & 0xFF);
}
void putU64(std::string &s, uint64_t v) {
  for (int i = 0; i < 8; ++i)
    s += static_cast<char>((v >> (8 * i)) & 0xFF);
}
uint64_t getU(const std::string &s, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i)
    v = (v << 8) | static_cast<uint8_t>(s[at + i]);
  return v;
}
std::string fixed(const std::string &s, size_t n) {
  std::string out = s.substr(0, n - 1);
  out.resize(n, '\0');
  return out;
}
std::string unfixed(const std::string &s, size_t at, size_t n) {
  std::string out = s.substr(at, n);
  return out.substr(0, out.find('\0'));
}
} // namespace

bool EngineFile::write(const std::string &path, std::string &error) const {
  std::string body;
  for (const auto &[kind, bytes] : sections) {
    putU32(body, static_cast<uint32_t>(kind));
    putU32(body, 0);
    putU64(body, bytes.size());
    body += bytes;
  }
  std::string header(kEngineMagic, 8);
  putU32(header, version);
  putU32(header, static_cast<uint32_t>(sections.size()));
  header += fixed(target, 32);
  header += fixed(compilerVersion, 32);
  uint64_t sum =
      fnv1a64(reinterpret_cast<const uint8_t *>(header.data()), header.size());
  putU64(header, fnv1a64(reinterpret_cast<const uint8_t *>(body.data()),
                         body.size(), sum));
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) {
    error = path + ": cannot create: " + std::strerror(errno);
    return false;
  }
  out << header << body;
  if (!out) {
    error = path + ": write failed";
    return false;
  }
  return true;
}

bool EngineFile::read(const std::string &path,
                      const std::string &expectedTarget, EngineFile &out,
                      std::string &error) {
  std::string bytes;
  if (!readRegularFile(path, bytes, error))
    return false;
  if (bytes.size() < kHeaderSize || bytes.compare(0, 8, kEngineMagic) != 0) {
    error = path + ": not a Kiln engine (bad magic)";
    return false;
  }
  out.version = static_cast<uint32_t>(getU(bytes, 8, 4));
  out.target = unfixed(bytes, 16, 32);
  out.compilerVersion = unfixed(bytes, 48, 32);
  if (out.version != kEngineFormatVersion) {
    error = path + ": engine format version " + std::to_string(out.version) +
            " (written by Kiln " + out.compilerVersion +
            "); this runtime reads version " +
            std::to_string(kEngineFormatVersion) + ": recompile the model";
    return false;
  }
  // Everything but the checksum field is covered, the target included: an
  // edited header is as corrupt as an edited section.
  uint64_t checksum = getU(bytes, 80, 8);
  const auto *raw = reinterpret_cast<const uint8_t *>(bytes.data());
  if (fnv1a64(raw + kHeaderSize, bytes.size() - kHeaderSize,
              fnv1a64(raw, 80)) != checksum) {
    error = path + ": checksum mismatch (the file is truncated, corrupt or "
                   "edited)";
    return false;
  }
  if (!expectedTarget.empty() && out.target != expectedTarget) {
    error = path + ": engine built for target '" + out.target + "', not '" +
            expectedTarget + "'";
    return false;
  }
  uint32_t count = static_cast<uint32_t>(getU(bytes, 12, 4));
  size_t at = kHeaderSize;
  for (uint32_t i = 0; i < count; ++i) {
    if (at + 16 > bytes.size()) {
      error = path + ": section " + std::to_string(i) + " header is truncated";
      return false;
    }
    uint32_t kind = static_cast<uint32_t>(getU(bytes, at, 4));
    uint64_t size = getU(bytes, at + 8, 8);
    if (size > bytes.size() - at - 16) {
      error = path + ": section " + std::to_string(i) + " is truncated";
      return false;
    }
    out.sections[static_cast<SectionKind>(kind)] = bytes.substr(at + 16, size);
    at += 16 + size;
  }
  return true;
}

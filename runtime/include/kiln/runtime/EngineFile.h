//===- EngineFile.h - The versioned engine container ------------*- C++ -*-===//
//
// The one artefact the compiler and the runtime share (docs/engine-format.md).
// An engine file is a fixed header followed by sections:
//
//   offset 0   "KILNENGN"                 magic, 8 bytes
//          8   u32 format version         kEngineFormatVersion
//         12   u32 section count
//         16   char[32] target            "host-x86_64", NUL padded
//         48   char[32] compiler version  NUL padded
//         80   u64 checksum               FNV-1a 64 of bytes 0..79, then of
//                                            every byte after 88 (all of the
//                                            file but the checksum itself)
//         88   sections: u32 kind, u32 reserved, u64 size, size bytes
//
// All integers are little-endian. Readers refuse other versions and targets
// with a message that names both.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_RUNTIME_ENGINEFILE_H
#define KILN_RUNTIME_ENGINEFILE_H

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace kiln {

// 2: the checksum covers the header too; shard splits are
// [dim, parts, groups, stride]; pipeline stages; max_positions.
constexpr uint32_t kEngineFormatVersion = 2;
constexpr char kEngineMagic[9] = "KILNENGN";

/// Engine targets, as the header's target field spells them.
constexpr const char *kTargetHost = "host-x86_64";
constexpr const char *kTargetSm90a = "sm_90a";

/// What engines record as their compiler ("kiln <version>").
const char *compilerVersion();

enum class SectionKind : uint32_t {
  /// JSON: weights, buffers, launches, KV slots, logits.
  Plan = 1,
  /// A shared object holding the host kernels.
  HostKernels = 2,
  /// sm_90a cubin of every GPU function (absent when the compiling machine
  /// had no ptxas; the runtime then JIT-compiles the PTX).
  CudaCubin = 3,
  /// The PTX the cubin was assembled from.
  CudaPtx = 4,
};

struct EngineFile {
  uint32_t version = kEngineFormatVersion;
  std::string target;
  std::string compilerVersion;
  std::map<SectionKind, std::string> sections;

  bool write(const std::string &path, std::string &error) const;

  /// Reads and validates (magic, version, checksum, section bounds).
  /// `expectedTarget`, when non-empty, must match.
  static bool read(const std::string &path, const std::string &expectedTarget,
                   EngineFile &out, std::string &error);
};

/// FNV-1a, 64-bit.
/// FNV-1a 64 of `size` bytes, continuing from `h` (the offset basis for a
/// fresh hash).
uint64_t fnv1a64(const uint8_t *data, size_t size,
                 uint64_t h = 0xcbf29ce484222325ull);

} // namespace kiln

#endif // KILN_RUNTIME_ENGINEFILE_H

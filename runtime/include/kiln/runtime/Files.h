//===- Files.h - Reading the files a user hands the runtime -----*- C++ -*-===//
//
// Every file the runtime and the tools read (engines, checkpoints and their
// shard indexes, token files, .npy arrays) comes from a user and may be
// anything: a directory, a FIFO that never delivers, a device. These
// helpers accept regular files only, never block on opening, and say what
// the path is when it is not a file.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_RUNTIME_FILES_H
#define KILN_RUNTIME_FILES_H

#include <cstdint>
#include <string>

namespace kiln {

/// Opens `path` for reading (O_NONBLOCK, so a FIFO cannot block) and checks
/// that it is a regular file. The descriptor (or -1 with `error`:
/// "<path>: cannot open: ..." or "<path>: not a regular file (a
/// directory)"); `size` is the file's size.
int openRegularFile(const std::string &path, uint64_t &size,
                    std::string &error);

/// The whole of regular file `path`, refused past `maxBytes` (naming both
/// sizes) before anything is read.
bool readRegularFile(const std::string &path, std::string &out,
                     std::string &error, uint64_t maxBytes = uint64_t(1) << 32);

} // namespace kiln

#endif // KILN_RUNTIME_FILES_H

//===- Tokens.h - Token id lists ---------------------------------*- C++
//-*-===//
//
// The `--tokens` / `--tokens-file` syntax shared by kiln-ref and kiln-run:
// non-negative integers separated by white space and/or commas.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_RUNTIME_TOKENS_H
#define KILN_RUNTIME_TOKENS_H

#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

/// Parses `text`; `source` names it in messages ("--tokens", a file path).
bool parseTokenList(const std::string &text, const std::string &source,
                    std::vector<int64_t> &out, std::string &error);

/// Reads and parses a tokens file.
bool readTokenFile(const std::string &path, std::vector<int64_t> &out,
                   std::string &error);

} // namespace kiln

#endif // KILN_RUNTIME_TOKENS_H

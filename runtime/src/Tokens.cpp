//===- Tokens.cpp - Token id lists
//-----------------------------------------===//

#include "kiln/runtime/Tokens.h"
#include "kiln/runtime/Files.h"

#include <cerrno>
#include <cstring>
#include <fstream>

bool kiln::parseTokenList(const std::string &text, const std::string &source,
                          std::vector<int64_t> &out, std::string &error) {
  auto separator = [](char c) {
    return c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r' ||
           c == '\v' || c == '\f';
  };
  size_t pos = 0;
  int64_t index = 0;
  while (pos < text.size()) {
    if (separator(text[pos])) {
      ++pos;
      continue;
    }
    size_t end = pos;
    while (end < text.size() && !separator(text[end]))
      ++end;
    std::string word = text.substr(pos, end - pos);
    bool digits = !word.empty() && word.size() <= 18 &&
                  word.find_first_not_of("0123456789") == std::string::npos;
    if (!digits) {
      error = source + ": token " + std::to_string(index) + " ('" + word +
              "') is not a non-negative integer";
      return false;
    }
    out.push_back(std::stoll(word));
    ++index;
    pos = end;
  }
  if (out.empty()) {
    error = source + ": no tokens given";
    return false;
  }
  return true;
}

bool kiln::readTokenFile(const std::string &path, std::vector<int64_t> &out,
                         std::string &error) {
  std::string text;
  // A token file of 64 MB is already far past any model's context.
  if (!readRegularFile(path, text, error, uint64_t(64) << 20))
    return false;
  return parseTokenList(text, path, out, error);
}

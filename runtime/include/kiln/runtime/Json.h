//===- Json.h - Minimal JSON reader and writer ------------------*- C++ -*-===//
//
// The runtime parses safetensors headers and config files without LLVM, so it
// carries its own small JSON parser. Numbers keep both an integer and a double
// view so that 64-bit offsets survive exactly.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_RUNTIME_JSON_H
#define KILN_RUNTIME_JSON_H

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::json {

enum class Kind { Null, Bool, Number, String, Array, Object };

/// A parsed JSON value. Objects keep their keys sorted (std::map); the
/// original order never matters to Kiln.
struct Value {
  Kind kind = Kind::Null;
  bool boolean = false;
  double number = 0.0;
  /// Exact value when the number was written as an integer literal.
  bool isInteger = false;
  int64_t integer = 0;
  std::string string;
  std::vector<Value> array;
  std::map<std::string, Value, std::less<>> object;

  bool isNull() const { return kind == Kind::Null; }
  bool isObject() const { return kind == Kind::Object; }
  bool isArray() const { return kind == Kind::Array; }
  bool isString() const { return kind == Kind::String; }
  bool isNumber() const { return kind == Kind::Number; }
  bool isBool() const { return kind == Kind::Bool; }
  /// Member lookup; nullptr when absent or when this is not an object.
  const Value *find(std::string_view key) const;
};

/// Parses `text`. On failure returns false and sets `error` to a message with
/// the byte offset of the problem.
bool parse(const std::string &text, Value &out, std::string &error);

/// Appends `s` to `out` as a quoted JSON string.
void writeString(std::string &out, const std::string &s);

/// Human name of a kind ("object", "number", ...), for error messages.
const char *kindName(Kind kind);

} // namespace kiln::json

#endif // KILN_RUNTIME_JSON_H

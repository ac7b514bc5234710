//===- Json.cpp - Minimal JSON reader and writer
//---------------------------===//
//
// A recursive-descent parser for RFC 8259 JSON. Nesting depth is bounded so a
// hostile header cannot exhaust the stack.
//
//===----------------------------------------------------------------------===//

#include "kiln/runtime/Json.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>

using namespace kiln::json;

namespace {

constexpr int kMaxDepth = 128;
static_assert(kMaxDepth == 128, "the depth error names the bound");

class Parser {
public:
  explicit Parser(const std::string &text) : text(text) {}

  bool run(Value &out, std::string &error) {
    skipSpace();
    if (!parseValue(out, 0))
      return fail(error);
    skipSpace();
    if (pos != text.size()) {
      message = "unexpected trailing characters";
      return fail(error);
    }
    return true;
  }

private:
  const std::string &text;
  size_t pos = 0;
  std::string message;

  bool fail(std::string &error) {
    error = "invalid JSON at byte " + std::to_string(pos) + ": " + message;
    return false;
  }
  bool err(const char *m) {
    if (message.empty())
      message = m;
    return false;
  }
  void skipSpace() {
    while (pos < text.size() && (text[pos] == ' ' || text[pos] == '\n' ||
                                 text[pos] == '\r' || text[pos] == '\t'))
      ++pos;
  }
  bool literal(const char *word) {
    size_t n = std::char_traits<char>::length(word);
    if (text.compare(pos, n, word) != 0)
      return err("unknown literal");
    pos += n;
    return true;
  }

  bool parseValue(Value &out, int depth) {
    if (depth > kMaxDepth)
      return err("nested deeper than 128 levels");
    if (pos >= text.size())
      return err("unexpected end of input");
    char c = text[pos];
    switch (c) {
    case '{':
      return parseObject(out, depth);
    case '[':
      return parseArray(out, depth);
    case '"':
      out.kind = Kind::String;
      return parseString(out.string);
    case 't':
      out.kind = Kind::Bool;
      out.boolean = true;
      return literal("true");
    case 'f':
      out.kind = Kind::Bool;
      out.boolean = false;
      return literal("false");
    case 'n':
      out.kind = Kind::Null;
      return literal("null");
    default:
      if (c == '-' || (c >= '0' && c <= '9'))
        return parseNumber(out);
      return err("unexpected character");
    }
  }

  bool parseObject(Value &out, int depth) {
    out.kind = Kind::Object;
    ++pos;
    skipSpace();
    if (pos < text.size() && text[pos] == '}') {
      ++pos;
      return true;
    }
    while (true) {
      skipSpace();
      if (pos >= text.size() || text[pos] != '"')
        return err("expected a string key");
      std::string key;
      size_t keyAt = pos;
      if (!parseString(key))
        return false;
      // A repeated key is ambiguous (readers disagree on which one wins): an
      // edited file must not get to pick.
      auto [member, inserted] = out.object.try_emplace(std::move(key));
      if (!inserted) {
        pos = keyAt;
        return err("duplicate key");
      }
      skipSpace();
      if (pos >= text.size() || text[pos] != ':')
        return err("expected ':'");
      ++pos;
      skipSpace();
      if (!parseValue(member->second, depth + 1))
        return false;
      skipSpace();
      if (pos < text.size() && text[pos] == ',') {
        ++pos;
        continue;
      }
      if (pos < text.size() && text[pos] == '}') {
        ++pos;
        return true;
      }
      return err("expected ',' or '}'");
    }
  }

  bool parseArray(Value &out, int depth) {
    out.kind = Kind::Array;
    ++pos;
    skipSpace();
    if (pos < text.size() && text[pos] == ']') {
      ++pos;
      return true;
    }
    while (true) {
      skipSpace();
      if (!parseValue(out.array.emplace_back(), depth + 1))
        return false;
      skipSpace();
      if (pos < text.size() && text[pos] == ',') {
        ++pos;
        continue;
      }
      if (pos < text.size() && text[pos] == ']') {
        ++pos;
        return true;
      }
      return err("expected ',' or ']'");
    }
  }

  static void appendUtf8(std::string &s, uint32_t cp) {
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else if (cp < 0x800) {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      s += static_cast<char>(0xE0 | (cp >> 12));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      s += static_cast<char>(0xF0 | (cp >> 18));
      s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  bool parseHex4(uint32_t &v) {
    if (pos + 4 > text.size())
      return err("truncated \\u escape");
    v = 0;
    for (int i = 0; i < 4; ++i) {
      char h = text[pos++];
      v <<= 4;
      if (h >= '0' && h <= '9')
        v |= h - '0';
      else if (h >= 'a' && h <= 'f')
        v |= h - 'a' + 10;
      else if (h >= 'A' && h <= 'F')
        v |= h - 'A' + 10;
      else
        return err("bad \\u escape");
    }
    return true;
  }

  bool parseString(std::string &out) {
    ++pos; // opening quote
    while (pos < text.size()) {
      // A run of plain characters goes in at once.
      size_t run = pos;
      while (run < text.size() && text[run] != '"' && text[run] != '\\' &&
             static_cast<unsigned char>(text[run]) >= 0x20)
        ++run;
      out.append(text, pos, run - pos);
      pos = run;
      if (pos >= text.size())
        break;
      char c = text[pos++];
      if (c == '"')
        return true;
      if (static_cast<unsigned char>(c) < 0x20)
        return err("control character in string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos >= text.size())
        break;
      char e = text[pos++];
      switch (e) {
      case '"':
        out += '"';
        break;
      case '\\':
        out += '\\';
        break;
      case '/':
        out += '/';
        break;
      case 'b':
        out += '\b';
        break;
      case 'f':
        out += '\f';
        break;
      case 'n':
        out += '\n';
        break;
      case 'r':
        out += '\r';
        break;
      case 't':
        out += '\t';
        break;
      case 'u': {
        uint32_t cp;
        if (!parseHex4(cp))
          return false;
        // UTF-16 surrogates come in pairs; a lone one is no character.
        if (cp >= 0xDC00 && cp < 0xE000)
          return err("unpaired surrogate in \\u escape");
        if (cp >= 0xD800 && cp < 0xDC00) {
          if (pos + 6 > text.size() || text[pos] != '\\' ||
              text[pos + 1] != 'u')
            return err("unpaired surrogate in \\u escape");
          pos += 2;
          uint32_t lo;
          if (!parseHex4(lo))
            return false;
          if (lo < 0xDC00 || lo >= 0xE000)
            return err("unpaired surrogate in \\u escape");
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        appendUtf8(out, cp);
        break;
      }
      default:
        return err("bad escape in string");
      }
    }
    return err("unterminated string");
  }

  bool parseNumber(Value &out) {
    size_t start = pos;
    if (text[pos] == '-')
      ++pos;
    bool integral = true;
    while (pos < text.size()) {
      char c = text[pos];
      if (c >= '0' && c <= '9') {
        ++pos;
      } else if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
        integral = false;
        ++pos;
      } else {
        break;
      }
    }
    std::string token = text.substr(start, pos - start);
    char *end = nullptr;
    errno = 0;
    out.kind = Kind::Number;
    out.number = std::strtod(token.c_str(), &end);
    if (end != token.c_str() + token.size() || token == "-")
      return err("malformed number");
    if (integral) {
      errno = 0;
      long long v = std::strtoll(token.c_str(), &end, 10);
      if (errno == 0) {
        out.isInteger = true;
        out.integer = v;
      }
    }
    return true;
  }
};

} // namespace

const Value *Value::find(std::string_view key) const {
  if (kind != Kind::Object)
    return nullptr;
  auto it = object.find(key);
  return it == object.end() ? nullptr : &it->second;
}

bool kiln::json::parse(const std::string &text, Value &out,
                       std::string &error) {
  out = Value();
  return Parser(text).run(out, error);
}

void kiln::json::writeString(std::string &out, const std::string &s) {
  out += '"';
  for (char c : s) {
    switch (c) {
    case '"':
      out += "\\\"";
      break;
    case '\\':
      out += "\\\\";
      break;
    case '\n':
      out += "\\n";
      break;
    case '\t':
      out += "\\t";
      break;
    case '\r':
      out += "\\r";
      break;
    default:
      if (static_cast<unsigned char>(c) < 0x20) {
        char buf[8];
        std::snprintf(buf, sizeof(buf), "\\u%04x", c);
        out += buf;
      } else {
        out += c;
      }
    }
  }
  out += '"';
}

const char *kiln::json::kindName(Kind kind) {
  switch (kind) {
  case Kind::Null:
    return "null";
  case Kind::Bool:
    return "boolean";
  case Kind::Number:
    return "number";
  case Kind::String:
    return "string";
  case Kind::Array:
    return "array";
  case Kind::Object:
    return "object";
  }
  return "value";
}

//===- PtxParser.cpp - PTX text to decoded functions ----------------------===//
//
// Reads the PTX that LLVM's NVPTX back end writes (and hand-written inline
// asm inside it): module directives, `.global`/`.shared` variables, entries
// and `.extern .func` declarations, scoped `{}` blocks with their own
// registers and labels. Every instruction is decoded to an `Op` here, so
// execution never parses text.
//
//===----------------------------------------------------------------------===//

#include "kiln/emu/Ptx.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <sstream>

namespace kiln::emu {

Type parseType(const std::string &n) {
  static const std::map<std::string, Type> types = {
      {"pred", Type::Pred},   {"b8", Type::B8},        {"b16", Type::B16},
      {"b32", Type::B32},     {"b64", Type::B64},      {"b128", Type::B128},
      {"u8", Type::U8},       {"u16", Type::U16},      {"u32", Type::U32},
      {"u64", Type::U64},     {"s8", Type::S8},        {"s16", Type::S16},
      {"s32", Type::S32},     {"s64", Type::S64},      {"f16", Type::F16},
      {"bf16", Type::BF16},   {"f32", Type::F32},      {"f64", Type::F64},
      {"f16x2", Type::F16x2}, {"bf16x2", Type::BF16x2}};
  auto it = types.find(n);
  return it == types.end() ? Type::None : it->second;
}

const Function *Module::find(const std::string &name) const {
  for (const Function &f : functions)
    if (f.name == name)
      return &f;
  return nullptr;
}

std::map<std::string, int> instructionForms(const Module &module) {
  std::map<std::string, int> forms;
  for (const Function &f : module.functions)
    for (const Instruction &i : f.code)
      ++forms[i.form];
  return forms;
}

void layoutShared(Function &fn, bool bareB8IsDynamic) {
  auto dynamic = [&](const Symbol &s) {
    return s.isExtern || (bareB8IsDynamic && s.bareB8);
  };
  uint64_t offset = kReservedShared;
  auto place = [&](Symbol &s) {
    offset = (offset + s.align - 1) / s.align * s.align;
    s.offset = offset;
    offset += s.size;
  };
  for (Symbol &s : fn.symbols)
    if (s.space == Space::Shared && !s.moduleScope && !dynamic(s))
      place(s);
  for (Symbol &s : fn.symbols)
    if (s.space == Space::Shared && s.moduleScope && !dynamic(s))
      place(s);
  fn.staticShared = offset - kReservedShared;
  // Dynamic shared memory starts on a 1 KB boundary: the alignment a
  // 128-byte-swizzled TMA destination needs, which the upstream sm90 tests
  // (run on H100s) take for granted at offset 0 of their dynamic area.
  fn.dynamicBase = (offset + 1023) / 1024 * 1024;
  for (Symbol &s : fn.symbols)
    if (s.space == Space::Shared && dynamic(s))
      s.offset = fn.dynamicBase;
}

namespace {

struct ParseError {
  unsigned line;
  std::string what;
};

[[noreturn]] void fail(unsigned line, const std::string &what) {
  throw ParseError{line, what};
}

std::string trim(const std::string &s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b])))
    ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1])))
    --e;
  return s.substr(b, e - b);
}

bool isIdentStart(char c) {
  return std::isalpha(static_cast<unsigned char>(c)) || c == '_' || c == '$' ||
         c == '%';
}
bool isIdentChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '$';
}

/// Splits at top-level commas (outside [], {}, ()).
std::vector<std::string> splitOperands(const std::string &s) {
  std::vector<std::string> out;
  int depth = 0;
  std::string cur;
  for (char c : s) {
    if (c == '[' || c == '{' || c == '(')
      ++depth;
    if (c == ']' || c == '}' || c == ')')
      --depth;
    if (c == ',' && depth == 0) {
      out.push_back(trim(cur));
      cur.clear();
      continue;
    }
    cur += c;
  }
  if (!trim(cur).empty())
    out.push_back(trim(cur));
  return out;
}

std::vector<std::string> splitWords(const std::string &s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  std::string w;
  while (in >> w)
    out.push_back(w);
  return out;
}

std::vector<std::string> splitDots(const std::string &op) {
  std::vector<std::string> parts;
  std::string cur;
  for (size_t i = 0; i < op.size(); ++i) {
    if (op[i] == '.') {
      parts.push_back(cur);
      cur.clear();
    } else {
      cur += op[i];
    }
  }
  parts.push_back(cur);
  return parts;
}

/// Integer or float immediate as raw bits (floats: of `type`).
bool parseImmediate(const std::string &t, Type type, int64_t &bits) {
  if (t.empty())
    return false;
  if ((t[0] == '0') && t.size() == 10 && (t[1] == 'f' || t[1] == 'F')) {
    uint32_t v = std::strtoul(t.c_str() + 2, nullptr, 16);
    if (type == Type::F64) {
      float f;
      std::memcpy(&f, &v, 4);
      double d = f;
      std::memcpy(&bits, &d, 8);
    } else {
      bits = v;
    }
    return true;
  }
  if (t[0] == '0' && t.size() == 18 && (t[1] == 'd' || t[1] == 'D')) {
    uint64_t v = std::strtoull(t.c_str() + 2, nullptr, 16);
    if (type == Type::F32) {
      double d;
      std::memcpy(&d, &v, 8);
      float f = static_cast<float>(d);
      uint32_t u;
      std::memcpy(&u, &f, 4);
      bits = u;
    } else {
      bits = static_cast<int64_t>(v);
    }
    return true;
  }
  const char *s = t.c_str();
  bool neg = false;
  if (*s == '-') {
    neg = true;
    ++s;
  }
  if (!std::isdigit(static_cast<unsigned char>(*s)))
    return false;
  bool isFloatText =
      t.find('.') != std::string::npos ||
      (t.find('e') != std::string::npos && t.find("0x") == std::string::npos);
  if (isFloatText) {
    double d = std::strtod(t.c_str(), nullptr);
    if (type == Type::F32) {
      float f = static_cast<float>(d);
      uint32_t u;
      std::memcpy(&u, &f, 4);
      bits = u;
    } else {
      std::memcpy(&bits, &d, 8);
    }
    return true;
  }
  char *end = nullptr;
  uint64_t v;
  if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
    v = std::strtoull(s + 2, &end, 16);
  else
    v = std::strtoull(s, &end, 10);
  if (end && (*end == 'U' || *end == 'u'))
    ++end;
  if (end && *end)
    return false;
  bits = neg ? -static_cast<int64_t>(v) : static_cast<int64_t>(v);
  if (type == Type::F32) { // integer literal for a float operand
    float f = static_cast<float>(static_cast<double>(bits));
    uint32_t u;
    std::memcpy(&u, &f, 4);
    bits = u;
  } else if (type == Type::F64) {
    double d = static_cast<double>(bits);
    std::memcpy(&bits, &d, 8);
  }
  return true;
}

const std::map<std::string, Special> &specialRegisters() {
  static const std::map<std::string, Special> m = {
      {"%tid.x", Special::TidX},
      {"%tid.y", Special::TidY},
      {"%tid.z", Special::TidZ},
      {"%ntid.x", Special::NtidX},
      {"%ntid.y", Special::NtidY},
      {"%ntid.z", Special::NtidZ},
      {"%ctaid.x", Special::CtaidX},
      {"%ctaid.y", Special::CtaidY},
      {"%ctaid.z", Special::CtaidZ},
      {"%nctaid.x", Special::NctaidX},
      {"%nctaid.y", Special::NctaidY},
      {"%nctaid.z", Special::NctaidZ},
      {"%laneid", Special::LaneId},
      {"%warpid", Special::WarpId},
      {"%nwarpid", Special::NWarpId},
      {"%smid", Special::SmId},
      {"%nsmid", Special::NSmId},
      {"%clock", Special::Clock},
      {"%clock64", Special::Clock64},
      {"%globaltimer", Special::GlobalTimer},
      {"%cluster_ctarank", Special::ClusterCtaRank},
      {"%cluster_nctarank", Special::ClusterNCtaRank},
      {"%clusterid.x", Special::ClusterIdX},
      {"%dynamic_smem_size", Special::DynSmemSize},
      {"%lanemask_lt", Special::LanemaskLt},
      {"%lanemask_eq", Special::LanemaskEq}};
  return m;
}

/// One function body's name scopes.
struct Scopes {
  struct Range {
    std::string prefix;
    int count, base;
  };
  struct Scope {
    int parent = -1;
    std::map<std::string, int> regs;
    std::vector<Range> ranges;
    std::map<std::string, int> labels;
    std::map<std::string, int> symbols;
  };
  std::vector<Scope> all;
  int current = -1;

  int open() {
    Scope s;
    s.parent = current;
    all.push_back(s);
    current = static_cast<int>(all.size()) - 1;
    return current;
  }
  void close() { current = all[current].parent; }

  int findReg(int scope, const std::string &name) const {
    for (int s = scope; s >= 0; s = all[s].parent) {
      const Scope &sc = all[s];
      auto it = sc.regs.find(name);
      if (it != sc.regs.end())
        return it->second;
      size_t d = name.size();
      while (d > 0 && std::isdigit(static_cast<unsigned char>(name[d - 1])))
        --d;
      if (d < name.size()) {
        std::string prefix = name.substr(0, d);
        int index = std::atoi(name.c_str() + d);
        for (const Range &r : sc.ranges)
          if (r.prefix == prefix && index < r.count)
            return r.base + index;
      }
    }
    return -1;
  }
  int findIn(int scope, const std::string &name, bool label) const {
    for (int s = scope; s >= 0; s = all[s].parent) {
      const auto &m = label ? all[s].labels : all[s].symbols;
      auto it = m.find(name);
      if (it != m.end())
        return it->second;
    }
    return -1;
  }
};

/// Immediate post-dominators of the conditional branches: where a warp's
/// lanes that took different sides meet again (what the hardware's
/// convergence barriers, placed by ptxas, achieve).
void computeReconvergence(Function &f) {
  const size_t n = f.code.size();
  f.reconvergence.assign(n, static_cast<uint32_t>(n));
  if (!n)
    return;
  // Basic blocks.
  std::vector<char> leader(n + 1, 0);
  leader[0] = 1;
  for (size_t i = 0; i < n; ++i) {
    const Instruction &in = f.code[i];
    if (in.op == Op::Bra) {
      leader[static_cast<size_t>(in.ops[0].imm)] = 1;
      leader[i + 1] = 1;
    } else if (in.op == Op::Ret || in.op == Op::Exit || in.op == Op::Trap) {
      leader[i + 1] = 1;
    }
  }
  std::vector<uint32_t> blockOf(n), starts;
  for (size_t i = 0; i < n; ++i) {
    if (leader[i])
      starts.push_back(static_cast<uint32_t>(i));
    blockOf[i] = static_cast<uint32_t>(starts.size() - 1);
  }
  const size_t nb = starts.size(), exitNode = nb; // a virtual exit
  std::vector<std::vector<uint32_t>> succ(nb + 1), pred(nb + 1);
  for (size_t b = 0; b < nb; ++b) {
    size_t last = (b + 1 < nb ? starts[b + 1] : n) - 1;
    const Instruction &in = f.code[last];
    auto edge = [&](size_t to) {
      succ[b].push_back(static_cast<uint32_t>(to));
      pred[to].push_back(static_cast<uint32_t>(b));
    };
    bool guarded = in.guardReg >= 0;
    if (in.op == Op::Bra) {
      edge(blockOf[static_cast<size_t>(in.ops[0].imm)]);
      if (guarded)
        edge(last + 1 < n ? blockOf[last + 1] : exitNode);
    } else if ((in.op == Op::Ret || in.op == Op::Exit || in.op == Op::Trap) &&
               !guarded) {
      edge(exitNode);
    } else {
      if (in.op == Op::Ret || in.op == Op::Exit)
        edge(exitNode);
      edge(last + 1 < n ? blockOf[last + 1] : exitNode);
    }
  }
  // Post-dominators: dominators of the reverse graph rooted at the exit
  // (Cooper, Harvey and Kennedy's iterative algorithm).
  std::vector<int> order(nb + 1, -1);
  std::vector<uint32_t> post; // postorder of the reverse graph
  {
    std::vector<std::pair<uint32_t, size_t>> stack{{exitNode, 0}};
    std::vector<char> seen(nb + 1, 0);
    seen[exitNode] = 1;
    while (!stack.empty()) {
      auto &[node, next] = stack.back();
      if (next < pred[node].size()) {
        uint32_t p = pred[node][next++];
        if (!seen[p]) {
          seen[p] = 1;
          stack.push_back({p, 0});
        }
      } else {
        order[node] = static_cast<int>(post.size());
        post.push_back(node);
        stack.pop_back();
      }
    }
  }
  std::vector<int> ipdom(nb + 1, -1);
  ipdom[exitNode] = static_cast<int>(exitNode);
  bool changed = true;
  while (changed) {
    changed = false;
    for (size_t k = post.size(); k-- > 0;) {
      uint32_t b = post[k];
      if (b == exitNode)
        continue;
      int best = -1;
      for (uint32_t s : succ[b]) {
        if (ipdom[s] < 0)
          continue;
        if (best < 0) {
          best = static_cast<int>(s);
          continue;
        }
        int x = best, y = static_cast<int>(s);
        while (x != y) {
          while (order[x] < order[y])
            x = ipdom[x];
          while (order[y] < order[x])
            y = ipdom[y];
        }
        best = x;
      }
      if (best >= 0 && ipdom[b] != best) {
        ipdom[b] = best;
        changed = true;
      }
    }
  }
  for (size_t b = 0; b < nb; ++b) {
    size_t last = (b + 1 < nb ? starts[b + 1] : n) - 1;
    if (f.code[last].op != Op::Bra || ipdom[b] < 0)
      continue;
    size_t target = static_cast<size_t>(ipdom[b]);
    f.reconvergence[last] =
        target == exitNode ? static_cast<uint32_t>(n) : starts[target];
  }
}

class Parser {
public:
  explicit Parser(const std::string &text) : src(text) { stripComments(); }

  std::unique_ptr<Module> run() {
    module = std::make_unique<Module>();
    while (skipSpace(), pos < src.size())
      topLevel();
    return std::move(module);
  }

private:
  std::string src;
  size_t pos = 0;
  std::unique_ptr<Module> module;

  // Line numbers: counted incrementally (positions only move forward).
  mutable size_t lineScanPos = 0;
  mutable unsigned lineScanCount = 1;
  unsigned lineAt(size_t p) const {
    if (p < lineScanPos) {
      lineScanPos = 0;
      lineScanCount = 1;
    }
    lineScanCount += static_cast<unsigned>(
        std::count(src.begin() + lineScanPos, src.begin() + p, '\n'));
    lineScanPos = p;
    return lineScanCount;
  }

  void stripComments() {
    for (size_t i = 0; i + 1 < src.size(); ++i) {
      if (src[i] == '"') { // string literals (none expected) kept as is
        size_t j = src.find('"', i + 1);
        if (j == std::string::npos)
          break;
        i = j;
        continue;
      }
      if (src[i] == '/' && src[i + 1] == '/') {
        while (i < src.size() && src[i] != '\n')
          src[i++] = ' ';
      } else if (src[i] == '/' && src[i + 1] == '*') {
        while (i + 1 < src.size() && !(src[i] == '*' && src[i + 1] == '/')) {
          if (src[i] != '\n')
            src[i] = ' ';
          ++i;
        }
        if (i + 1 < src.size())
          src[i] = src[i + 1] = ' ';
      }
    }
  }

  void skipSpace() {
    while (pos < src.size() &&
           std::isspace(static_cast<unsigned char>(src[pos])))
      ++pos;
  }

  std::string restOfLine() {
    size_t e = src.find('\n', pos);
    if (e == std::string::npos)
      e = src.size();
    std::string s = src.substr(pos, e - pos);
    pos = e;
    return s;
  }

  void topLevel() {
    size_t start = pos;
    unsigned line = lineAt(start);
    if (src.compare(pos, 8, ".version") == 0) {
      module->version = trim(restOfLine().substr(8));
      return;
    }
    if (src.compare(pos, 7, ".target") == 0) {
      module->target = trim(restOfLine().substr(7));
      return;
    }
    if (src.compare(pos, 13, ".address_size") == 0) {
      std::string v = trim(restOfLine().substr(13));
      if (v != "64")
        fail(line, "only .address_size 64 is supported");
      return;
    }
    // Collect to ';' or to the '{' that opens a function body.
    std::string text;
    int paren = 0;
    bool sawEquals = false;
    while (pos < src.size()) {
      char c = src[pos];
      if (c == '(')
        ++paren;
      if (c == ')')
        --paren;
      if (c == '=')
        sawEquals = true;
      if (c == ';' && paren == 0) {
        ++pos;
        declaration(trim(text), line);
        return;
      }
      if (c == '{' && paren == 0 && !sawEquals) {
        ++pos;
        function(trim(text), line);
        return;
      }
      text += c;
      ++pos;
    }
    fail(line, "unterminated top-level statement");
  }

  /// `.global`, `.shared`, `.extern .func`, ... at module scope.
  void declaration(const std::string &text, unsigned line) {
    std::vector<std::string> words = splitWords(text);
    if (std::find(words.begin(), words.end(), ".entry") != words.end())
      fail(line, "an .entry declaration without a body");
    if (std::find(words.begin(), words.end(), ".func") != words.end()) {
      // A declaration (`.extern .func (.param ...) vprintf (...)`): calls
      // are checked against what the emulator provides where they are made.
      // Name: the identifier after `.func` and its return list.
      size_t f = text.find(".func");
      size_t p = f + 5;
      while (p < text.size() &&
             std::isspace(static_cast<unsigned char>(text[p])))
        ++p;
      if (p < text.size() && text[p] == '(')
        p = text.find(')', p) + 1;
      while (p < text.size() &&
             std::isspace(static_cast<unsigned char>(text[p])))
        ++p;
      size_t e = p;
      while (e < text.size() && isIdentChar(text[e]))
        ++e;
      module->externFunctions.push_back(text.substr(p, e - p));
      return;
    }
    Symbol sym = variable(text, line, /*moduleScope=*/true);
    if (sym.space == Space::Global || sym.space == Space::Const) {
      GlobalVar g;
      g.name = sym.name;
      g.size = sym.size;
      g.align = sym.align;
      g.init = sym.init;
      module->globals.push_back(g);
    } else if (sym.space == Space::Shared) {
      module->moduleShared.push_back(sym);
    } else {
      fail(line, "unsupported module-scope declaration: " + text);
    }
  }

  /// `.shared .align 16 .b8 name[N] = {...}` and friends.
  Symbol variable(const std::string &text, unsigned line, bool moduleScope) {
    Symbol sym;
    sym.moduleScope = moduleScope;
    std::string decl = text, init;
    size_t eq = text.find('=');
    if (eq != std::string::npos) {
      decl = text.substr(0, eq);
      init = text.substr(eq + 1);
    }
    std::vector<std::string> words = splitWords(decl);
    Type elem = Type::B8;
    std::string name;
    for (size_t i = 0; i < words.size(); ++i) {
      const std::string &w = words[i];
      if (w == ".global")
        sym.space = Space::Global;
      else if (w == ".shared")
        sym.space = Space::Shared;
      else if (w == ".local")
        sym.space = Space::Local;
      else if (w == ".param")
        sym.space = Space::Param;
      else if (w == ".const")
        sym.space = Space::Const;
      else if (w == ".extern")
        sym.isExtern = true;
      else if (w == ".visible" || w == ".weak" || w == ".common" || w == ".ptr")
        continue;
      else if (w == ".align" && i + 1 < words.size())
        sym.align = std::strtoull(words[++i].c_str(), nullptr, 10);
      else if (w[0] == '.' && parseType(w.substr(1)) != Type::None)
        elem = parseType(w.substr(1));
      else
        name += w;
    }
    uint64_t count = 1;
    size_t br = name.find('[');
    sym.bareB8 = br == std::string::npos && elem == Type::B8 &&
                 sym.space == Space::Shared;
    if (br != std::string::npos) {
      std::string n = name.substr(br + 1, name.find(']') - br - 1);
      count = n.empty() ? 0 : std::strtoull(n.c_str(), nullptr, 10);
      name = name.substr(0, br);
    }
    sym.name = name;
    sym.size = count * typeBytes(elem);
    if (sym.align < typeBytes(elem))
      sym.align = typeBytes(elem);
    if (!init.empty()) {
      std::string body = init;
      body.erase(std::remove(body.begin(), body.end(), '{'), body.end());
      body.erase(std::remove(body.begin(), body.end(), '}'), body.end());
      for (const std::string &v : splitOperands(body)) {
        int64_t bits;
        if (!parseImmediate(v, elem, bits))
          fail(line, "unsupported initializer value '" + v + "'");
        for (unsigned b = 0; b < typeBytes(elem); ++b)
          sym.init.push_back(static_cast<uint8_t>(bits >> (8 * b)));
      }
      sym.init.resize(sym.size);
    }
    if (name.empty())
      fail(line, "declaration without a name: " + text);
    return sym;
  }

  // ---- Functions -------------------------------------------------------

  Function *fn = nullptr;
  Scopes scopes;
  struct Pending {
    size_t instruction, operand;
    std::string label;
    int scope;
    unsigned line;
  };
  std::vector<Pending> pendingLabels;
  std::vector<int> instructionScope;

  void function(const std::string &header, unsigned line) {
    module->functions.emplace_back();
    fn = &module->functions.back();
    scopes = Scopes();
    pendingLabels.clear();
    instructionScope.clear();
    fn->isEntry = header.find(".entry") != std::string::npos;
    if (!fn->isEntry)
      fail(line, "only .entry functions are supported (a .func body)");
    size_t e = header.find(".entry") + 6;
    while (e < header.size() &&
           std::isspace(static_cast<unsigned char>(header[e])))
      ++e;
    size_t n = e;
    while (n < header.size() && isIdentChar(header[n]))
      ++n;
    fn->name = header.substr(e, n - e);
    int root = scopes.open();
    // Module-scope shared variables are visible as symbols.
    for (const Symbol &s : module->moduleShared) {
      scopes.all[root].symbols[s.name] = static_cast<int>(fn->symbols.size());
      fn->symbols.push_back(s);
    }
    for (size_t g = 0; g < module->globals.size(); ++g) {
      Symbol s;
      s.name = module->globals[g].name;
      s.space = Space::Global;
      s.size = module->globals[g].size;
      s.moduleSymbol = static_cast<int64_t>(g);
      s.moduleScope = true;
      scopes.all[root].symbols[s.name] = static_cast<int>(fn->symbols.size());
      fn->symbols.push_back(s);
    }
    size_t open = header.find('(', n);
    size_t close = header.rfind(')');
    if (open != std::string::npos && close != std::string::npos) {
      for (const std::string &p :
           splitOperands(header.substr(open + 1, close - open - 1))) {
        Symbol s = variable(p, line, false);
        s.space = Space::Param;
        s.entryParam = true;
        fn->paramBytes = (fn->paramBytes + s.align - 1) / s.align * s.align;
        s.offset = fn->paramBytes;
        fn->paramBytes += s.size;
        fn->params.push_back(s);
        scopes.all[root].symbols[s.name] = static_cast<int>(fn->symbols.size());
        fn->symbols.push_back(s);
      }
    }
    std::string tail =
        close == std::string::npos ? "" : header.substr(close + 1);
    auto dims = [&](const char *key, int *out) {
      size_t k = tail.find(key);
      if (k == std::string::npos)
        return;
      std::string rest = tail.substr(k + std::strlen(key));
      std::vector<std::string> v =
          splitOperands(rest.substr(0, rest.find('.')));
      for (size_t i = 0; i < v.size() && i < 3; ++i)
        out[i] = std::atoi(v[i].c_str());
    };
    dims(".reqntid", fn->reqntid);
    dims(".maxntid", fn->maxntid);
    body();
    for (const Pending &p : pendingLabels) {
      int target = scopes.findIn(p.scope, p.label, /*label=*/true);
      if (target < 0)
        fail(p.line, "unknown label '" + p.label + "'");
      fn->code[p.instruction].ops[p.operand].imm = target;
    }
    computeReconvergence(*fn);
    layoutShared(*fn, /*bareB8IsDynamic=*/true);
    uint64_t local = 0, callParams = 0;
    for (Symbol &s : fn->symbols) {
      if (s.space == Space::Local) {
        local = (local + s.align - 1) / s.align * s.align;
        s.offset = local;
        local += s.size;
      } else if (s.space == Space::Param && !s.entryParam) {
        callParams = (callParams + s.align - 1) / s.align * s.align;
        s.offset = callParams;
        callParams += s.size;
      }
    }
    fn->localBytes = local;
    fn->callParamBytes = callParams;
    fn = nullptr;
  }

  void body() {
    std::string stmt;
    int braceDepth = 0; // braces inside a statement (vector operands)
    unsigned stmtLine = 0;
    while (pos < src.size()) {
      char c = src[pos];
      std::string t = trim(stmt);
      if (t.empty()) {
        if (std::isspace(static_cast<unsigned char>(c))) {
          ++pos;
          continue;
        }
        stmtLine = lineAt(pos);
        if (c == '{') {
          scopes.open();
          ++pos;
          continue;
        }
        if (c == '}') {
          ++pos;
          scopes.close();
          if (scopes.current < 0)
            return; // end of function
          continue;
        }
      }
      if (c == '{')
        ++braceDepth;
      if (c == '}')
        --braceDepth;
      if (c == ':' && braceDepth == 0 && pos + 1 < src.size() &&
          src[pos + 1] != ':' && (pos == 0 || src[pos - 1] != ':')) {
        bool ident = !t.empty() && isIdentStart(t[0]);
        for (char x : t)
          ident = ident && (isIdentChar(x) || x == '%');
        if (ident) {
          scopes.all[scopes.current].labels[t] =
              static_cast<int>(fn->code.size());
          stmt.clear();
          ++pos;
          continue;
        }
      }
      if (c == ';' && braceDepth == 0) {
        ++pos;
        statement(t, stmtLine);
        stmt.clear();
        continue;
      }
      stmt += c;
      ++pos;
    }
    fail(lineAt(pos), "unterminated function body");
  }

  void statement(const std::string &s, unsigned line) {
    if (s.empty())
      return;
    if (s[0] == '.') {
      std::vector<std::string> words = splitWords(s);
      const std::string &d = words[0];
      if (d == ".reg") {
        declareRegisters(s, line);
      } else if (d == ".shared" || d == ".local" || d == ".param" ||
                 d == ".global") {
        Symbol sym = variable(s, line, false);
        if (sym.space == Space::Global)
          fail(line, "function-scope .global is not supported");
        scopes.all[scopes.current].symbols[sym.name] =
            static_cast<int>(fn->symbols.size());
        fn->symbols.push_back(sym);
      } else if (d == ".pragma" || d == ".loc" || d == ".file" ||
                 d == ".maxnreg" || d == ".minnctapersm") {
        // Hints only.
      } else {
        fail(line, "unsupported directive '" + d + "'");
      }
      return;
    }
    instruction(s, line);
  }

  void declareRegisters(const std::string &s, unsigned line) {
    std::vector<std::string> words = splitWords(s);
    if (words.size() < 3)
      fail(line, "malformed .reg");
    Type t = parseType(words[1].substr(1));
    if (t == Type::None)
      fail(line, "unknown register type " + words[1]);
    std::string names;
    for (size_t i = 2; i < words.size(); ++i)
      names += words[i];
    for (const std::string &n : splitOperands(names)) {
      size_t lt = n.find('<');
      Scopes::Scope &sc = scopes.all[scopes.current];
      if (lt != std::string::npos) {
        int count = std::atoi(n.c_str() + lt + 1);
        Scopes::Range r{n.substr(0, lt), count,
                        static_cast<int>(fn->registers.size())};
        for (int i = 0; i < count; ++i)
          fn->registers.push_back({r.prefix + std::to_string(i), t});
        sc.ranges.push_back(r);
      } else {
        sc.regs[n] = static_cast<int>(fn->registers.size());
        fn->registers.push_back({n, t});
      }
    }
  }

  // ---- Instructions ------------------------------------------------------

  Operand operand(const std::string &text, Type immType, unsigned line,
                  size_t instr, size_t index, bool labelAllowed) {
    Operand o;
    std::string t = trim(text);
    if (t.empty())
      fail(line, "empty operand");
    if (t[0] == '!') {
      o = operand(t.substr(1), immType, line, instr, index, false);
      o.negate = true;
      return o;
    }
    if (t[0] == '[') {
      std::string in = trim(t.substr(1, t.rfind(']') - 1));
      size_t comma = in.find(',');
      if (comma != std::string::npos) { // [tensorMap, {c0, c1, ...}]
        o.kind = Operand::Kind::TensorCoords;
        Operand base =
            operand(in.substr(0, comma), Type::U64, line, instr, index, false);
        o.reg = base.reg;
        o.symbol = base.symbol;
        std::string coords = in.substr(comma + 1);
        coords.erase(std::remove(coords.begin(), coords.end(), '{'),
                     coords.end());
        coords.erase(std::remove(coords.begin(), coords.end(), '}'),
                     coords.end());
        for (const std::string &c : splitOperands(coords)) {
          Operand r = operand(c, Type::S32, line, instr, index, false);
          if (r.kind != Operand::Kind::Reg)
            fail(line, "tensor coordinates must be registers");
          o.regs.push_back(r.reg);
        }
        return o;
      }
      o.kind = Operand::Kind::Addr;
      // base[+-offset]
      size_t plus = in.find_first_of("+-", 1);
      std::string base = trim(in.substr(0, plus));
      if (plus != std::string::npos) {
        int64_t off;
        std::string offText = trim(in.substr(plus + 1));
        if (!parseImmediate(offText, Type::S64, off))
          fail(line, "bad address offset in '" + t + "'");
        o.imm = in[plus] == '-' ? -off : off;
      }
      int64_t abs;
      if (parseImmediate(base, Type::U64, abs)) {
        o.imm += abs;
        return o;
      }
      int reg = scopes.findReg(scopes.current, base);
      if (reg >= 0) {
        o.reg = reg;
        return o;
      }
      int sym = scopes.findIn(scopes.current, base, false);
      if (sym < 0)
        fail(line, "unknown name '" + base + "' in an address");
      o.symbol = sym;
      return o;
    }
    if (t[0] == '{') {
      o.kind = Operand::Kind::Vec;
      for (const std::string &e :
           splitOperands(t.substr(1, t.rfind('}') - 1))) {
        if (e == "_") {
          o.regs.push_back(INT32_MIN); // a sink
          continue;
        }
        Operand r = operand(e, immType, line, instr, index, false);
        if (r.kind == Operand::Kind::Reg) {
          o.regs.push_back(r.reg);
        } else if (r.kind == Operand::Kind::Imm) {
          o.regs.push_back(-1 - static_cast<int32_t>(o.items.size()));
          o.items.push_back(r);
        } else {
          fail(line, "unsupported vector element '" + e + "'");
        }
      }
      return o;
    }
    if (t == "_") { // a result nobody reads
      o.kind = Operand::Kind::Sink;
      return o;
    }
    auto special = specialRegisters().find(t);
    if (special != specialRegisters().end()) {
      o.kind = Operand::Kind::Special;
      o.imm = static_cast<int64_t>(special->second);
      return o;
    }
    int64_t bits;
    if (parseImmediate(t, immType, bits)) {
      o.kind = Operand::Kind::Imm;
      o.imm = bits;
      return o;
    }
    int reg = scopes.findReg(scopes.current, t);
    if (reg >= 0) {
      o.kind = Operand::Kind::Reg;
      o.reg = reg;
      return o;
    }
    int sym = scopes.findIn(scopes.current, t, false);
    if (sym >= 0) {
      o.kind = Operand::Kind::Symbol;
      o.symbol = sym;
      return o;
    }
    if (labelAllowed) {
      o.kind = Operand::Kind::Label;
      pendingLabels.push_back({instr, index, t, scopes.current, line});
      return o;
    }
    fail(line, "unknown operand '" + t + "'");
  }

  void instruction(const std::string &text, unsigned line) {
    Instruction in;
    in.line = line;
    std::string s = text;
    if (s[0] == '@') {
      size_t sp = s.find_first_of(" \t");
      std::string g = s.substr(1, sp - 1);
      if (!g.empty() && g[0] == '!') {
        in.guardNeg = true;
        g = g.substr(1);
      }
      in.guardReg = scopes.findReg(scopes.current, g);
      if (in.guardReg < 0)
        fail(line, "unknown guard predicate '" + g + "'");
      s = trim(s.substr(sp));
    }
    size_t sp = s.find_first_of(" \t");
    in.form = s.substr(0, sp);
    std::string rest = sp == std::string::npos ? "" : trim(s.substr(sp));
    decode(in, line);
    size_t index = fn->code.size();
    if (in.op == Op::Call) {
      // call[.uni] (ret), callee, (args);
      std::vector<std::string> parts = splitOperands(rest);
      std::string callee;
      std::vector<std::string> args;
      for (const std::string &p : parts) {
        if (p[0] == '(') {
          for (const std::string &a :
               splitOperands(p.substr(1, p.rfind(')') - 1)))
            args.push_back(a);
          if (callee.empty())
            args.insert(args.begin(), "#ret");
        } else {
          callee = p;
        }
      }
      if (callee != "vprintf")
        fail(line,
             "call of '" + callee + "': the emulator provides only vprintf");
      // ops: ret symbol (or none), then argument symbols.
      for (const std::string &a : args) {
        if (a == "#ret")
          continue;
        Operand o = operand(a, Type::U64, line, index, in.ops.size(), false);
        in.ops.push_back(o);
      }
    } else {
      std::vector<std::string> ops = splitOperands(rest);
      Type immType = in.type;
      for (size_t i = 0; i < ops.size(); ++i) {
        Type t = immType;
        if (in.op == Op::Cvt && i == 1)
          t = in.srcType;
        if (in.op == Op::Setp || in.op == Op::Selp) {
          if (i == 2 && in.op == Op::Selp)
            t = Type::Pred;
        }
        if (in.op == Op::Shl || in.op == Op::Shr || in.op == Op::Bfe ||
            in.op == Op::Shfl || in.op == Op::Setmaxnreg)
          t = i == 0 ? in.type : Type::U32;
        // "%r|%p" (shfl with a predicate result).
        std::string op = ops[i];
        size_t bar = op.find('|');
        if (bar != std::string::npos) {
          in.ops.push_back(
              operand(op.substr(0, bar), t, line, index, in.ops.size(), false));
          Operand p = operand(op.substr(bar + 1), Type::Pred, line, index,
                              in.ops.size(), false);
          in.ops.back().items.push_back(p);
          continue;
        }
        bool label = in.op == Op::Bra;
        in.ops.push_back(operand(op, t, line, index, in.ops.size(), label));
      }
    }
    checkOperands(in, line);
    fn->code.push_back(std::move(in));
  }

  static void checkOperands(const Instruction &in, unsigned line) {
    auto need = [&](size_t n) {
      if (in.ops.size() != n)
        fail(line, in.form + " takes " + std::to_string(n) + " operands, not " +
                       std::to_string(in.ops.size()));
    };
    switch (in.op) {
    case Op::Add:
    case Op::Sub:
    case Op::Mul:
    case Op::MulHi:
    case Op::MulWide:
    case Op::Div:
    case Op::Rem:
    case Op::Min:
    case Op::Max:
    case Op::And:
    case Op::Or:
    case Op::Xor:
    case Op::Shl:
    case Op::Shr:
    case Op::Copysign:
      need(3);
      break;
    case Op::Mad:
    case Op::MadHi:
    case Op::MadWide:
    case Op::Fma:
    case Op::Selp:
    case Op::Bfe:
      need(4);
      break;
    case Op::Neg:
    case Op::Abs:
    case Op::Not:
    case Op::Mov:
    case Op::Ex2:
    case Op::Lg2:
    case Op::Sin:
    case Op::Cos:
    case Op::Rsqrt:
    case Op::Rcp:
    case Op::Sqrt:
    case Op::Tanh:
    case Op::Popc:
    case Op::Clz:
    case Op::Brev:
    case Op::Cvta:
    case Op::CvtaTo:
    case Op::Ld:
    case Op::St:
    case Op::Testp:
      need(2);
      break;
    case Op::Cvt:
      if (in.type != Type::BF16x2 && in.type != Type::F16x2)
        need(2);
      else
        need(3);
      break;
    case Op::Setp:
      if (in.ops.size() != 3 && in.ops.size() != 4)
        need(3);
      break;
    case Op::Bra:
      need(1);
      if (in.ops[0].kind != Operand::Kind::Label)
        fail(line, "bra needs a label");
      break;
    case Op::WgmmaMma:
      if (in.ops.size() < 5)
        fail(line, "wgmma.mma_async: too few operands");
      if (in.ops[0].kind != Operand::Kind::Vec)
        fail(line, "wgmma.mma_async: the accumulator must be a {...} list");
      if (in.ops[0].regs.size() != in.shapeN / 2u)
        fail(line, "wgmma.mma_async: m64n" + std::to_string(in.shapeN) +
                       " f32 needs " + std::to_string(in.shapeN / 2) +
                       " accumulator registers, not " +
                       std::to_string(in.ops[0].regs.size()));
      break;
    default:
      break;
    }
  }

  static Space spaceOf(const std::string &p) {
    if (p == "global")
      return Space::Global;
    if (p == "shared" || p == "shared::cta")
      return Space::Shared;
    if (p == "shared::cluster")
      return Space::SharedCluster;
    if (p == "local")
      return Space::Local;
    if (p == "param")
      return Space::Param;
    if (p == "const")
      return Space::Const;
    return Space::Generic;
  }

  static uint8_t roundingOf(const std::string &p) {
    if (p == "rn" || p == "rni")
      return 1;
    if (p == "rz" || p == "rzi")
      return 2;
    if (p == "rm" || p == "rmi")
      return 3;
    if (p == "rp" || p == "rpi")
      return 4;
    return 0;
  }

  /// Sets op, types and flags from the dotted opcode; refuses what it does
  /// not know.
  void decode(Instruction &in, unsigned line) {
    std::vector<std::string> p = splitDots(in.form);
    const std::string base = p[0];
    auto unknown = [&]() {
      fail(line, "unsupported instruction form '" + in.form + "'");
    };
    auto lastType = [&]() {
      Type t = parseType(p.back());
      if (t == Type::None)
        unknown();
      return t;
    };
    auto has = [&](const char *m) {
      return std::find(p.begin() + 1, p.end(), m) != p.end();
    };
    // Modifiers every arithmetic op may carry.
    auto arith = [&](Op op, std::initializer_list<const char *> allowed) {
      in.op = op;
      in.type = lastType();
      for (size_t i = 1; i + 1 < p.size(); ++i) {
        const std::string &m = p[i];
        bool ok = false;
        for (const char *a : allowed)
          ok = ok || m == a;
        if (!ok)
          unknown();
        if (roundingOf(m))
          in.rounding = roundingOf(m);
        if (m == "ftz")
          in.ftz = true;
        if (m == "sat")
          in.sat = true;
        if (m == "approx")
          in.approx = true;
        if (m == "full")
          in.full = true;
        if (m == "NaN")
          in.nanMode = true;
        if (m == "lo")
          in.lo = true;
        if (m == "hi")
          in.hi = true;
        if (m == "wide")
          in.wide = true;
      }
    };
    if (base == "add" || base == "sub") {
      arith(base == "add" ? Op::Add : Op::Sub,
            {"rn", "rz", "rm", "rp", "ftz", "sat"});
    } else if (base == "mul") {
      arith(Op::Mul,
            {"rn", "rz", "rm", "rp", "ftz", "sat", "lo", "hi", "wide"});
      if (in.hi)
        in.op = Op::MulHi;
      if (in.wide)
        in.op = Op::MulWide;
    } else if (base == "mad") {
      arith(Op::Mad,
            {"rn", "rz", "rm", "rp", "ftz", "sat", "lo", "hi", "wide"});
      if (in.hi)
        in.op = Op::MadHi;
      if (in.wide)
        in.op = Op::MadWide;
    } else if (base == "fma") {
      arith(Op::Fma, {"rn", "rz", "rm", "rp", "ftz", "sat"});
    } else if (base == "div") {
      arith(Op::Div, {"rn", "rz", "rm", "rp", "ftz", "approx", "full"});
    } else if (base == "rem") {
      arith(Op::Rem, {});
    } else if (base == "min" || base == "max") {
      arith(base == "min" ? Op::Min : Op::Max, {"ftz", "NaN"});
    } else if (base == "neg") {
      arith(Op::Neg, {"ftz"});
    } else if (base == "abs") {
      arith(Op::Abs, {"ftz"});
    } else if (base == "not" || base == "and" || base == "or" ||
               base == "xor" || base == "shl" || base == "shr" ||
               base == "popc" || base == "clz" || base == "brev" ||
               base == "bfe" || base == "bfi" || base == "copysign") {
      static const std::map<std::string, Op> ops = {
          {"not", Op::Not},   {"and", Op::And}, {"or", Op::Or},
          {"xor", Op::Xor},   {"shl", Op::Shl}, {"shr", Op::Shr},
          {"popc", Op::Popc}, {"clz", Op::Clz}, {"brev", Op::Brev},
          {"bfe", Op::Bfe},   {"bfi", Op::Bfi}, {"copysign", Op::Copysign}};
      arith(ops.at(base), {});
    } else if (base == "ex2" || base == "lg2" || base == "sin" ||
               base == "cos" || base == "rsqrt" || base == "rcp" ||
               base == "sqrt" || base == "tanh") {
      static const std::map<std::string, Op> ops = {
          {"ex2", Op::Ex2},   {"lg2", Op::Lg2},     {"sin", Op::Sin},
          {"cos", Op::Cos},   {"rsqrt", Op::Rsqrt}, {"rcp", Op::Rcp},
          {"sqrt", Op::Sqrt}, {"tanh", Op::Tanh}};
      arith(ops.at(base), {"approx", "ftz", "rn", "rz", "rm", "rp", "full"});
      if (in.type != Type::F32 && in.type != Type::F64)
        unknown();
    } else if (base == "selp") {
      in.op = Op::Selp;
      in.type = lastType();
      if (p.size() != 2)
        unknown();
    } else if (base == "setp") {
      static const std::map<std::string, Cmp> cmps = {
          {"eq", Cmp::Eq},   {"ne", Cmp::Ne},   {"lt", Cmp::Lt},
          {"le", Cmp::Le},   {"gt", Cmp::Gt},   {"ge", Cmp::Ge},
          {"lo", Cmp::Lo},   {"ls", Cmp::Ls},   {"hi", Cmp::Hi},
          {"hs", Cmp::Hs},   {"equ", Cmp::Equ}, {"neu", Cmp::Neu},
          {"ltu", Cmp::Ltu}, {"leu", Cmp::Leu}, {"gtu", Cmp::Gtu},
          {"geu", Cmp::Geu}, {"num", Cmp::Num}, {"nan", Cmp::Nan}};
      in.op = Op::Setp;
      in.type = lastType();
      if (p.size() < 3)
        unknown();
      auto c = cmps.find(p[1]);
      if (c == cmps.end())
        unknown();
      in.cmp = c->second;
      for (size_t i = 2; i + 1 < p.size(); ++i) {
        if (p[i] == "and")
          in.boolOp = 1;
        else if (p[i] == "or")
          in.boolOp = 2;
        else if (p[i] == "xor")
          in.boolOp = 3;
        else if (p[i] == "ftz")
          in.ftz = true;
        else
          unknown();
      }
    } else if (base == "testp") {
      in.op = Op::Testp;
      in.type = lastType();
      if (p.size() != 3 || (p[1] != "finite" && p[1] != "infinite" &&
                            p[1] != "number" && p[1] != "notanumber"))
        unknown();
      in.sub = p[1] == "finite"     ? 0
               : p[1] == "infinite" ? 1
               : p[1] == "number"   ? 2
                                    : 3;
    } else if (base == "mov") {
      in.op = Op::Mov;
      in.type = lastType();
      if (p.size() != 2)
        unknown();
    } else if (base == "cvt") {
      in.op = Op::Cvt;
      if (p.size() < 3)
        unknown();
      in.type = parseType(p[p.size() - 2]);
      in.srcType = parseType(p.back());
      if (in.type == Type::None || in.srcType == Type::None)
        unknown();
      for (size_t i = 1; i + 2 < p.size(); ++i) {
        if (roundingOf(p[i])) {
          in.rounding = roundingOf(p[i]);
          in.sub = p[i].size() == 3; // integer rounding (rni, rzi, ...)
        } else if (p[i] == "ftz") {
          in.ftz = true;
        } else if (p[i] == "sat") {
          in.sat = true;
        } else if (p[i] == "relu") {
          in.nanMode = true;
        } else {
          unknown();
        }
      }
    } else if (base == "cvta") {
      // cvta.SPACE.u64 (to generic) or cvta.to.SPACE.u64.
      in.type = lastType();
      if (p.size() == 3) {
        in.op = Op::Cvta;
        in.space = spaceOf(p[1]);
      } else if (p.size() == 4 && p[1] == "to") {
        in.op = Op::CvtaTo;
        in.space = spaceOf(p[2]);
      } else {
        unknown();
      }
      if (in.space == Space::Generic)
        unknown();
    } else if (base == "ld" || base == "st" || base == "prefetch") {
      in.op = base == "ld" ? Op::Ld : base == "st" ? Op::St : Op::Prefetch;
      if (base == "prefetch") {
        if (has("tensormap")) {
          in.op = Op::PrefetchTensormap;
          return;
        }
        for (size_t i = 1; i < p.size(); ++i)
          if (spaceOf(p[i]) != Space::Generic)
            in.space = spaceOf(p[i]);
        return;
      }
      in.type = lastType();
      for (size_t i = 1; i + 1 < p.size(); ++i) {
        const std::string &m = p[i];
        if (spaceOf(m) != Space::Generic)
          in.space = spaceOf(m);
        else if (m == "v2")
          in.vector = 2;
        else if (m == "v4")
          in.vector = 4;
        else if (m == "volatile" || m == "weak" || m == "relaxed" ||
                 m == "acquire" || m == "release" || m == "cta" || m == "gpu" ||
                 m == "sys" || m == "nc" || m == "ca" || m == "cg" ||
                 m == "cs" || m == "lu" || m == "cv" || m == "wb" ||
                 m == "wt" || m.rfind("L1::", 0) == 0 ||
                 m.rfind("L2::", 0) == 0)
          continue;
        else
          unknown();
      }
    } else if (base == "atom" || base == "red") {
      in.op = base == "atom" ? Op::Atom : Op::Red;
      in.type = lastType();
      static const std::map<std::string, uint8_t> ops = {
          {"add", 1}, {"min", 2}, {"max", 3}, {"exch", 4}, {"cas", 5},
          {"and", 6}, {"or", 7},  {"xor", 8}, {"inc", 9},  {"dec", 10}};
      for (size_t i = 1; i + 1 < p.size(); ++i) {
        const std::string &m = p[i];
        if (spaceOf(m) != Space::Generic)
          in.space = spaceOf(m);
        else if (ops.count(m))
          in.sub = ops.at(m);
        else if (m == "relaxed" || m == "acquire" || m == "release" ||
                 m == "acq_rel" || m == "cta" || m == "gpu" || m == "sys" ||
                 m == "noftz")
          continue;
        else
          unknown();
      }
      if (!in.sub)
        unknown();
    } else if (base == "bra") {
      in.op = Op::Bra;
      in.uni = has("uni");
      if (p.size() > 2 || (p.size() == 2 && !in.uni))
        unknown();
    } else if (base == "ret" || base == "exit") {
      in.op = base == "ret" ? Op::Ret : Op::Exit;
    } else if (base == "trap") {
      in.op = Op::Trap;
    } else if (base == "call") {
      in.op = Op::Call;
    } else if (base == "bar" || base == "barrier") {
      // bar.sync / barrier.sync[.aligned] / bar.arrive; bar.warp.sync.
      if (has("warp")) {
        in.op = Op::Nop; // bar.warp.sync: lanes converge in lock step here
        in.sub = 1;
      } else if (has("sync") || (p.size() == 1)) {
        in.op = Op::BarSync;
      } else if (has("arrive")) {
        in.op = Op::BarArrive;
      } else {
        unknown();
      }
    } else if (base == "shfl") {
      in.op = Op::Shfl;
      in.type = lastType();
      if (!has("sync"))
        unknown();
      if (has("bfly"))
        in.sub = 0;
      else if (has("idx"))
        in.sub = 1;
      else if (has("up"))
        in.sub = 2;
      else if (has("down"))
        in.sub = 3;
      else
        unknown();
    } else if (base == "vote") {
      in.op = Op::Vote;
      in.type = lastType();
      if (has("all"))
        in.sub = 0;
      else if (has("any"))
        in.sub = 1;
      else if (has("uni"))
        in.sub = 2;
      else if (has("ballot"))
        in.sub = 3;
      else
        unknown();
    } else if (base == "elect") {
      in.op = Op::ElectSync;
    } else if (base == "membar") {
      in.op = Op::Membar;
    } else if (base == "fence") {
      if (has("proxy")) {
        in.op = Op::FenceProxyAsync;
        if (!has("async"))
          unknown(); // fence.proxy.tensormap etc.
      } else if (has("mbarrier_init")) {
        in.op = Op::FenceMbarInit;
      } else {
        in.op = Op::Membar;
      }
    } else if (base == "mbarrier") {
      if (p.size() < 2)
        unknown();
      const std::string &what = p[1];
      if (what == "init")
        in.op = Op::MbarInit;
      else if (what == "arrive" && p.size() > 2 && p[2] == "expect_tx")
        in.op = Op::MbarArriveExpectTx;
      else if (what == "arrive")
        in.op = Op::MbarArrive;
      else if (what == "expect_tx")
        in.op = Op::MbarExpectTx;
      else if (what == "try_wait")
        in.op = Op::MbarTryWait;
      else if (what == "test_wait")
        in.op = Op::MbarTestWait;
      else if (what == "inval")
        in.op = Op::MbarInval;
      else
        unknown();
      in.uni = has("parity");
      in.space = Space::Generic;
      for (size_t i = 2; i < p.size(); ++i) {
        if (spaceOf(p[i]) != Space::Generic)
          in.space = spaceOf(p[i]);
        else if (p[i] == "noComplete" || p[i] == "shared::cluster")
          unknown();
      }
      in.type = Type::B64;
    } else if (base == "setmaxnreg") {
      in.op = Op::Setmaxnreg;
      in.sub = has("inc") ? 1 : has("dec") ? 2 : 0;
      if (!in.sub)
        unknown();
      in.type = Type::U32;
    } else if (base == "wgmma") {
      if (p.size() < 2)
        unknown();
      if (p[1] == "fence") {
        in.op = Op::WgmmaFence;
      } else if (p[1] == "commit_group") {
        in.op = Op::WgmmaCommit;
      } else if (p[1] == "wait_group") {
        in.op = Op::WgmmaWait;
      } else if (p[1] == "mma_async") {
        in.op = Op::WgmmaMma;
        // wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16
        std::string shape;
        for (const std::string &m : p)
          if (m.size() > 3 && m[0] == 'm' &&
              std::isdigit(static_cast<unsigned char>(m[1])))
            shape = m;
        int m = 0, n = 0, k = 0;
        if (std::sscanf(shape.c_str(), "m%dn%dk%d", &m, &n, &k) != 3)
          unknown();
        in.shapeM = static_cast<uint8_t>(m);
        in.shapeN = static_cast<uint16_t>(n);
        in.shapeK = static_cast<uint8_t>(k);
        in.type = parseType(p[p.size() - 3]);
        in.srcType = parseType(p[p.size() - 2]);
        if (m != 64 || k != 16 || n < 8 || n > 256 || n % 8 ||
            in.type != Type::F32 ||
            (in.srcType != Type::BF16 && in.srcType != Type::F16) ||
            parseType(p.back()) != in.srcType)
          unknown();
      } else {
        unknown();
      }
    } else if (base == "cp") {
      // cp.async.{ca,cg}.shared.global[...], cp.async.commit_group,
      // cp.async.wait_group/wait_all, cp.async.bulk.tensor.Nd....
      if (p.size() < 3 || p[1] != "async")
        unknown();
      if (p[2] == "commit_group") {
        in.op = Op::CpAsyncCommit;
      } else if (p[2] == "wait_group" || p[2] == "wait_all") {
        in.op = Op::CpAsyncWait;
        in.sub = p[2] == "wait_all";
      } else if (p[2] == "ca" || p[2] == "cg") {
        in.op = Op::CpAsync;
        if (!has("shared") || !has("global"))
          unknown();
      } else if (p[2] == "bulk") {
        if (p.size() > 3 && p[3] == "commit_group") {
          in.op = Op::CpAsyncBulkCommit;
        } else if (p.size() > 3 && p[3] == "wait_group") {
          in.op = Op::CpAsyncBulkWait;
        } else if (p.size() > 4 && p[3] == "tensor") {
          in.op = Op::CpAsyncBulkTensor;
          int rank = std::atoi(p[4].c_str());
          if (rank < 1 || rank > 5 || p[4] != std::to_string(rank) + "d")
            unknown();
          in.shapeN = static_cast<uint16_t>(rank);
          // Only global -> shared tile loads completing on an mbarrier.
          // Only global -> shared loads in tile mode (the default).
          if (!has("shared::cluster") || !has("global") ||
              !has("mbarrier::complete_tx::bytes"))
            unknown();
          if (p[5] != "shared::cluster")
            unknown(); // the store direction (global first) is not modeled
          for (const std::string &m : p)
            if (m == "multicast::cluster" || m == "im2col" ||
                m.rfind("L2::cache_hint", 0) == 0)
              unknown();
        } else {
          unknown();
        }
      } else {
        unknown();
      }
    } else if (base == "nanosleep" || base == "pmevent") {
      in.op = Op::Nop;
    } else {
      unknown();
    }
  }
};

} // namespace

std::unique_ptr<Module> parsePtx(const std::string &text, std::string &error) {
  try {
    Parser parser(text);
    std::unique_ptr<Module> m = parser.run();
    if (m->functions.empty()) {
      error = "ptx: no .entry in the module";
      return nullptr;
    }
    return m;
  } catch (const ParseError &e) {
    error = "ptx:" + std::to_string(e.line) + ": " + e.what;
    return nullptr;
  }
}

} // namespace kiln::emu

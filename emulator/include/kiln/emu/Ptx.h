//===- Ptx.h - PTX modules decoded for the emulator -------------*- C++ -*-===//
//
// A PTX module is parsed once into functions of decoded instructions:
// registers resolved to slot numbers (inline-asm `{}` scopes respected),
// labels to instruction indices, symbols to their state space, and every
// opcode with its modifiers to one `Op` plus types and flags. A form the
// emulator does not implement is refused at load, naming the PTX line, so a
// kernel never runs with an instruction silently misread.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_EMU_PTX_H
#define KILN_EMU_PTX_H

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace kiln::emu {

enum class Type : uint8_t {
  None,
  Pred,
  B8,
  B16,
  B32,
  B64,
  B128,
  U8,
  U16,
  U32,
  U64,
  S8,
  S16,
  S32,
  S64,
  F16,
  BF16,
  F32,
  F64,
  F16x2,
  BF16x2,
};

/// Bytes of one value of `t` (predicates: 1).
inline unsigned typeBytes(Type t) {
  switch (t) {
  case Type::None:
    return 0;
  case Type::Pred:
  case Type::B8:
  case Type::U8:
  case Type::S8:
    return 1;
  case Type::B16:
  case Type::U16:
  case Type::S16:
  case Type::F16:
  case Type::BF16:
    return 2;
  case Type::B32:
  case Type::U32:
  case Type::S32:
  case Type::F32:
  case Type::F16x2:
  case Type::BF16x2:
    return 4;
  case Type::B64:
  case Type::U64:
  case Type::S64:
  case Type::F64:
    return 8;
  case Type::B128:
    return 16;
  }
  return 0;
}
inline bool isSigned(Type t) {
  return t == Type::S8 || t == Type::S16 || t == Type::S32 || t == Type::S64;
}
inline bool isFloat(Type t) {
  return t == Type::F16 || t == Type::BF16 || t == Type::F32 ||
         t == Type::F64 || t == Type::F16x2 || t == Type::BF16x2;
}
Type parseType(const std::string &name); // "f32" -> F32, else None

enum class Space : uint8_t {
  Generic,
  Global,
  Shared,
  SharedCluster,
  Local,
  Param,
  Const
};

enum class Op : uint16_t {
  // Integer and float ALU.
  Add,
  Sub,
  Mul,
  MulHi,
  MulWide,
  Mad,
  MadHi,
  MadWide,
  Fma,
  Div,
  Rem,
  Min,
  Max,
  Neg,
  Abs,
  Not,
  And,
  Or,
  Xor,
  Shl,
  Shr,
  Bfe,
  Bfi,
  Popc,
  Clz,
  Brev,
  Selp,
  Setp,
  Mov,
  Cvt,
  Cvta,
  CvtaTo,
  Ex2,
  Lg2,
  Sin,
  Cos,
  Rsqrt,
  Rcp,
  Sqrt,
  Tanh,
  Copysign,
  Testp,
  // Memory.
  Ld,
  St,
  Atom,
  Red,
  Prefetch,
  PrefetchTensormap,
  // Control.
  Bra,
  Ret,
  Exit,
  Call,
  BarSync,
  BarArrive,
  Shfl,
  Vote,
  ElectSync,
  Membar,
  Trap,
  // Hopper asynchronous machinery.
  MbarInit,
  MbarArrive,
  MbarArriveExpectTx,
  MbarExpectTx,
  MbarTryWait,
  MbarTestWait,
  MbarInval,
  FenceProxyAsync,
  FenceMbarInit,
  Setmaxnreg,
  WgmmaFence,
  WgmmaMma,
  WgmmaCommit,
  WgmmaWait,
  CpAsync,
  CpAsyncCommit,
  CpAsyncWait,
  CpAsyncBulkTensor,
  CpAsyncBulkCommit,
  CpAsyncBulkWait,
  Nop,
};

/// Special registers (%tid.x, ...).
enum class Special : uint8_t {
  TidX,
  TidY,
  TidZ,
  NtidX,
  NtidY,
  NtidZ,
  CtaidX,
  CtaidY,
  CtaidZ,
  NctaidX,
  NctaidY,
  NctaidZ,
  LaneId,
  WarpId,
  NWarpId,
  SmId,
  NSmId,
  Clock,
  Clock64,
  GlobalTimer,
  ClusterCtaRank,
  ClusterNCtaRank,
  ClusterIdX,
  DynSmemSize,
  LanemaskLt,
  LanemaskEq,
};

struct Operand {
  enum class Kind : uint8_t {
    None,
    Reg,
    Imm,
    Special,
    Addr,
    Vec,
    Label,
    Symbol,
    TensorCoords,
    Sink
  };
  Kind kind = Kind::None;
  bool negate = false; // `!%p` as a source predicate
  int32_t reg = -1;    // Reg; Addr base register (-1: none)
  int32_t symbol = -1; // Addr/Symbol: index into Function::symbols
  int64_t imm = 0;     // Imm bits; Addr byte offset; Label target; Special id
  std::vector<int32_t> regs;  // Vec; TensorCoords (coordinates)
  std::vector<Operand> items; // Vec with immediates (rare); unused otherwise
};

/// The compare of setp.
enum class Cmp : uint8_t {
  Eq,
  Ne,
  Lt,
  Le,
  Gt,
  Ge,
  Lo,
  Ls,
  Hi,
  Hs,
  Equ,
  Neu,
  Ltu,
  Leu,
  Gtu,
  Geu,
  Num,
  Nan
};

struct Instruction {
  Op op = Op::Nop;
  Type type = Type::None;    // the instruction's (destination) type
  Type srcType = Type::None; // cvt source; wgmma A/B element type
  Space space = Space::Generic;
  uint8_t vector = 1; // .v2 / .v4
  Cmp cmp = Cmp::Eq;
  uint8_t boolOp = 0;   // setp/ vote: 0 none, 1 and, 2 or, 3 xor
  uint8_t rounding = 0; // 0 default, 1 rn, 2 rz, 3 rm, 3 rp, int variants
  bool ftz = false, sat = false, approx = false, full = false, nanMode = false;
  bool uni = false, lo = false, hi = false, wide = false;
  uint8_t sub = 0;     // per-op selector (shfl mode, atom op, ...)
  uint16_t shapeN = 0; // wgmma N; cp.async.bulk.tensor rank
  uint8_t shapeM = 0, shapeK = 0;
  int32_t guardReg = -1; // @%p
  bool guardNeg = false; // @!%p
  uint32_t line = 0;     // 1-based line in the PTX text
  std::vector<Operand> ops;
  std::string form; // the full opcode text, e.g. "add.rn.f32"
};

struct RegisterInfo {
  std::string name;
  Type type = Type::B32;
};

struct Symbol {
  std::string name;
  Space space = Space::Generic;
  uint64_t size = 0, align = 1;
  bool isExtern = false;   // .extern .shared (dynamic shared memory)
  bool bareB8 = false;     // `.b8 name;`: how LLVM prints a [0 x i8]
  bool entryParam = false; // a kernel parameter (not a call's .param)
  bool moduleScope = false;
  std::vector<uint8_t> init; // .global initializer bytes
  uint64_t offset = 0;       // param: byte offset; shared: assigned at load
  int64_t moduleSymbol = -1; // index into Module::globals for .global
};

struct Function {
  std::string name;
  bool isEntry = false;
  std::vector<Symbol> params; // entry parameters, in order
  uint64_t paramBytes = 0;
  int reqntid[3] = {0, 0, 0}, maxntid[3] = {0, 0, 0};
  std::vector<RegisterInfo> registers;
  std::vector<Symbol> symbols; // everything Addr/Symbol operands name
  std::vector<Instruction> code;
  /// Per instruction: for a conditional branch, where its paths meet again
  /// (the first instruction of the immediate post-dominator block;
  /// code.size() when they only meet at exit).
  std::vector<uint32_t> reconvergence;
  // Shared memory layout (see layoutShared): offsets count from the start
  // of the block's window, whose first kReservedShared bytes sm_90 keeps.
  uint64_t staticShared = 0;   // bytes of static variables
  uint64_t dynamicBase = 0;    // offset where dynamic shared memory starts
  uint64_t localBytes = 0;     // .local per thread
  uint64_t callParamBytes = 0; // .param declared in the body (call sites)
};

struct GlobalVar {
  std::string name;
  uint64_t size = 0, align = 1;
  std::vector<uint8_t> init;
};

struct Module {
  std::string version, target;
  std::vector<Function> functions;
  std::vector<GlobalVar> globals;
  std::vector<Symbol> moduleShared;         // module-scope .shared
  std::vector<std::string> externFunctions; // e.g. vprintf
  const Function *find(const std::string &name) const;
};

/// sm_90 reserves the first 1 KB of every block's shared memory window
/// (ptxas reports it as .nv.reservedSmem); variables start after it.
constexpr uint64_t kReservedShared = 1024;

/// Assigns shared offsets as ptxas does (measured on its section sizes):
/// function-scope variables in declaration order, then module-scope ones,
/// then the dynamic area. With `bareB8IsDynamic`, a `.b8 name;` scalar (how
/// LLVM prints a zero-length array, MLIR's dynamic shared memory) aliases
/// the dynamic area like `.extern .shared .b8 name[]`; without it, it gets
/// the single byte ptxas gives it.
void layoutShared(Function &fn, bool bareB8IsDynamic);

/// Parses PTX text. On failure returns null and sets `error` to
/// "ptx:LINE: what".
std::unique_ptr<Module> parsePtx(const std::string &text, std::string &error);

/// Every distinct instruction form (`Instruction::form`) in a module with
/// its static count, sorted by form.
std::map<std::string, int> instructionForms(const Module &module);

} // namespace kiln::emu

#endif // KILN_EMU_PTX_H

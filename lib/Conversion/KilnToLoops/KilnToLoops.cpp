//===- KilnToLoops.cpp - Kernel functions to host loop nests ---------------===//
//
// Each kernel function becomes a destination-passing function on memrefs
// whose body is plain loop nests. The arithmetic follows the reference
// kernels (lib/Reference/Kernels.cpp) operation for operation and in the
// same order, so compiled kernels reproduce the float32 reference closely:
// f32 accumulation in index order, RoPE angles and the attention temperature
// in f64, weights widened as they are loaded. Speed (tiling, vectors,
// threads) is a later step; this is the correct baseline it will be held to.
//
//===----------------------------------------------------------------------===//

#include "kiln/Conversion/Passes.h"
#include "dialects/kiln/KilnOps.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "llvm/ADT/TypeSwitch.h"

namespace mlir::kiln {
#define GEN_PASS_DEF_CONVERTKILNTOLOOPS
#include "kiln/Conversion/Passes.h.inc"
} // namespace mlir::kiln

using namespace mlir;
using namespace mlir::kiln;

namespace {

/// Small IR-building vocabulary for loop nests over memrefs.
class Emitter {
public:
  Emitter(OpBuilder &builder, Location loc) : b(&builder), loc(loc) {}

  Value index(int64_t v) { return arith::ConstantIndexOp::create(*b, loc, v); }
  Value f32(double v) {
    return arith::ConstantOp::create(*b, loc, b->getF32FloatAttr(v));
  }
  Value f64(double v) {
    return arith::ConstantOp::create(*b, loc, b->getF64FloatAttr(v));
  }
  Value dim(Value memref, int64_t d) {
    return memref::DimOp::create(*b, loc, memref, d);
  }
  /// Loads an element widened to f32 (or an integer as index).
  Value load(Value memref, ValueRange ivs) {
    Value v = memref::LoadOp::create(*b, loc, memref, ivs);
    if (isa<FloatType>(v.getType()) && !v.getType().isF32())
      v = arith::ExtFOp::create(*b, loc, b->getF32Type(), v);
    return v;
  }
  Value loadIndex(Value memref, ValueRange ivs) {
    Value v = memref::LoadOp::create(*b, loc, memref, ivs);
    return arith::IndexCastOp::create(*b, loc, b->getIndexType(), v);
  }
  void store(Value v, Value memref, ValueRange ivs) {
    Type element = cast<MemRefType>(memref.getType()).getElementType();
    if (element != v.getType())
      v = arith::TruncFOp::create(*b, loc, element, v);
    memref::StoreOp::create(*b, loc, v, memref, ivs);
  }
  Value add(Value x, Value y) { return arith::AddFOp::create(*b, loc, x, y); }
  Value mul(Value x, Value y) { return arith::MulFOp::create(*b, loc, x, y); }
  Value div(Value x, Value y) { return arith::DivFOp::create(*b, loc, x, y); }
  Value addIndex(Value x, Value y) {
    return arith::AddIOp::create(*b, loc, x, y);
  }
  Value mulIndex(Value x, int64_t c) {
    return arith::MulIOp::create(*b, loc, x, index(c));
  }

  /// for iv_0 < ubs[0], iv_1 < ubs[1], ...: body(ivs).
  void loops(ArrayRef<Value> ubs, function_ref<void(ValueRange)> body) {
    SmallVector<Value> lbs(ubs.size(), index(0)), steps(ubs.size(), index(1));
    OpBuilder *outer = b;
    scf::buildLoopNest(*b, loc, lbs, ubs, steps,
                       [&](OpBuilder &nested, Location, ValueRange ivs) {
                         b = &nested;
                         body(ivs);
                         b = outer;
                       });
  }

  /// sum_{i < ub} term(i), accumulated in f32 in index order.
  Value sum(Value ub, function_ref<Value(Value)> term) {
    auto loop = scf::ForOp::create(
        *b, loc, index(0), ub, index(1), ValueRange{f32(0.0)},
        [&](OpBuilder &nested, Location, Value iv, ValueRange acc) {
          OpBuilder *outer = b;
          b = &nested;
          Value next = add(acc[0], term(iv));
          scf::YieldOp::create(*b, loc, next);
          b = outer;
        });
    return loop.getResult(0);
  }

  /// silu(g) * u as the reference writes it: g / (1 + exp(-g)) * u.
  Value swiglu(Value g, Value u) {
    Value negated = arith::NegFOp::create(*b, loc, g);
    Value denominator = add(f32(1.0), math::ExpOp::create(*b, loc, negated));
    return mul(div(g, denominator), u);
  }

  /// 1 / sqrt(sumSq / n + eps), in f32.
  Value inverseRms(Value sumSq, int64_t n, double eps) {
    Value mean = div(sumSq, f32(static_cast<double>(n)));
    Value root = math::SqrtOp::create(*b, loc, add(mean, f32(eps)));
    return div(f32(1.0), root);
  }

  OpBuilder *b;
  Location loc;
};

/// Lowers one kernel function.
class KernelLowering {
public:
  explicit KernelLowering(func::FuncOp kernel) : kernel(kernel) {}

  LogicalResult run();

private:
  LogicalResult lowerOp(Operation *op, Emitter &e);
  Value buffer(Value tensor) { return buffers.lookup(tensor); }
  /// The destination of a result: the output argument when the result is
  /// returned, else a fresh allocation freed at the end of the kernel.
  Value destination(Value result, Value rows, Emitter &e);
  Value rows(Value tensor, Emitter &e) { return e.dim(buffer(tensor), 0); }

  func::FuncOp kernel;
  llvm::DenseMap<Value, Value> buffers;
  llvm::DenseMap<Value, Value> outputs;
  SmallVector<Value> temporaries;
};

Value KernelLowering::destination(Value result, Value rowCount, Emitter &e) {
  if (Value out = outputs.lookup(result))
    return buffers[result] = out;
  auto type = cast<RankedTensorType>(result.getType());
  auto memrefType = MemRefType::get(type.getShape(), type.getElementType());
  SmallVector<Value> dynamic;
  if (type.isDynamicDim(0))
    dynamic.push_back(rowCount);
  Value alloc = memref::AllocOp::create(*e.b, e.loc, memrefType, dynamic);
  temporaries.push_back(alloc);
  return buffers[result] = alloc;
}

/// RoPE in place on `x` ([rows, heads * d]), angles in f64 like the
/// reference; `inv_freq` is unrolled (head_dim / 2 constants).
static void emitRope(Emitter &e, Value x, Value rows, Value positions,
                     int64_t heads, int64_t headDim, ArrayRef<double> freqs) {
  e.loops({rows}, [&](ValueRange t) {
    Value p = memref::LoadOp::create(*e.b, e.loc, positions, t[0]);
    Value pf = arith::SIToFPOp::create(*e.b, e.loc, e.b->getF64Type(), p);
    for (size_t m = 0; m < freqs.size(); ++m) {
      Value angle = e.mul(pf, e.f64(freqs[m]));
      Value c = arith::TruncFOp::create(*e.b, e.loc, e.b->getF32Type(),
                                        math::CosOp::create(*e.b, e.loc, angle));
      Value s = arith::TruncFOp::create(*e.b, e.loc, e.b->getF32Type(),
                                        math::SinOp::create(*e.b, e.loc, angle));
      e.loops({e.index(heads)}, [&](ValueRange h) {
        Value base = e.addIndex(e.mulIndex(h[0], headDim),
                                e.index(2 * static_cast<int64_t>(m)));
        Value next = e.addIndex(base, e.index(1));
        Value x0 = e.load(x, {t[0], base});
        Value x1 = e.load(x, {t[0], next});
        e.store(arith::SubFOp::create(*e.b, e.loc, e.mul(x0, c), e.mul(x1, s)),
                x, {t[0], base});
        e.store(e.add(e.mul(x0, s), e.mul(x1, c)), x, {t[0], next});
      });
    }
  });
}

/// Weightless per-head RMS norm of `in` into `out` (which may be `in`).
static void emitHeadNorm(Emitter &e, Value in, Value out, Value rows,
                         int64_t heads, int64_t headDim, double eps) {
  e.loops({rows, e.index(heads)}, [&](ValueRange ivs) {
    Value base = e.mulIndex(ivs[1], headDim);
    Value ss = e.sum(e.index(headDim), [&](Value i) {
      Value v = e.load(in, {ivs[0], e.addIndex(base, i)});
      return e.mul(v, v);
    });
    Value inv = e.inverseRms(ss, headDim, eps);
    e.loops({e.index(headDim)}, [&](ValueRange i) {
      Value col = e.addIndex(base, i[0]);
      e.store(e.mul(e.mul(e.load(in, {ivs[0], col}), inv), e.f32(1.0)), out,
              {ivs[0], col});
    });
  });
}

/// RMS norm with a weight, row by row.
static void emitRmsNorm(Emitter &e, Value in, Value weight, Value out,
                        Value rows, int64_t cols, double eps) {
  e.loops({rows}, [&](ValueRange t) {
    Value ss = e.sum(e.index(cols), [&](Value c) {
      Value v = e.load(in, {t[0], c});
      return e.mul(v, v);
    });
    Value inv = e.inverseRms(ss, cols, eps);
    e.loops({e.index(cols)}, [&](ValueRange c) {
      Value v = e.mul(e.load(in, {t[0], c[0]}), inv);
      e.store(e.mul(v, e.load(weight, {c[0]})), out, {t[0], c[0]});
    });
  });
}

static int64_t width(Value v) {
  return cast<RankedTensorType>(v.getType()).getDimSize(1);
}

LogicalResult KernelLowering::lowerOp(Operation *op, Emitter &e) {
  return llvm::TypeSwitch<Operation *, LogicalResult>(op)
      .Case([&](LinearOp l) {
        Value x = buffer(l.getInput()), w = buffer(l.getWeight());
        Value t = rows(l.getInput(), e);
        Value out = destination(l.getResult(), t, e);
        int64_t k = width(l.getInput());
        e.loops({t, e.index(width(l.getResult()))}, [&](ValueRange ivs) {
          Value acc = e.sum(e.index(k), [&](Value i) {
            return e.mul(e.load(x, {ivs[0], i}), e.load(w, {ivs[1], i}));
          });
          e.store(acc, out, ivs);
        });
        return success();
      })
      .Case([&](PackedSwiGluOp s) {
        Value x = buffer(s.getInput());
        Value t = rows(s.getInput(), e);
        Value out = destination(s.getResult(), t, e);
        int64_t f = width(s.getResult());
        e.loops({t, e.index(f)}, [&](ValueRange ivs) {
          Value g = e.load(x, ivs);
          Value u = e.load(x, {ivs[0], e.addIndex(ivs[1], e.index(f))});
          e.store(e.swiglu(g, u), out, ivs);
        });
        return success();
      })
      .Case([&](SwiGluOp s) {
        Value g = buffer(s.getGate()), u = buffer(s.getUp());
        Value t = rows(s.getGate(), e);
        Value out = destination(s.getResult(), t, e);
        e.loops({t, e.index(width(s.getResult()))}, [&](ValueRange ivs) {
          e.store(e.swiglu(e.load(g, ivs), e.load(u, ivs)), out, ivs);
        });
        return success();
      })
      .Case([&](AddOp a) {
        Value x = buffer(a.getLhs()), y = buffer(a.getRhs());
        Value t = rows(a.getLhs(), e);
        Value out = destination(a.getResult(), t, e);
        e.loops({t, e.index(width(a.getResult()))}, [&](ValueRange ivs) {
          e.store(e.add(e.load(x, ivs), e.load(y, ivs)), out, ivs);
        });
        return success();
      })
      .Case([&](RmsNormOp n) {
        Value t = rows(n.getInput(), e);
        Value out = destination(n.getResult(), t, e);
        emitRmsNorm(e, buffer(n.getInput()), buffer(n.getWeight()), out, t,
                    width(n.getInput()), n.getEpsilon().convertToDouble());
        return success();
      })
      .Case([&](AddRmsNormOp n) {
        Value x = buffer(n.getInput()), r = buffer(n.getResidual());
        Value t = rows(n.getInput(), e);
        Value sum = destination(n.getSum(), t, e);
        Value normed = destination(n.getNormed(), t, e);
        int64_t cols = width(n.getInput());
        e.loops({t, e.index(cols)}, [&](ValueRange ivs) {
          e.store(e.add(e.load(x, ivs), e.load(r, ivs)), sum, ivs);
        });
        emitRmsNorm(e, sum, buffer(n.getWeight()), normed, t, cols,
                    n.getEpsilon().convertToDouble());
        return success();
      })
      .Case([&](QkNormOp n) {
        Value t = rows(n.getInput(), e);
        Value out = destination(n.getResult(), t, e);
        int64_t heads = n.getNumHeads();
        emitHeadNorm(e, buffer(n.getInput()), out, t, heads,
                     width(n.getInput()) / heads,
                     n.getEpsilon().convertToDouble());
        return success();
      })
      .Case([&](EmbeddingOp m) {
        Value table = buffer(m.getTable()), tokens = buffer(m.getTokens());
        Value t = e.dim(tokens, 0);
        Value out = destination(m.getResult(), t, e);
        e.loops({t, e.index(width(m.getResult()))}, [&](ValueRange ivs) {
          Value id = e.loadIndex(tokens, {ivs[0]});
          e.store(e.load(table, {id, ivs[1]}), out, ivs);
        });
        return success();
      })
      .Case([&](RopeOp r) {
        Value x = buffer(r.getInput());
        Value t = rows(r.getInput(), e);
        Value out = destination(r.getResult(), t, e);
        e.loops({t, e.index(width(r.getInput()))}, [&](ValueRange ivs) {
          e.store(e.load(x, ivs), out, ivs);
        });
        int64_t heads = r.getNumHeads();
        emitRope(e, out, t, buffer(r.getPositions()), heads,
                 width(r.getInput()) / heads, r.getInvFreq());
        return success();
      })
      .Case([&](SplitOp s) {
        Value x = buffer(s.getInput());
        Value t = rows(s.getInput(), e);
        int64_t offset = 0;
        for (Value part : s.getResults()) {
          Value out = destination(part, t, e);
          int64_t first = offset;
          e.loops({t, e.index(width(part))}, [&](ValueRange ivs) {
            Value col = e.addIndex(ivs[1], e.index(first));
            e.store(e.load(x, {ivs[0], col}), out, ivs);
          });
          offset += width(part);
        }
        return success();
      })
      .Case([&](QkvEpilogueOp q) {
        Value qkv = buffer(q.getQkv()), positions = buffer(q.getPositions());
        Value t = rows(q.getQkv(), e);
        int64_t qWidth = width(q.getQuery()), kvWidth = width(q.getKey());
        int64_t heads = q.getNumHeads(), kvHeads = q.getNumKvHeads();
        int64_t headDim = qWidth / heads;
        Value parts[3] = {destination(q.getQuery(), t, e),
                          destination(q.getKey(), t, e),
                          destination(q.getValue(), t, e)};
        int64_t offsets[3] = {0, qWidth, qWidth + kvWidth};
        int64_t widths[3] = {qWidth, kvWidth, kvWidth};
        for (int i = 0; i < 3; ++i)
          e.loops({t, e.index(widths[i])}, [&](ValueRange ivs) {
            Value col = e.addIndex(ivs[1], e.index(offsets[i]));
            e.store(e.load(qkv, {ivs[0], col}), parts[i], ivs);
          });
        if (std::optional<ArrayRef<double>> freqs = q.getInvFreq()) {
          emitRope(e, parts[0], t, positions, heads, headDim, *freqs);
          emitRope(e, parts[1], t, positions, kvHeads, headDim, *freqs);
        }
        if (std::optional<llvm::APFloat> eps = q.getQkNormEpsilon()) {
          emitHeadNorm(e, parts[0], parts[0], t, heads, headDim,
                       eps->convertToDouble());
          emitHeadNorm(e, parts[1], parts[1], t, kvHeads, headDim,
                       eps->convertToDouble());
        }
        if (std::optional<int64_t> floor = q.getFloorScale()) {
          double attnScale = q.getAttnScale()->convertToDouble();
          e.loops({t}, [&](ValueRange tv) {
            // tau = 1 + attn_scale * ln(1 + floor((p + 1) / floor_scale)),
            // the floor on integers, the rest in f64.
            Value p = memref::LoadOp::create(*e.b, e.loc, positions, tv[0]);
            Value one = arith::ConstantIntOp::create(*e.b, e.loc, 1, 64);
            Value steps = arith::DivSIOp::create(
                *e.b, e.loc, arith::AddIOp::create(*e.b, e.loc, p, one),
                arith::ConstantIntOp::create(*e.b, e.loc, *floor, 64));
            Value stepsF =
                arith::SIToFPOp::create(*e.b, e.loc, e.b->getF64Type(), steps);
            Value log = math::LogOp::create(*e.b, e.loc,
                                            e.add(e.f64(1.0), stepsF));
            Value tau = arith::TruncFOp::create(
                *e.b, e.loc, e.b->getF32Type(),
                e.add(e.f64(1.0), e.mul(e.f64(attnScale), log)));
            e.loops({e.index(qWidth)}, [&](ValueRange c) {
              e.store(e.mul(e.load(parts[0], {tv[0], c[0]}), tau), parts[0],
                      {tv[0], c[0]});
            });
          });
        }
        return success();
      })
      .Default([&](Operation *other) {
        return other->emitOpError()
               << "has no host loop lowering yet (kernel kind '"
               << kernel->getAttrOfType<StringAttr>("kiln.kernel").getValue()
               << "')";
      });
}

LogicalResult KernelLowering::run() {
  MLIRContext *ctx = kernel.getContext();
  Block &body = kernel.getBody().front();
  auto ret = cast<func::ReturnOp>(body.getTerminator());

  // The new signature: inputs then outputs, all memrefs.
  SmallVector<Type> types;
  auto toMemRef = [](Type t) {
    auto tensor = cast<RankedTensorType>(t);
    return MemRefType::get(tensor.getShape(), tensor.getElementType());
  };
  for (Type t : kernel.getArgumentTypes())
    types.push_back(toMemRef(t));
  for (Type t : kernel.getResultTypes())
    types.push_back(toMemRef(t));
  OpBuilder builder(ctx);
  Block *entry = new Block();
  for (Type t : types)
    entry->addArgument(t, kernel.getLoc());
  for (auto [arg, memref] : llvm::zip(body.getArguments(),
                                      entry->getArguments().take_front(
                                          body.getNumArguments())))
    buffers[arg] = memref;
  for (auto [value, memref] : llvm::zip(
           ret.getOperands(),
           entry->getArguments().drop_front(body.getNumArguments())))
    if (!outputs.count(value))
      outputs[value] = memref;

  builder.setInsertionPointToStart(entry);
  Emitter e(builder, kernel.getLoc());
  for (Operation &op : body.without_terminator()) {
    e.loc = op.getLoc();
    if (failed(lowerOp(&op, e))) {
      delete entry;
      return failure();
    }
  }
  e.loc = kernel.getLoc();
  // A value returned twice, or a kernel argument returned as is, still
  // fills every output.
  for (auto [value, memref] : llvm::zip(
           ret.getOperands(),
           entry->getArguments().drop_front(body.getNumArguments())))
    if (buffers.lookup(value) != memref)
      memref::CopyOp::create(builder, e.loc, buffers.lookup(value), memref);
  for (Value tmp : temporaries)
    memref::DeallocOp::create(builder, e.loc, tmp);
  func::ReturnOp::create(builder, e.loc);

  kernel.getBody().getBlocks().clear();
  kernel.getBody().push_back(entry);
  kernel.setFunctionType(FunctionType::get(ctx, types, {}));
  kernel->setAttr("llvm.emit_c_interface", UnitAttr::get(ctx));
  kernel.setPublic();
  return success();
}

struct ConvertKilnToLoopsPass
    : mlir::kiln::impl::ConvertKilnToLoopsBase<ConvertKilnToLoopsPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    bool failedAny = false;
    for (auto func : llvm::make_early_inc_range(module.getOps<func::FuncOp>())) {
      if (!func->hasAttr("kiln.kernel")) {
        if (!func.isExternal()) {
          func.emitError() << "lower kernels in a module of their own: @"
                           << func.getSymName() << " is not a kernel";
          failedAny = true;
        }
        continue;
      }
      if (failed(KernelLowering(func).run()))
        failedAny = true;
    }
    if (failedAny)
      signalPassFailure();
  }
};

} // namespace

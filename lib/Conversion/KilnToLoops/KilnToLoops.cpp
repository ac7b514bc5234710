//===- KilnToLoops.cpp - Kernel functions to host loop nests
//---------------===//
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

#include "HostVector.h"

#include "dialects/kiln/KilnOps.h"
#include "kiln/Conversion/Emitter.h"
#include "kiln/Conversion/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "llvm/ADT/TypeSwitch.h"

#include <limits>

namespace mlir::kiln {
#define GEN_PASS_DEF_CONVERTKILNTOLOOPS
#include "kiln/Conversion/Passes.h.inc"
} // namespace mlir::kiln

using namespace mlir;
using namespace mlir::kiln;

namespace {

/// Lowers one kernel function.
class KernelLowering {
public:
  KernelLowering(func::FuncOp kernel, const HostVectorShape &shape)
      : kernel(kernel), shape(shape) {}

  LogicalResult run();

private:
  LogicalResult lowerOp(Operation *op, Emitter &e);
  LogicalResult lowerAttention(AttentionOp a, Emitter &e);
  LogicalResult lowerRoute(MoeRouteOp r, Emitter &e);
  /// The sort of an expert-parallel route: only the rank's experts get
  /// offsets; the other pairs go last as token 0 with gate 0.
  LogicalResult lowerExpertParallelDispatch(MoeRouteOp r, Emitter &e,
                                            Value pairs, Value pairExpert,
                                            Value pairGate, Value counts,
                                            Value indices, Value offsets,
                                            Value gates);
  /// The grouped down GEMM of expert_down (`indices` and `addend`: the
  /// rows combine per token onto the addend) and of expert_down_pairs (both
  /// null: a row per pair, from zero); `rows` rows of output.
  void lowerExpertDown(Value down, Value h, Value indices, Value offsets,
                       Value addend, Value out, Value rows, Emitter &e);
  Value buffer(Value tensor) { return buffers.lookup(tensor); }
  /// The destination of a result: the output argument when the result is
  /// returned, else a fresh allocation freed at the end of the kernel.
  Value destination(Value result, Value rows, Emitter &e);
  Value rows(Value tensor, Emitter &e) { return e.dim(buffer(tensor), 0); }

  bool vectorized() const { return shape.lanes > 1; }

  func::FuncOp kernel;
  HostVectorShape shape;
  llvm::DenseMap<Value, Value> buffers;
  llvm::DenseMap<Value, Value> outputs;
  /// For attention kernels: the key argument -> its positions argument.
  llvm::DenseMap<Value, Value> keyPositions;
  SmallVector<Value> temporaries;
  /// Kernel arguments the kernel reads in panels (index -> columns): they
  /// get a `kiln.host_panel` attribute for the engine writer's plan.
  llvm::SmallDenseMap<unsigned, int64_t> panels;
  /// Notes that `weight` is read in panels of `columns` when it is a
  /// kernel argument (it always is: weights come in as arguments).
  void notePanel(Value weight, int64_t columns) {
    if (auto arg = dyn_cast<BlockArgument>(weight); arg && columns)
      panels[arg.getArgNumber()] = columns;
  }
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
static void emitRope(Emitter &e, bool parallel, Value x, Value rows,
                     Value positions, int64_t heads, int64_t headDim,
                     ArrayRef<double> freqs) {
  emitRowLoops(e, parallel, {rows}, [&](ValueRange t) {
    Value p = memref::LoadOp::create(*e.b, e.loc, positions, t[0]);
    Value pf = arith::SIToFPOp::create(*e.b, e.loc, e.b->getF64Type(), p);
    for (size_t m = 0; m < freqs.size(); ++m) {
      Value angle = e.mul(pf, e.f64(freqs[m]));
      Value c =
          arith::TruncFOp::create(*e.b, e.loc, e.b->getF32Type(),
                                  math::CosOp::create(*e.b, e.loc, angle));
      Value s =
          arith::TruncFOp::create(*e.b, e.loc, e.b->getF32Type(),
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
static void emitHeadNorm(Emitter &e, bool parallel, Value in, Value out,
                         Value rows, int64_t heads, int64_t headDim,
                         double eps) {
  emitRowLoops(e, parallel, {rows, e.index(heads)}, [&](ValueRange ivs) {
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
static void emitRmsNorm(Emitter &e, bool parallel, Value in, Value weight,
                        Value out, Value rows, int64_t cols, double eps) {
  emitRowLoops(e, parallel, {rows}, [&](ValueRange t) {
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

/// tau(p) = 1 + attn_scale * ln(1 + floor((p + 1) / floor_scale)) as f32,
/// the floor on integers and the rest in f64, like the reference.
static Value emitTemperature(Emitter &e, Value position, double attnScale,
                             int64_t floorScale) {
  Value one = arith::ConstantIntOp::create(*e.b, e.loc, 1, 64);
  Value steps = arith::DivSIOp::create(
      *e.b, e.loc, arith::AddIOp::create(*e.b, e.loc, position, one),
      arith::ConstantIntOp::create(*e.b, e.loc, floorScale, 64));
  Value stepsF = arith::SIToFPOp::create(*e.b, e.loc, e.b->getF64Type(), steps);
  Value log = math::LogOp::create(*e.b, e.loc, e.add(e.f64(1.0), stepsF));
  return arith::TruncFOp::create(
      *e.b, e.loc, e.b->getF32Type(),
      e.add(e.f64(1.0), e.mul(e.f64(attnScale), log)));
}

/// Key visibility: k <= q, and the same chunk for chunked masks.
static Value emitVisible(Emitter &e, Value q, Value k, int64_t chunk) {
  Value causal = e.cmpIndex(arith::CmpIPredicate::sle, k, q);
  if (chunk == 0)
    return causal;
  Value c = arith::ConstantIntOp::create(*e.b, e.loc, chunk, 64);
  Value same = e.cmpIndex(arith::CmpIPredicate::eq,
                          arith::DivSIOp::create(*e.b, e.loc, k, c),
                          arith::DivSIOp::create(*e.b, e.loc, q, c));
  return arith::AndIOp::create(*e.b, e.loc, causal, same);
}

/// The down GEMM of each pair of each expert (`off`: [E + 1] offsets),
/// one output column at a time in f32: `write(pair, column, h[pair] .
/// w[e, :, column])`.
static void emitExpertDownLoops(Emitter &e, Value h, Value off, Value w,
                                int64_t experts, int64_t f, int64_t d,
                                function_ref<void(Value, Value, Value)> write) {
  e.loops({e.index(experts)}, [&](ValueRange ex) {
    Value begin = e.loadIndex(off, {ex[0]});
    Value end = e.loadIndex(off, {e.addIndex(ex[0], e.index(1))});
    e.loopWith(begin, end, {}, [&](Value i, ValueRange) {
      e.loops({e.index(d)}, [&](ValueRange c) {
        Value acc = e.sum(e.index(f), [&](Value j) {
          return e.mul(e.load(h, {i, j}), e.load(w, {ex[0], j, c[0]}));
        });
        write(i, c[0], acc);
      });
      return SmallVector<Value>();
    });
  });
}

static int64_t width(Value v) {
  return cast<RankedTensorType>(v.getType()).getDimSize(1);
}

void KernelLowering::lowerExpertDown(Value down, Value h, Value indices,
                                     Value offsets, Value addend, Value out,
                                     Value rows, Emitter &e) {
  auto wType = cast<RankedTensorType>(down.getType());
  int64_t experts = wType.getDimSize(0), f = wType.getDimSize(1);
  int64_t d = wType.getDimSize(2);
  Value w = buffer(down);
  if (vectorized()) {
    notePanel(down, expertPanel(shape, d));
    emitVectorExpertDown(e, shape, h, indices, offsets, w, addend, out, rows,
                         experts, f, d);
    return;
  }
  e.loops({rows, e.index(d)}, [&](ValueRange ivs) {
    e.store(addend ? e.load(addend, ivs) : e.f32(0.0), out, ivs);
  });
  emitExpertDownLoops(
      e, h, offsets, w, experts, f, d, [&](Value pair, Value col, Value acc) {
        Value row = indices ? e.loadIndex(indices, {pair}) : pair;
        e.store(e.add(e.load(out, {row, col}), acc), out, {row, col});
      });
}

LogicalResult KernelLowering::lowerOp(Operation *op, Emitter &e) {
  return llvm::TypeSwitch<Operation *, LogicalResult>(op)
      .Case([&](LinearOp l) {
        Value x = buffer(l.getInput()), w = buffer(l.getWeight());
        Value t = rows(l.getInput(), e);
        Value out = destination(l.getResult(), t, e);
        int64_t k = width(l.getInput());
        if (vectorized()) {
          emitVectorLinear(e, shape, x, w, out, t, k, width(l.getResult()));
          return success();
        }
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
        emitRowLoops(e, shape.parallel, {t, e.index(f)}, [&](ValueRange ivs) {
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
        emitRowLoops(e, shape.parallel, {t, e.index(width(s.getResult()))},
                     [&](ValueRange ivs) {
                       e.store(e.swiglu(e.load(g, ivs), e.load(u, ivs)), out,
                               ivs);
                     });
        return success();
      })
      .Case([&](AddOp a) {
        Value x = buffer(a.getLhs()), y = buffer(a.getRhs());
        Value t = rows(a.getLhs(), e);
        Value out = destination(a.getResult(), t, e);
        emitRowLoops(e, shape.parallel, {t, e.index(width(a.getResult()))},
                     [&](ValueRange ivs) {
                       e.store(e.add(e.load(x, ivs), e.load(y, ivs)), out, ivs);
                     });
        return success();
      })
      .Case([&](RmsNormOp n) {
        Value t = rows(n.getInput(), e);
        Value out = destination(n.getResult(), t, e);
        emitRmsNorm(e, shape.parallel, buffer(n.getInput()),
                    buffer(n.getWeight()), out, t, width(n.getInput()),
                    n.getEpsilon().convertToDouble());
        return success();
      })
      .Case([&](AddRmsNormOp n) {
        Value x = buffer(n.getInput()), r = buffer(n.getResidual());
        Value t = rows(n.getResidual(), e);
        Value sum = destination(n.getSum(), t, e);
        Value normed = destination(n.getNormed(), t, e);
        int64_t cols = width(n.getInput());
        if (n.getPartials() == 1) {
          emitRowLoops(
              e, shape.parallel, {t, e.index(cols)}, [&](ValueRange ivs) {
                e.store(e.add(e.load(x, ivs), e.load(r, ivs)), sum, ivs);
              });
        } else {
          // As many blocks as the runtime handed over: every rank's partial
          // sum, or (above the gather's limit) their all-reduced sum alone.
          Value empty = e.cmpIndex(arith::CmpIPredicate::eq, t, e.index(0));
          Value blocks =
              e.divIndex(e.dim(x, 0), e.select(empty, e.index(1), t));
          emitRowLoops(
              e, shape.parallel, {t, e.index(cols)}, [&](ValueRange ivs) {
                Value partialSum = e.sum(blocks, [&](Value p) {
                  Value row = e.addIndex(
                      arith::MulIOp::create(*e.b, e.loc, p, t), ivs[0]);
                  return e.load(x, {row, ivs[1]});
                });
                e.store(e.add(partialSum, e.load(r, ivs)), sum, ivs);
              });
        }
        emitRmsNorm(e, shape.parallel, sum, buffer(n.getWeight()), normed, t,
                    cols, n.getEpsilon().convertToDouble());
        return success();
      })
      .Case([&](QkNormOp n) {
        Value t = rows(n.getInput(), e);
        Value out = destination(n.getResult(), t, e);
        int64_t heads = n.getNumHeads();
        emitHeadNorm(e, shape.parallel, buffer(n.getInput()), out, t, heads,
                     width(n.getInput()) / heads,
                     n.getEpsilon().convertToDouble());
        return success();
      })
      .Case([&](EmbeddingOp m) {
        Value table = buffer(m.getTable()), tokens = buffer(m.getTokens());
        Value t = e.dim(tokens, 0);
        Value out = destination(m.getResult(), t, e);
        emitRowLoops(e, shape.parallel, {t, e.index(width(m.getResult()))},
                     [&](ValueRange ivs) {
                       Value id = e.loadIndex(tokens, {ivs[0]});
                       e.store(e.load(table, {id, ivs[1]}), out, ivs);
                     });
        return success();
      })
      .Case([&](RopeOp r) {
        Value x = buffer(r.getInput());
        Value t = rows(r.getInput(), e);
        Value out = destination(r.getResult(), t, e);
        emitRowLoops(
            e, shape.parallel, {t, e.index(width(r.getInput()))},
            [&](ValueRange ivs) { e.store(e.load(x, ivs), out, ivs); });
        int64_t heads = r.getNumHeads();
        emitRope(e, shape.parallel, out, t, buffer(r.getPositions()), heads,
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
          emitRowLoops(e, shape.parallel, {t, e.index(width(part))},
                       [&](ValueRange ivs) {
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
          emitRowLoops(e, shape.parallel, {t, e.index(widths[i])},
                       [&](ValueRange ivs) {
                         Value col = e.addIndex(ivs[1], e.index(offsets[i]));
                         e.store(e.load(qkv, {ivs[0], col}), parts[i], ivs);
                       });
        if (std::optional<ArrayRef<double>> freqs = q.getInvFreq()) {
          emitRope(e, shape.parallel, parts[0], t, positions, heads, headDim,
                   *freqs);
          emitRope(e, shape.parallel, parts[1], t, positions, kvHeads, headDim,
                   *freqs);
        }
        if (std::optional<llvm::APFloat> eps = q.getQkNormEpsilon()) {
          emitHeadNorm(e, shape.parallel, parts[0], parts[0], t, heads, headDim,
                       eps->convertToDouble());
          emitHeadNorm(e, shape.parallel, parts[1], parts[1], t, kvHeads,
                       headDim, eps->convertToDouble());
        }
        if (std::optional<int64_t> floor = q.getFloorScale()) {
          double attnScale = q.getAttnScale()->convertToDouble();
          emitRowLoops(e, shape.parallel, {t}, [&](ValueRange tv) {
            Value p = memref::LoadOp::create(*e.b, e.loc, positions, tv[0]);
            Value tau = emitTemperature(e, p, attnScale, *floor);
            e.loops({e.index(qWidth)}, [&](ValueRange c) {
              e.store(e.mul(e.load(parts[0], {tv[0], c[0]}), tau), parts[0],
                      {tv[0], c[0]});
            });
          });
        }
        return success();
      })
      .Case([&](AttentionOp a) { return lowerAttention(a, e); })
      .Case([&](MoeRouteOp r) { return lowerRoute(r, e); })
      .Case([&](ExpertGateUpOp g) {
        Value x = buffer(g.getInput()), idx = buffer(g.getTokenIndices());
        Value off = buffer(g.getExpertOffsets()), gates = buffer(g.getGates());
        Value w = buffer(g.getGateUp());
        Value out = destination(g.getResult(), e.dim(idx, 0), e);
        auto wType = cast<RankedTensorType>(g.getGateUp().getType());
        int64_t experts = wType.getDimSize(0), d = wType.getDimSize(1);
        int64_t f = wType.getDimSize(2) / 2;
        if (vectorized()) {
          notePanel(g.getGateUp(), expertPanel(shape, f));
          emitVectorExpertGateUp(e, shape, x, idx, off, gates, w, out, experts,
                                 d, f);
          return success();
        }
        Value z = memref::AllocOp::create(
            *e.b, e.loc, MemRefType::get({d}, e.b->getF32Type()));
        temporaries.push_back(z);
        e.loops({e.index(experts)}, [&](ValueRange ex) {
          Value begin = e.loadIndex(off, {ex[0]});
          Value end = e.loadIndex(off, {e.addIndex(ex[0], e.index(1))});
          e.loopWith(begin, end, {}, [&](Value i, ValueRange) {
            Value token = e.loadIndex(idx, {i});
            Value gate = e.load(gates, {i});
            e.loops({e.index(d)}, [&](ValueRange c) {
              e.store(e.mul(gate, e.load(x, {token, c[0]})), z, c);
            });
            e.loops({e.index(f)}, [&](ValueRange j) {
              Value up = e.addIndex(j[0], e.index(f));
              Value gv = e.sum(e.index(d), [&](Value c) {
                return e.mul(e.load(z, {c}), e.load(w, {ex[0], c, j[0]}));
              });
              Value uv = e.sum(e.index(d), [&](Value c) {
                return e.mul(e.load(z, {c}), e.load(w, {ex[0], c, up}));
              });
              e.store(e.swiglu(gv, uv), out, {i, j[0]});
            });
            return SmallVector<Value>();
          });
        });
        return success();
      })
      .Case([&](ExpertDownOp dn) {
        Value t = rows(dn.getAddend(), e);
        lowerExpertDown(dn.getDown(), buffer(dn.getHidden()),
                        buffer(dn.getTokenIndices()),
                        buffer(dn.getExpertOffsets()), buffer(dn.getAddend()),
                        destination(dn.getResult(), t, e), t, e);
        return success();
      })
      .Case([&](ExpertDownPairsOp dn) {
        // A row per received pair (no combination per token: that is the
        // token combine's, on the rank the pair came from).
        Value pairs = rows(dn.getHidden(), e);
        lowerExpertDown(dn.getDown(), buffer(dn.getHidden()), Value(),
                        buffer(dn.getExpertOffsets()), Value(),
                        destination(dn.getResult(), pairs, e), pairs, e);
        return success();
      })
      .Default([&](Operation *other) {
        return other->emitOpError()
               << "has no host loop lowering yet (kernel kind '"
               << stringifyKernelKind(kernel
                                          ->getAttrOfType<KernelKindAttr>(
                                              KilnDialect::getKernelAttrName())
                                          .getValue())
               << "')";
      });
}

/// Attention over the keys the runtime passes: the kernel's key and value
/// arguments hold every cached token followed by the new ones, and an extra
/// argument holds their positions (the host ABI: see docs/design.md). Same
/// operation order as the reference: scores of visible keys, max, exp, sum,
/// then the weighted sum of values in key order.
LogicalResult KernelLowering::lowerAttention(AttentionOp a, Emitter &e) {
  Value q = buffer(a.getQuery()), k = buffer(a.getKey()),
        v = buffer(a.getValue());
  Value qPositions = buffer(a.getPositions());
  Value kPositions = keyPositions.lookup(a.getKey());
  if (!kPositions)
    return a.emitOpError() << "the key of a host attention kernel must be a "
                              "kernel argument";
  Value t = rows(a.getQuery(), e);
  Value keys = e.dim(k, 0);
  Value out = destination(a.getResult(), t, e);
  int64_t heads = a.getNumHeads(), kvHeads = a.getNumKvHeads();
  int64_t d = width(a.getQuery()) / heads, group = heads / kvHeads;
  int64_t chunk =
      a.getMask() == MaskKind::Chunked ? a.getChunkSize().value_or(0) : 0;
  double scale = a.getScale().convertToDouble();
  if (vectorized() && d % shape.lanes == 0) {
    AttentionShape as{heads,
                      kvHeads,
                      d,
                      chunk,
                      scale,
                      a.getFloorScale(),
                      a.getAttnScale() ? a.getAttnScale()->convertToDouble()
                                       : 0.0};
    emitVectorAttention(
        e, shape, q, k, v, qPositions, kPositions, out, t, as,
        [&](Value position) {
          return as.floorScale ? emitTemperature(e, position, as.attnScale,
                                                 *as.floorScale)
                               : e.f32(1.0);
        },
        [&](Value qPos, Value kPos) {
          return emitVisible(e, qPos, kPos, chunk);
        });
    return success();
  }
  Value scores = memref::AllocOp::create(
      *e.b, e.loc, MemRefType::get({ShapedType::kDynamic}, e.b->getF32Type()),
      ValueRange{keys});
  temporaries.push_back(scores);
  e.loops({t, e.index(heads)}, [&](ValueRange ivs) {
    Value tok = ivs[0];
    Value qBase = e.mulIndex(ivs[1], d);
    Value kvBase = e.mulIndex(
        arith::DivUIOp::create(*e.b, e.loc, ivs[1], e.index(group)), d);
    Value qPos = memref::LoadOp::create(*e.b, e.loc, qPositions, tok);
    Value tau =
        a.getFloorScale()
            ? emitTemperature(e, qPos, a.getAttnScale()->convertToDouble(),
                              *a.getFloorScale())
            : e.f32(1.0);
    Value negInf = e.f32(-std::numeric_limits<double>::infinity());
    Value maxScore =
        e.loopWith(e.index(0), keys, {negInf}, [&](Value s, ValueRange acc) {
          Value kPos = memref::LoadOp::create(*e.b, e.loc, kPositions, s);
          Value visible = emitVisible(e, qPos, kPos, chunk);
          Value dot = e.sum(e.index(d), [&](Value i) {
            Value qi = e.mul(e.load(q, {tok, e.addIndex(qBase, i)}), tau);
            return e.mul(qi, e.load(k, {s, e.addIndex(kvBase, i)}));
          });
          Value score = e.mul(dot, e.f32(scale));
          e.store(score, scores, {s});
          Value larger = arith::CmpFOp::create(
              *e.b, e.loc, arith::CmpFPredicate::OLT, acc[0], score);
          Value next = e.select(larger, score, acc[0]);
          return SmallVector<Value>{e.select(visible, next, acc[0])};
        })[0];
    Value total = e.loopWith(
        e.index(0), keys, {e.f32(0.0)}, [&](Value s, ValueRange acc) {
          Value kPos = memref::LoadOp::create(*e.b, e.loc, kPositions, s);
          Value visible = emitVisible(e, qPos, kPos, chunk);
          Value p = math::ExpOp::create(
              *e.b, e.loc,
              arith::SubFOp::create(*e.b, e.loc, e.load(scores, {s}),
                                    maxScore));
          e.store(p, scores, {s});
          return SmallVector<Value>{
              e.select(visible, e.add(acc[0], p), acc[0])};
        })[0];
    e.loops({e.index(d)}, [&](ValueRange i) {
      e.store(e.f32(0.0), out, {tok, e.addIndex(qBase, i[0])});
    });
    e.loopWith(e.index(0), keys, {}, [&](Value s, ValueRange) {
      Value kPos = memref::LoadOp::create(*e.b, e.loc, kPositions, s);
      e.when(emitVisible(e, qPos, kPos, chunk), [&] {
        Value weight = e.div(e.load(scores, {s}), total);
        e.loops({e.index(d)}, [&](ValueRange i) {
          Value col = e.addIndex(qBase, i[0]);
          Value contribution =
              e.mul(weight, e.load(v, {s, e.addIndex(kvBase, i[0])}));
          e.store(e.add(e.load(out, {tok, col}), contribution), out,
                  {tok, col});
        });
      });
      return SmallVector<Value>();
    });
  });
  return success();
}

/// Router logits, top-k (ties to the lower expert), sigmoid gates, then a
/// counting sort of the (token, rank) pairs by expert that keeps token and
/// rank order within an expert, as the reference's sort does.
LogicalResult KernelLowering::lowerRoute(MoeRouteOp r, Emitter &e) {
  Value x = buffer(r.getInput()), router = buffer(r.getRouter());
  Value t = rows(r.getInput(), e);
  int64_t experts =
      cast<RankedTensorType>(r.getRouter().getType()).getDimSize(0);
  int64_t d = width(r.getInput()), topK = r.getTopK();
  Value pairs = e.b->createOrFold<arith::MulIOp>(e.loc, t, e.index(topK));
  Value indices = destination(r.getTokenIndices(), pairs, e);
  Value offsets = destination(r.getExpertOffsets(), pairs, e);
  Value gates = destination(r.getGates(), pairs, e);
  auto f32 = e.b->getF32Type();
  auto i64 = e.b->getI64Type();
  auto alloc = [&](ArrayRef<int64_t> shape, Type type, ValueRange dynamic) {
    Value m = memref::AllocOp::create(*e.b, e.loc, MemRefType::get(shape, type),
                                      dynamic);
    temporaries.push_back(m);
    return m;
  };
  int64_t dyn = ShapedType::kDynamic;
  Value logits = alloc({experts}, f32, {});
  Value taken = alloc({experts}, e.b->getI1Type(), {});
  Value pairExpert = alloc({dyn}, i64, {pairs});
  Value pairGate = alloc({dyn}, f32, {pairs});
  Value cursor = alloc({experts + 1}, i64, {});
  Value zero64 = arith::ConstantIntOp::create(*e.b, e.loc, 0, 64);
  Value one64 = arith::ConstantIntOp::create(*e.b, e.loc, 1, 64);
  e.loops({e.index(experts + 1)}, [&](ValueRange i) {
    memref::StoreOp::create(*e.b, e.loc, zero64, cursor, i);
  });
  // With vectors the logits of every token are one small GEMM first (the
  // router is [experts, d], the layout kiln.linear takes).
  Value allLogits;
  if (vectorized()) {
    allLogits = alloc({dyn, experts}, f32, {t});
    emitVectorLinear(e, shape, x, router, allLogits, t, d, experts);
  }
  e.loops({t}, [&](ValueRange tv) {
    e.loops({e.index(experts)}, [&](ValueRange ex) {
      Value l = allLogits ? e.load(allLogits, {tv[0], ex[0]})
                          : e.sum(e.index(d), [&](Value c) {
                              return e.mul(e.load(x, {tv[0], c}),
                                           e.load(router, {ex[0], c}));
                            });
      e.store(l, logits, ex);
      memref::StoreOp::create(*e.b, e.loc,
                              arith::ConstantIntOp::create(*e.b, e.loc, 0, 1),
                              taken, ex);
    });
    e.loops({e.index(topK)}, [&](ValueRange kv) {
      // The first untaken expert with the largest logit (NaN ranks last).
      Value negInf = e.f32(-std::numeric_limits<double>::infinity());
      ValueRange best = e.loopWith(
          e.index(0), e.index(experts), {e.index(-1), negInf},
          [&](Value ex, ValueRange acc) {
            Value isTaken = memref::LoadOp::create(*e.b, e.loc, taken, ex);
            Value l = e.load(logits, {ex});
            Value isNan = arith::CmpFOp::create(
                *e.b, e.loc, arith::CmpFPredicate::UNO, l, l);
            Value rank = e.select(isNan, negInf, l);
            Value none =
                e.cmpIndex(arith::CmpIPredicate::slt, acc[0], e.index(0));
            Value better = arith::CmpFOp::create(
                *e.b, e.loc, arith::CmpFPredicate::OGT, rank, acc[1]);
            Value take = arith::AndIOp::create(
                *e.b, e.loc,
                arith::XOrIOp::create(
                    *e.b, e.loc, isTaken,
                    arith::ConstantIntOp::create(*e.b, e.loc, 1, 1)),
                arith::OrIOp::create(*e.b, e.loc, none, better));
            return SmallVector<Value>{e.select(take, ex, acc[0]),
                                      e.select(take, rank, acc[1])};
          });
      Value chosen = best[0];
      memref::StoreOp::create(*e.b, e.loc,
                              arith::ConstantIntOp::create(*e.b, e.loc, 1, 1),
                              taken, chosen);
      Value pair = e.addIndex(e.mulIndex(tv[0], topK), kv[0]);
      memref::StoreOp::create(*e.b, e.loc, e.toI64(chosen), pairExpert, pair);
      Value l = e.load(logits, {chosen});
      Value gate =
          e.div(e.f32(1.0),
                e.add(e.f32(1.0),
                      math::ExpOp::create(
                          *e.b, e.loc, arith::NegFOp::create(*e.b, e.loc, l))));
      e.store(gate, pairGate, {pair});
      Value slot = e.addIndex(chosen, e.index(1));
      Value count = memref::LoadOp::create(*e.b, e.loc, cursor, slot);
      memref::StoreOp::create(*e.b, e.loc,
                              arith::AddIOp::create(*e.b, e.loc, count, one64),
                              cursor, slot);
    });
  });
  if (r.getExpertGroups())
    return lowerExpertParallelDispatch(r, e, pairs, pairExpert, pairGate,
                                       cursor, indices, offsets, gates);
  // Prefix sums give the offsets; the cursor then walks each expert's range.
  memref::StoreOp::create(*e.b, e.loc, zero64, offsets, ValueRange{e.index(0)});
  e.loops({e.index(experts)}, [&](ValueRange ex) {
    Value next = e.addIndex(ex[0], e.index(1));
    Value sum = arith::AddIOp::create(
        *e.b, e.loc, memref::LoadOp::create(*e.b, e.loc, offsets, ex[0]),
        memref::LoadOp::create(*e.b, e.loc, cursor, next));
    memref::StoreOp::create(*e.b, e.loc, sum, offsets, next);
  });
  e.loops({e.index(experts)}, [&](ValueRange ex) {
    memref::StoreOp::create(*e.b, e.loc,
                            memref::LoadOp::create(*e.b, e.loc, offsets, ex[0]),
                            cursor, ex[0]);
  });
  e.loops({pairs}, [&](ValueRange p) {
    Value ex = e.toIndex(memref::LoadOp::create(*e.b, e.loc, pairExpert, p[0]));
    Value at = memref::LoadOp::create(*e.b, e.loc, cursor, ex);
    Value slot = e.toIndex(at);
    Value token = arith::DivUIOp::create(*e.b, e.loc, p[0], e.index(topK));
    memref::StoreOp::create(*e.b, e.loc, e.toI64(token), indices, slot);
    e.store(e.load(pairGate, {p[0]}), gates, {slot});
    memref::StoreOp::create(
        *e.b, e.loc, arith::AddIOp::create(*e.b, e.loc, at, one64), cursor, ex);
  });
  return success();
}

LogicalResult KernelLowering::lowerExpertParallelDispatch(
    MoeRouteOp r, Emitter &e, Value pairs, Value pairExpert, Value pairGate,
    Value counts, Value indices, Value offsets, Value gates) {
  // The rank's group holds experts [first, first + local): group
  // rank * G / R of the module's R ranks.
  int64_t local = r.getExpertOffsets().getType().getDimSize(0) - 1;
  int64_t groups = static_cast<int64_t>(*r.getExpertGroups());
  int64_t ranks = static_cast<int64_t>(*r.getRanks());
  Value rank = e.loadIndex(buffer(r.getRank()), {e.index(0)});
  Value group = arith::DivUIOp::create(*e.b, e.loc, e.mulIndex(rank, groups),
                                       e.index(ranks));
  Value first = e.mulIndex(group, local);
  int64_t topK = r.getTopK();
  Value zero64 = arith::ConstantIntOp::create(*e.b, e.loc, 0, 64);
  Value one64 = arith::ConstantIntOp::create(*e.b, e.loc, 1, 64);
  // counts[x + 1] holds expert x's pairs; the rank's offsets are the prefix
  // sums over its experts, and the other experts' pairs follow them.
  memref::StoreOp::create(*e.b, e.loc, zero64, offsets, ValueRange{e.index(0)});
  e.loops({e.index(local)}, [&](ValueRange ex) {
    Value next = e.addIndex(ex[0], e.index(1));
    Value sum = arith::AddIOp::create(
        *e.b, e.loc, memref::LoadOp::create(*e.b, e.loc, offsets, ex[0]),
        memref::LoadOp::create(*e.b, e.loc, counts, e.addIndex(first, next)));
    memref::StoreOp::create(*e.b, e.loc, sum, offsets, next);
  });
  Value cursor = memref::AllocOp::create(
      *e.b, e.loc, MemRefType::get({local + 1}, e.b->getI64Type()));
  temporaries.push_back(cursor);
  // cursor[local]: the next slot of another group's pair.
  e.loops({e.index(local + 1)}, [&](ValueRange ex) {
    memref::StoreOp::create(*e.b, e.loc,
                            memref::LoadOp::create(*e.b, e.loc, offsets, ex[0]),
                            cursor, ex[0]);
  });
  e.loops({pairs}, [&](ValueRange p) {
    Value ex = e.toIndex(memref::LoadOp::create(*e.b, e.loc, pairExpert, p[0]));
    Value held = arith::AndIOp::create(
        *e.b, e.loc, e.cmpIndex(arith::CmpIPredicate::uge, ex, first),
        e.cmpIndex(arith::CmpIPredicate::ult, ex,
                   e.addIndex(first, e.index(local))));
    Value at = e.select(held, arith::SubIOp::create(*e.b, e.loc, ex, first),
                        e.index(local));
    Value next = memref::LoadOp::create(*e.b, e.loc, cursor, at);
    Value slot = e.toIndex(next);
    Value token = arith::DivUIOp::create(*e.b, e.loc, p[0], e.index(topK));
    memref::StoreOp::create(*e.b, e.loc, e.select(held, e.toI64(token), zero64),
                            indices, slot);
    e.store(e.select(held, e.load(pairGate, {p[0]}), e.f32(0.0)), gates,
            {slot});
    memref::StoreOp::create(*e.b, e.loc,
                            arith::AddIOp::create(*e.b, e.loc, next, one64),
                            cursor, at);
  });
  return success();
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
  // Attention kernels also take the positions of their keys (which, on
  // the host, include every cached token): one i64 vector per attention,
  // after the original inputs.
  SmallVector<Value> attentionKeys;
  for (Operation &op : body)
    if (auto a = dyn_cast<AttentionOp>(op))
      attentionKeys.push_back(a.getKey());
  auto positionsType =
      MemRefType::get({ShapedType::kDynamic}, IntegerType::get(ctx, 64));
  for (size_t i = 0; i < attentionKeys.size(); ++i)
    types.push_back(positionsType);
  unsigned numInputs = types.size();
  for (Type t : kernel.getResultTypes())
    types.push_back(toMemRef(t));
  OpBuilder builder(ctx);
  Block *entry = new Block();
  for (Type t : types)
    entry->addArgument(t, kernel.getLoc());
  for (auto [i, key] : llvm::enumerate(attentionKeys))
    if (isa<BlockArgument>(key))
      keyPositions[key] = entry->getArgument(body.getNumArguments() + i);
  for (auto [arg, memref] :
       llvm::zip(body.getArguments(),
                 entry->getArguments().take_front(body.getNumArguments())))
    buffers[arg] = memref;
  for (auto [value, memref] : llvm::zip(
           ret.getOperands(), entry->getArguments().drop_front(numInputs)))
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
           ret.getOperands(), entry->getArguments().drop_front(numInputs)))
    if (buffers.lookup(value) != memref)
      memref::CopyOp::create(builder, e.loc, buffers.lookup(value), memref);
  for (Value tmp : temporaries)
    memref::DeallocOp::create(builder, e.loc, tmp);
  func::ReturnOp::create(builder, e.loc);

  kernel.getBody().getBlocks().clear();
  kernel.getBody().push_back(entry);
  kernel.setFunctionType(FunctionType::get(ctx, types, {}));
  for (auto [index, columns] : panels)
    kernel.setArgAttr(index, KilnDialect::getHostPanelAttrName(),
                      IntegerAttr::get(IntegerType::get(ctx, 64), columns));
  kernel->setAttr("llvm.emit_c_interface", UnitAttr::get(ctx));
  kernel.setPublic();
  return success();
}

struct ConvertKilnToLoopsPass
    : mlir::kiln::impl::ConvertKilnToLoopsBase<ConvertKilnToLoopsPass> {
  using ConvertKilnToLoopsBase::ConvertKilnToLoopsBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    if (vectorBits != 0 && vectorBits != 128 && vectorBits != 256 &&
        vectorBits != 512) {
      module.emitError() << "vector-bits must be 0, 128, 256 or 512, not "
                         << static_cast<int64_t>(vectorBits);
      return signalPassFailure();
    }
    HostVectorShape shape;
    shape.lanes = vectorBits == 0 ? 1 : vectorBits / 32;
    shape.registers = vectorBits == 512 ? 32 : 16;
    shape.parallel = parallel;
    bool failedAny = false;
    for (auto func :
         llvm::make_early_inc_range(module.getOps<func::FuncOp>())) {
      if (!func->hasAttr(KilnDialect::getKernelAttrName())) {
        if (!func.isExternal()) {
          func.emitError() << "lower kernels in a module of their own: @"
                           << func.getSymName() << " is not a kernel";
          failedAny = true;
        }
        continue;
      }
      if (failed(KernelLowering(func, shape).run()))
        failedAny = true;
    }
    if (failedAny)
      signalPassFailure();
  }
};

} // namespace

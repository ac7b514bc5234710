//===- HostVector.cpp - Vector, tiled and parallel host kernels -----------===//
//
// GEMMs are register tiles: for a tile of rows x columns, one vector
// accumulator per output element runs along the reduction (dot form, for
// weights stored [out, in]) or one per vector of outputs (outer-product
// form, for expert weights stored [in, out]), so each weight element is
// loaded once per row tile. Tiles are sized from the register file: the
// accumulators plus one vector per tile row and column must fit.
//
// Determinism: an output element's arithmetic is the same in every tile
// shape (full tile or edge) and in every partition of the parallel loop,
// and the horizontal sum of a dot-form accumulator is one fixed shuffle
// tree, so a result depends neither on the number of rows in a step nor on
// the number of threads.
//
//===----------------------------------------------------------------------===//

#include "HostVector.h"

#include <limits>

using namespace mlir;
using namespace mlir::kiln;

namespace {

int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/// How far ahead panel rows are prefetched: 256 rows (16 KiB of a 64-byte
/// panel), picked from a few noisy trials (16 to 1024 rows) before the
/// panels moved to huge pages; not tuned since.
constexpr int64_t kPrefetchRows = 256;

int64_t elementBytes(Value memref) {
  return cast<MemRefType>(memref.getType()).getElementTypeBitWidth() / 8;
}

/// A vector of `lanes` elements of `memref`'s type read at `ivs`, widened
/// to f32.
Value loadWide(Emitter &e, Value memref, ValueRange ivs, int64_t lanes) {
  Type element = cast<MemRefType>(memref.getType()).getElementType();
  Value v = e.vectorLoad(VectorType::get({lanes}, element), memref, ivs,
                         elementBytes(memref));
  return e.extF(v, VectorType::get({lanes}, e.b->getF32Type()));
}

void storeNarrow(Emitter &e, Value v, Value memref, ValueRange ivs) {
  Type element = cast<MemRefType>(memref.getType()).getElementType();
  auto type = cast<VectorType>(v.getType());
  e.vectorStore(e.truncF(v, VectorType::get(type.getShape(), element)), memref,
                ivs, elementBytes(memref));
}

/// `w` ([E, K, N], stored in panels of `panel` columns) as the 4-D view
/// [E, N / panel, K, panel] that matches its bytes.
Value panelView(Emitter &e, Value w, int64_t panel) {
  auto type = cast<MemRefType>(w.getType());
  int64_t experts = type.getDimSize(0), k = type.getDimSize(1);
  int64_t n = type.getDimSize(2);
  SmallVector<int64_t> sizes = {experts, n / panel, k, panel};
  SmallVector<int64_t> strides = {n * k, k * panel, panel, 1};
  auto view =
      MemRefType::get(sizes, type.getElementType(),
                      StridedLayoutAttr::get(e.b->getContext(), 0, strides));
  return memref::ReinterpretCastOp::create(*e.b, e.loc, view, w, 0, sizes,
                                           strides);
}

/// Asks for panel row `k + ahead` of `panels` ([E, P, K, p]) to be on its
/// way to the cache: rows of a panel are read one after the other, but the
/// hardware prefetchers stop at every 4 KiB page, and an expert's panels are
/// read only by its few tokens, so each line would otherwise arrive at
/// memory latency.
void prefetchPanelRow(Emitter &e, Value panels, Value ex, Value panel, Value k,
                      int64_t ahead) {
  int64_t rows = cast<MemRefType>(panels.getType()).getDimSize(2);
  Value row = e.minUI(e.addIndex(k, e.index(ahead)), e.index(rows - 1));
  memref::PrefetchOp::create(*e.b, e.loc, panels,
                             ValueRange{ex, panel, row, e.index(0)},
                             /*isWrite=*/false, /*localityHint=*/3,
                             /*isDataCache=*/true);
}

Value fma(Emitter &e, Value a, Value b, Value acc) {
  return vector::FMAOp::create(*e.b, e.loc, a, b, acc);
}

/// The horizontal sum as one fixed shuffle tree.
Value sumLanes(Emitter &e, Value v) {
  return vector::ReductionOp::create(*e.b, e.loc, vector::CombiningKind::ADD, v,
                                     arith::FastMathFlags::reassoc);
}

Value vectorSwiglu(Emitter &e, Value g, Value u) {
  auto type = cast<VectorType>(g.getType());
  Value negated = arith::NegFOp::create(*e.b, e.loc, g);
  Value denominator =
      e.add(e.splat(type, 1.0), math::ExpOp::create(*e.b, e.loc, negated));
  return e.mul(e.div(g, denominator), u);
}

/// Rows per tile of a GEMM, from the register file.
int64_t tileRows(const HostVectorShape &shape) {
  return shape.registers >= 32 ? 4 : 2;
}

/// One dot-form tile: out[r0 + m, c0 + n] for m < mr, n < nr.
void linearTile(Emitter &e, int64_t lanes, Value x, Value w, Value out,
                Value r0, int64_t mr, Value c0, int64_t nr, int64_t k) {
  auto f32 = e.b->getF32Type();
  VectorType type = VectorType::get({lanes}, f32);
  int64_t main = k / lanes * lanes;
  SmallVector<Value> rows, cols;
  for (int64_t m = 0; m < mr; ++m)
    rows.push_back(m == 0 ? r0 : e.addIndex(r0, e.index(m)));
  for (int64_t n = 0; n < nr; ++n)
    cols.push_back(n == 0 ? c0 : e.addIndex(c0, e.index(n)));
  SmallVector<Value> acc(mr * nr, e.splat(type, 0.0));
  if (main > 0) {
    ValueRange sums =
        e.loopWith(e.index(0), e.index(main), e.index(lanes), acc,
                   [&](Value i, ValueRange a) {
                     SmallVector<Value> xs, ws, next;
                     for (int64_t m = 0; m < mr; ++m)
                       xs.push_back(loadWide(e, x, {rows[m], i}, lanes));
                     for (int64_t n = 0; n < nr; ++n)
                       ws.push_back(loadWide(e, w, {cols[n], i}, lanes));
                     for (int64_t m = 0; m < mr; ++m)
                       for (int64_t n = 0; n < nr; ++n)
                         next.push_back(fma(e, xs[m], ws[n], a[m * nr + n]));
                     return next;
                   });
    acc.assign(sums.begin(), sums.end());
  }
  for (int64_t m = 0; m < mr; ++m)
    for (int64_t n = 0; n < nr; ++n) {
      Value s = sumLanes(e, acc[m * nr + n]);
      if (main < k)
        s = e.loopWith(
            e.index(main), e.index(k), {s}, [&](Value i, ValueRange a) {
              Value p = e.mul(e.load(x, {rows[m], i}), e.load(w, {cols[n], i}));
              return SmallVector<Value>{e.add(a[0], p)};
            })[0];
      e.store(s, out, {rows[m], cols[n]});
    }
}

/// for i in [begin, end) by tiles of `mr` (then single rows): body(i, m).
void tiledRange(Emitter &e, Value begin, Value end, int64_t mr,
                function_ref<void(Value, int64_t)> body) {
  Value count = e.subIndex(end, begin);
  Value fullEnd = e.subIndex(end, e.remIndex(count, e.index(mr)));
  if (mr > 1)
    e.loopStep(begin, fullEnd, e.index(mr), [&](Value i) { body(i, mr); });
  e.loopStep(mr > 1 ? fullEnd : begin, end, e.index(1),
             [&](Value i) { body(i, 1); });
}

} // namespace

void mlir::kiln::emitPartitionedLoop(Emitter &e, bool parallel,
                                     ArrayRef<Value> ubs,
                                     function_ref<void(ValueRange)> body) {
  if (!parallel)
    return e.loops(ubs, body);
  SmallVector<Value> lbs(ubs.size(), e.index(0)), steps(ubs.size(), e.index(1));
  OpBuilder *outer = e.b;
  scf::ParallelOp::create(*e.b, e.loc, lbs, ubs, steps,
                          [&](OpBuilder &nested, Location, ValueRange ivs) {
                            e.b = &nested;
                            body(ivs);
                            e.b = outer;
                          });
}

int64_t mlir::kiln::expertPanel(const HostVectorShape &shape, int64_t n) {
  int64_t cols = 2 * shape.lanes;
  return shape.lanes > 1 && n % cols == 0 ? cols : 0;
}

void mlir::kiln::emitRowLoops(Emitter &e, bool parallel, ArrayRef<Value> ubs,
                              function_ref<void(ValueRange)> body) {
  if (!parallel)
    return e.loops(ubs, body);
  emitPartitionedLoop(e, true, {ubs[0]}, [&](ValueRange row) {
    if (ubs.size() == 1)
      return body(row);
    e.loops(ubs.drop_front(), [&](ValueRange rest) {
      SmallVector<Value> ivs{row[0]};
      ivs.append(rest.begin(), rest.end());
      body(ivs);
    });
  });
}

void mlir::kiln::emitVectorLinear(Emitter &e, const HostVectorShape &shape,
                                  Value x, Value w, Value out, Value rows,
                                  int64_t k, int64_t n) {
  int64_t lanes = shape.lanes, mr = tileRows(shape), nr = 4;
  // Columns are split into blocks whose weights (about 256 KiB) stay in the
  // core's L2 cache while every row tile passes over them; blocks are also
  // the unit of work of the threads.
  int64_t blockBytes = 256 * 1024;
  int64_t nb = std::max<int64_t>(
      nr, blockBytes / std::max<int64_t>(1, k * elementBytes(w)) / nr * nr);
  nb = std::min(nb, ceilDiv(n, nr) * nr);
  int64_t blocks = ceilDiv(n, nb);
  emitPartitionedLoop(e, shape.parallel, {e.index(blocks)}, [&](ValueRange jb) {
    Value c0 = e.mulIndex(jb[0], nb);
    Value c1 = e.minUI(e.addIndex(c0, e.index(nb)), e.index(n));
    tiledRange(e, e.index(0), rows, mr, [&](Value r, int64_t m) {
      tiledRange(e, c0, c1, nr, [&](Value c, int64_t cols) {
        linearTile(e, lanes, x, w, out, r, m, c, cols, k);
      });
    });
  });
}

void mlir::kiln::emitVectorExpertGateUp(Emitter &e,
                                        const HostVectorShape &shape,
                                        Value input, Value indices,
                                        Value offsets, Value gates, Value w,
                                        Value out, int64_t experts, int64_t d,
                                        int64_t f) {
  int64_t lanes = shape.lanes, mr = tileRows(shape), nv = 2;
  int64_t cols = nv * lanes, blocks = f / cols;
  VectorType type = VectorType::get({lanes}, e.b->getF32Type());
  bool packed = expertPanel(shape, f) != 0;
  Value panels = packed ? panelView(e, w, cols) : Value();
  // Outer-product tiles: per input column c, a broadcast of z[m][c] times
  // vectors of gate and up weights.
  auto tile = [&](Value ex, Value i0, int64_t m, Value j0) {
    SmallVector<Value> tokens, scale, pairs;
    for (int64_t r = 0; r < m; ++r) {
      Value pair = r == 0 ? i0 : e.addIndex(i0, e.index(r));
      pairs.push_back(pair);
      tokens.push_back(e.loadIndex(indices, {pair}));
      scale.push_back(e.load(gates, {pair}));
    }
    SmallVector<Value> colGate, colUp;
    for (int64_t v = 0; v < nv; ++v) {
      colGate.push_back(e.addIndex(j0, e.index(v * lanes)));
      colUp.push_back(e.addIndex(j0, e.index(f + v * lanes)));
    }
    // Packed: the block's gate and up columns are two panels, each read
    // front to back as c goes.
    Value gatePanel, upPanel;
    if (packed) {
      gatePanel = e.divIndex(j0, e.index(cols));
      upPanel = e.addIndex(gatePanel, e.index(f / cols));
    }
    auto weights = [&](Value c, Value panel, ArrayRef<Value> columns,
                       int64_t v) {
      if (packed)
        return loadWide(e, panels, {ex, panel, c, e.index(v * lanes)}, lanes);
      return loadWide(e, w, {ex, c, columns[v]}, lanes);
    };
    SmallVector<Value> init(2 * m * nv, e.splat(type, 0.0));
    ValueRange acc = e.loopWith(
        e.index(0), e.index(d), e.index(1), init, [&](Value c, ValueRange a) {
          SmallVector<Value> z, wg, wu, next;
          for (int64_t r = 0; r < m; ++r)
            z.push_back(e.broadcast(
                type, e.mul(scale[r], e.load(input, {tokens[r], c}))));
          if (packed) {
            prefetchPanelRow(e, panels, ex, gatePanel, c, kPrefetchRows);
            prefetchPanelRow(e, panels, ex, upPanel, c, kPrefetchRows);
          }
          for (int64_t v = 0; v < nv; ++v) {
            wg.push_back(weights(c, gatePanel, colGate, v));
            wu.push_back(weights(c, upPanel, colUp, v));
          }
          for (int64_t r = 0; r < m; ++r)
            for (int64_t v = 0; v < nv; ++v) {
              next.push_back(fma(e, z[r], wg[v], a[2 * (r * nv + v)]));
              next.push_back(fma(e, z[r], wu[v], a[2 * (r * nv + v) + 1]));
            }
          return next;
        });
    for (int64_t r = 0; r < m; ++r)
      for (int64_t v = 0; v < nv; ++v)
        storeNarrow(
            e,
            vectorSwiglu(e, acc[2 * (r * nv + v)], acc[2 * (r * nv + v) + 1]),
            out, {pairs[r], colGate[v]});
  };
  auto overExperts = [&](function_ref<void(Value, Value, Value)> body) {
    e.loops({e.index(experts)}, [&](ValueRange ex) {
      Value begin = e.loadIndex(offsets, {ex[0]});
      Value end = e.loadIndex(offsets, {e.addIndex(ex[0], e.index(1))});
      body(ex[0], begin, end);
    });
  };
  if (blocks > 0)
    emitPartitionedLoop(
        e, shape.parallel, {e.index(blocks)}, [&](ValueRange jb) {
          Value j0 = e.mulIndex(jb[0], cols);
          overExperts([&](Value ex, Value begin, Value end) {
            tiledRange(e, begin, end, mr,
                       [&](Value i, int64_t m) { tile(ex, i, m, j0); });
          });
        });
  if (blocks * cols == f)
    return;
  // Columns past the last whole block, one at a time.
  overExperts([&](Value ex, Value begin, Value end) {
    e.loopStep(begin, end, e.index(1), [&](Value i) {
      Value token = e.loadIndex(indices, {i});
      Value gate = e.load(gates, {i});
      e.loopStep(e.index(blocks * cols), e.index(f), e.index(1), [&](Value j) {
        Value up = e.addIndex(j, e.index(f));
        ValueRange sums =
            e.loopWith(e.index(0), e.index(d), {e.f32(0.0), e.f32(0.0)},
                       [&](Value c, ValueRange a) {
                         Value z = e.mul(gate, e.load(input, {token, c}));
                         return SmallVector<Value>{
                             e.add(a[0], e.mul(z, e.load(w, {ex, c, j}))),
                             e.add(a[1], e.mul(z, e.load(w, {ex, c, up})))};
                       });
        e.store(e.swiglu(sums[0], sums[1]), out, {i, j});
      });
    });
  });
}

void mlir::kiln::emitVectorExpertDown(Emitter &e, const HostVectorShape &shape,
                                      Value hidden, Value indices,
                                      Value offsets, Value w, Value addend,
                                      Value out, Value rows, int64_t experts,
                                      int64_t f, int64_t d) {
  int64_t lanes = shape.lanes, mr = tileRows(shape), nv = 2;
  int64_t cols = nv * lanes, blocks = d / cols;
  VectorType type = VectorType::get({lanes}, e.b->getF32Type());
  bool packed = expertPanel(shape, d) != 0;
  Value panels = packed ? panelView(e, w, cols) : Value();
  emitRowLoops(e, shape.parallel, {rows, e.index(d)},
               [&](ValueRange ivs) { e.store(e.load(addend, ivs), out, ivs); });
  auto overExperts = [&](function_ref<void(Value, Value, Value)> body) {
    e.loops({e.index(experts)}, [&](ValueRange ex) {
      Value begin = e.loadIndex(offsets, {ex[0]});
      Value end = e.loadIndex(offsets, {e.addIndex(ex[0], e.index(1))});
      body(ex[0], begin, end);
    });
  };
  // Experts run in order within a column block, so a token's contributions
  // from its several experts are added in the reference's order.
  auto tile = [&](Value ex, Value i0, int64_t m, Value c0) {
    SmallVector<Value> pairs, colIv;
    for (int64_t r = 0; r < m; ++r)
      pairs.push_back(r == 0 ? i0 : e.addIndex(i0, e.index(r)));
    for (int64_t v = 0; v < nv; ++v)
      colIv.push_back(e.addIndex(c0, e.index(v * lanes)));
    Value panel = packed ? e.divIndex(c0, e.index(cols)) : Value();
    SmallVector<Value> init(m * nv, e.splat(type, 0.0));
    ValueRange acc = e.loopWith(
        e.index(0), e.index(f), e.index(1), init, [&](Value j, ValueRange a) {
          SmallVector<Value> h, wv, next;
          for (int64_t r = 0; r < m; ++r)
            h.push_back(e.broadcast(type, e.load(hidden, {pairs[r], j})));
          if (packed)
            prefetchPanelRow(e, panels, ex, panel, j, kPrefetchRows);
          for (int64_t v = 0; v < nv; ++v)
            wv.push_back(packed ? loadWide(e, panels,
                                           {ex, panel, j, e.index(v * lanes)},
                                           lanes)
                                : loadWide(e, w, {ex, j, colIv[v]}, lanes));
          for (int64_t r = 0; r < m; ++r)
            for (int64_t v = 0; v < nv; ++v)
              next.push_back(fma(e, h[r], wv[v], a[r * nv + v]));
          return next;
        });
    for (int64_t r = 0; r < m; ++r) {
      Value token = e.loadIndex(indices, {pairs[r]});
      for (int64_t v = 0; v < nv; ++v) {
        Value current = loadWide(e, out, {token, colIv[v]}, lanes);
        storeNarrow(e, e.add(current, acc[r * nv + v]), out, {token, colIv[v]});
      }
    }
  };
  if (blocks > 0)
    emitPartitionedLoop(
        e, shape.parallel, {e.index(blocks)}, [&](ValueRange jb) {
          Value c0 = e.mulIndex(jb[0], cols);
          overExperts([&](Value ex, Value begin, Value end) {
            tiledRange(e, begin, end, mr,
                       [&](Value i, int64_t m) { tile(ex, i, m, c0); });
          });
        });
  if (blocks * cols == d)
    return;
  overExperts([&](Value ex, Value begin, Value end) {
    e.loopStep(begin, end, e.index(1), [&](Value i) {
      Value token = e.loadIndex(indices, {i});
      e.loopStep(e.index(blocks * cols), e.index(d), e.index(1), [&](Value c) {
        Value acc = e.sum(e.index(f), [&](Value j) {
          return e.mul(e.load(hidden, {i, j}), e.load(w, {ex, j, c}));
        });
        e.store(e.add(e.load(out, {token, c}), acc), out, {token, c});
      });
    });
  });
}

void mlir::kiln::emitVectorAttention(
    Emitter &e, const HostVectorShape &shape, Value q, Value k, Value v,
    Value qPositions, Value kPositions, Value out, Value rows,
    const AttentionShape &a, function_ref<Value(Value)> temperature,
    function_ref<Value(Value, Value)> visible) {
  int64_t lanes = shape.lanes, d = a.headDim, group = a.heads / a.kvHeads;
  int64_t vectors = d / lanes;
  auto f32 = e.b->getF32Type();
  VectorType type = VectorType::get({lanes}, f32);
  Value keys = e.dim(k, 0);
  Value negInf = e.f32(-std::numeric_limits<double>::infinity());
  // One row of scores per head: heads are the partition.
  Value scores = memref::AllocOp::create(
      *e.b, e.loc, MemRefType::get({a.heads, ShapedType::kDynamic}, f32),
      ValueRange{keys});
  emitPartitionedLoop(
      e, shape.parallel, {e.index(a.heads)}, [&](ValueRange hv) {
        Value h = hv[0];
        Value qBase = e.mulIndex(h, d);
        Value kvBase = e.mulIndex(e.divIndex(h, e.index(group)), d);
        SmallVector<Value> cols;
        for (int64_t j = 0; j < vectors; ++j)
          cols.push_back(e.addIndex(kvBase, e.index(j * lanes)));
        e.loopStep(e.index(0), rows, e.index(1), [&](Value tok) {
          Value qPos = memref::LoadOp::create(*e.b, e.loc, qPositions, tok);
          Value tau = temperature(qPos);
          SmallVector<Value> qv;
          for (int64_t j = 0; j < vectors; ++j)
            qv.push_back(e.mul(
                loadWide(e, q, {tok, e.addIndex(qBase, e.index(j * lanes))},
                         lanes),
                e.broadcast(type, tau)));
          Value maxScore = e.loopWith(
              e.index(0), keys, {negInf}, [&](Value s, ValueRange acc) {
                Value kPos = memref::LoadOp::create(*e.b, e.loc, kPositions, s);
                Value seen = visible(qPos, kPos);
                Value score = e.ifElse(
                    seen, {f32},
                    [&] {
                      // Two accumulators halve the FMA dependency chain.
                      Value even = e.splat(type, 0.0), odd = even;
                      for (int64_t j = 0; j < vectors; ++j) {
                        Value kv = loadWide(e, k, {s, cols[j]}, lanes);
                        if (j % 2 == 0)
                          even = fma(e, qv[j], kv, even);
                        else
                          odd = fma(e, qv[j], kv, odd);
                      }
                      Value dot = sumLanes(e, e.add(even, odd));
                      return SmallVector<Value>{e.mul(dot, e.f32(a.scale))};
                    },
                    [&] { return SmallVector<Value>{negInf}; })[0];
                e.store(score, scores, {h, s});
                Value larger = e.cmpF(arith::CmpFPredicate::OLT, acc[0], score);
                return SmallVector<Value>{e.select(larger, score, acc[0])};
              })[0];
          // exp(score - max) over the row, a vector at a time: invisible keys
          // hold -inf and become 0, so no mask is needed here.
          Value fullEnd = e.subIndex(keys, e.remIndex(keys, e.index(lanes)));
          Value maxVector = e.broadcast(type, maxScore);
          Value partial = e.loopWith(
              e.index(0), fullEnd, e.index(lanes), {e.splat(type, 0.0)},
              [&](Value s, ValueRange acc) {
                Value row = e.vectorLoad(type, scores, {h, s}, 4);
                Value p = math::ExpOp::create(
                    *e.b, e.loc,
                    arith::SubFOp::create(*e.b, e.loc, row, maxVector));
                e.vectorStore(p, scores, {h, s}, 4);
                return SmallVector<Value>{e.add(acc[0], p)};
              })[0];
          Value total = e.loopWith(
              fullEnd, keys, {sumLanes(e, partial)},
              [&](Value s, ValueRange acc) {
                Value p = math::ExpOp::create(
                    *e.b, e.loc,
                    arith::SubFOp::create(*e.b, e.loc, e.load(scores, {h, s}),
                                          maxScore));
                e.store(p, scores, {h, s});
                return SmallVector<Value>{e.add(acc[0], p)};
              })[0];
          Value inverse = e.div(e.f32(1.0), total);
          SmallVector<Value> init(vectors, e.splat(type, 0.0));
          SmallVector<Type> types(vectors, type);
          ValueRange sums =
              e.loopWith(e.index(0), keys, init, [&](Value s, ValueRange acc) {
                Value kPos = memref::LoadOp::create(*e.b, e.loc, kPositions, s);
                ValueRange next = e.ifElse(
                    visible(qPos, kPos), types,
                    [&] {
                      Value weight = e.broadcast(
                          type, e.mul(e.load(scores, {h, s}), inverse));
                      SmallVector<Value> updated;
                      for (int64_t j = 0; j < vectors; ++j)
                        updated.push_back(
                            fma(e, weight, loadWide(e, v, {s, cols[j]}, lanes),
                                acc[j]));
                      return updated;
                    },
                    [&] { return SmallVector<Value>(acc.begin(), acc.end()); });
                return SmallVector<Value>(next.begin(), next.end());
              });
          for (int64_t j = 0; j < vectors; ++j)
            storeNarrow(e, sums[j], out,
                        {tok, e.addIndex(qBase, e.index(j * lanes))});
        });
      });
  memref::DeallocOp::create(*e.b, e.loc, scores);
}

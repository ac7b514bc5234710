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

/// The horizontal sums of several vectors at once: pairs are folded with
/// two shuffles and one add per level, so `lanes` vectors take lanes - 1
/// adds instead of lanes full reductions. Each sum is still one fixed tree
/// over its own lanes.
SmallVector<Value> sumLanesOfEach(Emitter &e, ArrayRef<Value> vectors) {
  auto type = cast<VectorType>(vectors.front().getType());
  int64_t lanes = type.getNumElements();
  SmallVector<Value> sums;
  for (size_t first = 0; first < vectors.size(); first += lanes) {
    SmallVector<Value> level(vectors.begin() + first,
                             vectors.begin() +
                                 std::min(vectors.size(), first + lanes));
    size_t used = level.size();
    level.resize(lanes, e.splat(type, 0.0));
    // After the level of width w, lane i holds a partial sum of vector
    // (i mod 2w) of the 2w that went into it.
    for (int64_t w = 1; w < lanes; w *= 2) {
      SmallVector<Value> next;
      for (size_t j = 0; j < level.size(); j += 2) {
        SmallVector<int64_t> low, high;
        for (int64_t i = 0; i < lanes; ++i) {
          int64_t base = i / (2 * w) * (2 * w), within = i % (2 * w);
          if (within < w) {
            low.push_back(base + within);
            high.push_back(base + w + within);
          } else {
            low.push_back(lanes + base + within - w);
            high.push_back(lanes + base + within);
          }
        }
        Value x = level[j], y = level[j + 1];
        next.push_back(
            e.add(vector::ShuffleOp::create(*e.b, e.loc, x, y, low),
                  vector::ShuffleOp::create(*e.b, e.loc, x, y, high)));
      }
      level = std::move(next);
    }
    for (size_t i = 0; i < used; ++i)
      sums.push_back(vector::ExtractOp::create(*e.b, e.loc, level.front(),
                                               static_cast<int64_t>(i)));
  }
  return sums;
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
  // Without indices and addend (expert_down_pairs): pair i is row i, from
  // zero.
  auto tokenOf = [&](Value pair) {
    return indices ? e.loadIndex(indices, {pair}) : pair;
  };
  emitRowLoops(e, shape.parallel, {rows, e.index(d)}, [&](ValueRange ivs) {
    e.store(addend ? e.load(addend, ivs) : e.f32(0.0), out, ivs);
  });
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
      Value token = tokenOf(pairs[r]);
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
      Value token = tokenOf(i);
      e.loopStep(e.index(blocks * cols), e.index(d), e.index(1), [&](Value c) {
        Value acc = e.sum(e.index(f), [&](Value j) {
          return e.mul(e.load(hidden, {i, j}), e.load(w, {ex, j, c}));
        });
        e.store(e.add(e.load(out, {token, c}), acc), out, {token, c});
      });
    });
  });
}

namespace {

/// Keys per block of the tiled attention: the unit of the online softmax's
/// rescaling and of skipping keys the mask hides.
constexpr int64_t kAttentionBlock = 64;

/// A unit's scratch: on the heap, freed at the end of the unit (a stack
/// buffer would grow the stack at every iteration, and alloca_scope cannot
/// hold the loops lowered to blocks). A few allocations per unit of
/// thousands of FMAs.
Value scratchBuffer(Emitter &e, ArrayRef<int64_t> shape, Type element,
                    SmallVectorImpl<Value> &toFree) {
  toFree.push_back(
      memref::AllocOp::create(*e.b, e.loc, MemRefType::get(shape, element),
                              /*alignment=*/e.b->getI64IntegerAttr(64)));
  return toFree.back();
}

/// The largest of 4, 2, 1 (or a divisor of `limit` when given) whose
/// register tile of `rows` x n accumulators, n loaded vectors and one
/// broadcast fits the register file.
int64_t registerTile(const HostVectorShape &shape, int64_t rows, int64_t most) {
  for (int64_t n = most; n > 1; --n)
    if (rows * n + n + 1 <= shape.registers)
      return n;
  return 1;
}

} // namespace

void mlir::kiln::emitVectorAttention(
    Emitter &e, const HostVectorShape &shape, Value q, Value k, Value v,
    Value qPositions, Value kPositions, Value out, Value rows,
    const AttentionShape &a, function_ref<Value(Value)> temperature,
    function_ref<Value(Value, Value)> visible) {
  int64_t lanes = shape.lanes, d = a.headDim, group = a.heads / a.kvHeads;
  int64_t vectors = d / lanes, block = kAttentionBlock;
  int64_t blockVectors = block / lanes;
  // Keys whose scores one pass computes (each key's vectors loaded once for
  // the whole group), and head_dim vectors one pass of the value sum keeps
  // in registers for every head of the group.
  int64_t keyTile = registerTile(shape, group, 4);
  keyTile = keyTile >= 4 ? 4 : keyTile >= 2 ? 2 : 1;
  int64_t chunk = registerTile(shape, group, vectors);
  while (vectors % chunk != 0)
    --chunk;
  auto f32 = e.b->getF32Type();
  VectorType type = VectorType::get({lanes}, f32);
  Value keys = e.dim(k, 0);
  Value lastKey = e.subIndex(keys, e.index(1));
  Value blocks =
      e.divIndex(e.addIndex(keys, e.index(block - 1)), e.index(block));
  Value negInf = e.f32(-std::numeric_limits<double>::infinity());
  Value kvHeads = e.index(a.kvHeads);
  // A unit is one query token and one KV head with its group of query heads:
  // every key and value vector is loaded once for the group.
  emitPartitionedLoop(
      e, shape.parallel, {e.mulIndex(rows, a.kvHeads)}, [&](ValueRange uv) {
        Value tok = e.divIndex(uv[0], kvHeads);
        Value kvh = e.remIndex(uv[0], kvHeads);
        Value kvBase = e.mulIndex(kvh, d);
        Value qBase = e.mulIndex(kvh, group * d);
        {
          SmallVector<Value> toFree;
          Value scaled = scratchBuffer(e, {group, d}, f32, toFree);
          Value acc = scratchBuffer(e, {group, d}, f32, toFree);
          Value probs = scratchBuffer(e, {group, block}, f32, toFree);
          Value seen = scratchBuffer(e, {block}, e.b->getIndexType(), toFree);
          Value qPos = memref::LoadOp::create(*e.b, e.loc, qPositions, tok);
          Value factor =
              e.broadcast(type, e.mul(temperature(qPos), e.f32(a.scale)));
          for (int64_t g = 0; g < group; ++g)
            for (int64_t j = 0; j < vectors; ++j) {
              Value col = e.index(j * lanes);
              Value qv = loadWide(
                  e, q, {tok, e.addIndex(qBase, e.index(g * d + j * lanes))},
                  lanes);
              e.vectorStore(e.mul(qv, factor), scaled, {e.index(g), col}, 4);
              e.vectorStore(e.splat(type, 0.0), acc, {e.index(g), col}, 4);
            }
          // One block of keys with `count` visible ones listed in `seen`:
          // scores, the online softmax's update of `running` (each head's
          // max, then sum), and the rescaled value sums.
          auto attendBlock = [&](Value start, Value count, ValueRange running) {
            for (int64_t g = 0; g < group; ++g)
              for (int64_t j = 0; j < blockVectors; ++j)
                e.vectorStore(e.broadcast(type, negInf), probs,
                              {e.index(g), e.index(j * lanes)}, 4);
            // Scores of keyTile visible keys at a time (a short last tile
            // repeats its last key); hidden keys keep -inf.
            Value lastSeen = e.subIndex(count, e.index(1));
            e.loopStep(e.index(0), count, e.index(keyTile), [&](Value i) {
              SmallVector<Value> offsets, keyRows;
              for (int64_t t = 0; t < keyTile; ++t) {
                Value at =
                    t == 0 ? i : e.minUI(e.addIndex(i, e.index(t)), lastSeen);
                offsets.push_back(e.loadRaw(seen, {at}));
                keyRows.push_back(e.addIndex(start, offsets.back()));
              }
              SmallVector<Value> dots(group * keyTile, e.splat(type, 0.0));
              for (int64_t j = 0; j < vectors; ++j) {
                SmallVector<Value> kv;
                for (int64_t t = 0; t < keyTile; ++t)
                  kv.push_back(loadWide(
                      e, k,
                      {keyRows[t], e.addIndex(kvBase, e.index(j * lanes))},
                      lanes));
                for (int64_t g = 0; g < group; ++g) {
                  Value qv = e.vectorLoad(type, scaled,
                                          {e.index(g), e.index(j * lanes)}, 4);
                  for (int64_t t = 0; t < keyTile; ++t)
                    dots[g * keyTile + t] =
                        fma(e, qv, kv[t], dots[g * keyTile + t]);
                }
              }
              SmallVector<Value> scores = sumLanesOfEach(e, dots);
              for (int64_t g = 0; g < group; ++g)
                for (int64_t t = 0; t < keyTile; ++t)
                  e.store(scores[g * keyTile + t], probs,
                          {e.index(g), offsets[t]});
            });
            // The online softmax: a new max rescales what came before.
            SmallVector<Value> updated(2 * group), rescale(group);
            for (int64_t g = 0; g < group; ++g) {
              Value head = e.index(g);
              Value top = e.vectorLoad(type, probs, {head, e.index(0)}, 4);
              for (int64_t j = 1; j < blockVectors; ++j)
                top = e.maxF(top, e.vectorLoad(type, probs,
                                               {head, e.index(j * lanes)}, 4));
              Value blockMax = vector::ReductionOp::create(
                  *e.b, e.loc, vector::CombiningKind::MAXIMUMF, top);
              Value max = e.maxF(running[g], blockMax);
              Value factor =
                  math::ExpOp::create(*e.b, e.loc, e.sub(running[g], max));
              Value maxVector = e.broadcast(type, max);
              Value total = e.splat(type, 0.0);
              for (int64_t j = 0; j < blockVectors; ++j) {
                Value col = e.index(j * lanes);
                Value p = math::ExpOp::create(
                    *e.b, e.loc,
                    e.sub(e.vectorLoad(type, probs, {head, col}, 4),
                          maxVector));
                e.vectorStore(p, probs, {head, col}, 4);
                total = e.add(total, p);
              }
              updated[g] = max;
              updated[group + g] =
                  e.add(e.mul(running[group + g], factor), sumLanes(e, total));
              rescale[g] = e.broadcast(type, factor);
            }
            // Value sums, `chunk` vectors of head_dim for every head at a
            // time, over the visible keys only.
            e.loopStep(
                e.index(0), e.index(d), e.index(chunk * lanes), [&](Value c0) {
                  SmallVector<Value> cols, sums;
                  for (int64_t c = 0; c < chunk; ++c)
                    cols.push_back(c == 0 ? c0
                                          : e.addIndex(c0, e.index(c * lanes)));
                  for (int64_t g = 0; g < group; ++g)
                    for (int64_t c = 0; c < chunk; ++c)
                      sums.push_back(e.mul(
                          e.vectorLoad(type, acc, {e.index(g), cols[c]}, 4),
                          rescale[g]));
                  ValueRange summed = e.loopWith(
                      e.index(0), count, sums, [&](Value i, ValueRange s) {
                        Value off = e.loadRaw(seen, {i});
                        Value key = e.addIndex(start, off);
                        SmallVector<Value> vs, next;
                        for (int64_t c = 0; c < chunk; ++c)
                          vs.push_back(loadWide(
                              e, v, {key, e.addIndex(kvBase, cols[c])}, lanes));
                        for (int64_t g = 0; g < group; ++g) {
                          Value p = e.broadcast(
                              type, e.loadRaw(probs, {e.index(g), off}));
                          for (int64_t c = 0; c < chunk; ++c)
                            next.push_back(fma(e, p, vs[c], s[g * chunk + c]));
                        }
                        return next;
                      });
                  for (int64_t g = 0; g < group; ++g)
                    for (int64_t c = 0; c < chunk; ++c)
                      e.vectorStore(summed[g * chunk + c], acc,
                                    {e.index(g), cols[c]}, 4);
                });
            return updated;
          };
          // Running max and sum of each head's row, block by block.
          SmallVector<Value> init(group, negInf);
          init.append(group, e.f32(0.0));
          SmallVector<Type> stateTypes(2 * group, f32);
          ValueRange state = e.loopWith(
              e.index(0), blocks, init, [&](Value b, ValueRange running) {
                Value start = e.mulIndex(b, block);
                // The block's visible keys, in order, as offsets.
                Value count = e.loopWith(
                    e.index(0), e.index(block), {e.index(0)},
                    [&](Value off, ValueRange n) {
                      Value key = e.addIndex(start, off);
                      Value kPos = memref::LoadOp::create(
                          *e.b, e.loc, kPositions, e.minUI(key, lastKey));
                      Value shown = e.andI(
                          e.cmpIndex(arith::CmpIPredicate::ult, key, keys),
                          visible(qPos, kPos));
                      e.store(off, seen, {n[0]});
                      return SmallVector<Value>{
                          e.select(shown, e.addIndex(n[0], e.index(1)), n[0])};
                    })[0];
                Value none =
                    e.cmpIndex(arith::CmpIPredicate::eq, count, e.index(0));
                ValueRange next = e.ifElse(
                    none, stateTypes,
                    [&] {
                      return SmallVector<Value>(running.begin(), running.end());
                    },
                    [&] {
                      return SmallVector<Value>(
                          attendBlock(start, count, running));
                    });
                return SmallVector<Value>(next.begin(), next.end());
              });
          for (int64_t g = 0; g < group; ++g) {
            Value inverse =
                e.broadcast(type, e.div(e.f32(1.0), state[group + g]));
            for (int64_t j = 0; j < vectors; ++j) {
              Value col = e.index(j * lanes);
              Value sum = e.vectorLoad(type, acc, {e.index(g), col}, 4);
              storeNarrow(e, e.mul(sum, inverse), out,
                          {tok, e.addIndex(qBase, e.index(g * d + j * lanes))});
            }
          }
          for (Value buffer : toFree)
            memref::DeallocOp::create(*e.b, e.loc, buffer);
        }
      });
}

//===- Emitter.h - The IR-building vocabulary of Kiln's lowerings -*- C++
//-*-===//
//
// One small vocabulary on OpBuilder, with a location, shared by the host
// lowering (KilnToLoops) and the GPU kernels built on builders (KilnToGPU):
// constants, index and f32 arithmetic, loads that widen and stores that
// narrow, loop nests, loops with carried values, conditionals.
//
//===----------------------------------------------------------------------===//

#ifndef KILN_CONVERSION_EMITTER_H
#define KILN_CONVERSION_EMITTER_H

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Math/IR/Math.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/Dialect/SCF/IR/SCF.h"
#include "mlir/Dialect/Vector/IR/VectorOps.h"
#include "mlir/IR/Builders.h"
#include "llvm/ADT/DenseMap.h"

namespace mlir::kiln {

/// Typed ops with locations, for loop nests over memrefs (host kernels) and
/// GPU kernels alike.
class Emitter {
public:
  Emitter(OpBuilder &builder, Location loc) : b(&builder), loc(loc) {}
  virtual ~Emitter() = default;

  /// Constants go to the start of `block` from now on, one per value (GPU
  /// kernels keep them out of their loops this way).
  void hoistConstantsTo(Block *block) { constantBlock = block; }

  Value index(int64_t v) { return constant(b->getIndexAttr(v)); }
  Value i32(int64_t v) { return constant(b->getI32IntegerAttr(v)); }
  Value i64(int64_t v) { return constant(b->getI64IntegerAttr(v)); }
  Value f32(double v) { return constant(b->getF32FloatAttr(v)); }
  Value f64(double v) { return constant(b->getF64FloatAttr(v)); }
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

  Value cmpIndex(arith::CmpIPredicate pred, Value x, Value y) {
    return arith::CmpIOp::create(*b, loc, pred, x, y);
  }
  Value select(Value c, Value x, Value y) {
    return arith::SelectOp::create(*b, loc, c, x, y);
  }
  Value toIndex(Value v) {
    return arith::IndexCastOp::create(*b, loc, b->getIndexType(), v);
  }
  Value toI64(Value v) {
    return arith::IndexCastOp::create(*b, loc, b->getI64Type(), v);
  }
  /// scf.for iv in [lb, ub) with loop-carried values.
  ValueRange
  loopWith(Value lb, Value ub, ValueRange init,
           function_ref<SmallVector<Value>(Value, ValueRange)> body) {
    return loopWith(lb, ub, index(1), init, body);
  }
  /// scf.for iv in [lb, ub) by `step`, with loop-carried values.
  ValueRange
  loopWith(Value lb, Value ub, Value step, ValueRange init,
           function_ref<SmallVector<Value>(Value, ValueRange)> body) {
    auto loop = scf::ForOp::create(
        *b, loc, lb, ub, step, init,
        [&](OpBuilder &nested, Location, Value iv, ValueRange args) {
          OpBuilder *outer = b;
          b = &nested;
          SmallVector<Value> next = body(iv, args);
          scf::YieldOp::create(*b, loc, next);
          b = outer;
        });
    return loop.getResults();
  }
  /// if (cond) then() else otherwise(), each yielding values of `types`.
  ValueRange ifElse(Value cond, TypeRange types,
                    function_ref<SmallVector<Value>()> then,
                    function_ref<SmallVector<Value>()> otherwise) {
    auto op = scf::IfOp::create(*b, loc, types, cond, /*withElseRegion=*/true);
    OpBuilder *outer = b;
    for (auto [region, body] : {std::pair{&op.getThenRegion(), then},
                                std::pair{&op.getElseRegion(), otherwise}}) {
      OpBuilder nested = OpBuilder::atBlockEnd(&region->front());
      b = &nested;
      scf::YieldOp::create(*b, loc, body());
    }
    b = outer;
    return op.getResults();
  }

  // Vectors (arith ops above take vector operands too).
  Value vectorLoad(VectorType type, Value memref, ValueRange ivs,
                   int64_t alignment) {
    return vector::LoadOp::create(*b, loc, type, memref, ivs,
                                  /*nontemporal=*/false,
                                  llvm::MaybeAlign(alignment));
  }
  void vectorStore(Value v, Value memref, ValueRange ivs, int64_t alignment) {
    vector::StoreOp::create(*b, loc, v, memref, ivs, /*nontemporal=*/false,
                            llvm::MaybeAlign(alignment));
  }
  Value broadcast(VectorType type, Value scalar) {
    return vector::BroadcastOp::create(*b, loc, type, scalar);
  }
  Value reduceAdd(Value v) {
    return vector::ReductionOp::create(*b, loc, vector::CombiningKind::ADD, v);
  }
  Value splat(VectorType type, double v) {
    return constant(cast<TypedAttr>(DenseElementsAttr::get(
        type, FloatAttr::get(type.getElementType(), v))));
  }
  /// Float conversions between types of the same shape (no-ops when equal).
  Value extF(Value v, Type to) {
    return v.getType() == to ? v : arith::ExtFOp::create(*b, loc, to, v);
  }
  Value truncF(Value v, Type to) {
    return v.getType() == to ? v : arith::TruncFOp::create(*b, loc, to, v);
  }

  /// if (cond) body().
  void when(Value cond, function_ref<void()> body) {
    auto op = scf::IfOp::create(*b, loc, cond, /*withElseRegion=*/false);
    OpBuilder *outer = b;
    OpBuilder nested = op.getThenBodyBuilder();
    b = &nested;
    body();
    b = outer;
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

  Value cmpF(arith::CmpFPredicate pred, Value x, Value y) {
    return arith::CmpFOp::create(*b, loc, pred, x, y);
  }
  Value andI(Value x, Value y) { return arith::AndIOp::create(*b, loc, x, y); }
  Value orI(Value x, Value y) { return arith::OrIOp::create(*b, loc, x, y); }
  Value subIndex(Value x, Value y) {
    return arith::SubIOp::create(*b, loc, x, y);
  }
  Value divIndex(Value x, Value y) {
    return arith::DivUIOp::create(*b, loc, x, y);
  }
  Value remIndex(Value x, Value y) {
    return arith::RemUIOp::create(*b, loc, x, y);
  }
  Value xorI(Value x, Value y) { return arith::XOrIOp::create(*b, loc, x, y); }
  Value shlI(Value x, Value y) { return arith::ShLIOp::create(*b, loc, x, y); }
  Value shrUI(Value x, Value y) {
    return arith::ShRUIOp::create(*b, loc, x, y);
  }
  Value addI(Value x, Value y) { return arith::AddIOp::create(*b, loc, x, y); }
  Value negF(Value x) { return arith::NegFOp::create(*b, loc, x); }
  Value boolean(bool v) { return constant(b->getBoolAttr(v)); }
  Value bitcast(Value v, Type to) {
    return arith::BitcastOp::create(*b, loc, to, v);
  }
  Value extUI(Value v, Type to) {
    return arith::ExtUIOp::create(*b, loc, to, v);
  }
  Value truncI(Value v, Type to) {
    return arith::TruncIOp::create(*b, loc, to, v);
  }
  /// memref[ivs] += v, atomically.
  void atomicAdd(Value v, Value memref, ValueRange ivs) {
    memref::AtomicRMWOp::create(*b, loc, arith::AtomicRMWKind::addi, v, memref,
                                ivs);
  }
  /// for iv in [lb, ub) by `step`: body(iv).
  void loopStep(Value lb, Value ub, Value step,
                function_ref<void(Value)> body) {
    loopWith(lb, ub, step, {}, [&](Value iv, ValueRange) -> SmallVector<Value> {
      body(iv);
      return {};
    });
  }
  Value toI32(Value v) {
    return arith::IndexCastOp::create(*b, loc, b->getI32Type(), v);
  }
  Value extSI(Value v, Type to) {
    return arith::ExtSIOp::create(*b, loc, to, v);
  }

  // Integer ops on any integer type (index, i32, i64; the *Index ones above
  // are too), and float ones.
  Value mulI(Value x, Value y) { return arith::MulIOp::create(*b, loc, x, y); }
  Value divSI(Value x, Value y) {
    return arith::DivSIOp::create(*b, loc, x, y);
  }
  Value minUI(Value x, Value y) {
    return arith::MinUIOp::create(*b, loc, x, y);
  }
  Value minSI(Value x, Value y) {
    return arith::MinSIOp::create(*b, loc, x, y);
  }
  Value maxSI(Value x, Value y) {
    return arith::MaxSIOp::create(*b, loc, x, y);
  }
  Value sub(Value x, Value y) { return arith::SubFOp::create(*b, loc, x, y); }
  Value maxF(Value x, Value y) {
    return arith::MaximumFOp::create(*b, loc, x, y);
  }
  Value siToFP(Value v, Type to) {
    return arith::SIToFPOp::create(*b, loc, to, v);
  }
  Value uiToFP(Value v, Type to) {
    return arith::UIToFPOp::create(*b, loc, to, v);
  }
  Value fpToSI(Value v, Type to) {
    return arith::FPToSIOp::create(*b, loc, to, v);
  }
  Value fpToUI(Value v, Type to) {
    return arith::FPToUIOp::create(*b, loc, to, v);
  }
  /// A load with no conversion.
  Value loadRaw(Value memref, ValueRange ivs) {
    return memref::LoadOp::create(*b, loc, memref, ivs);
  }
  /// if (cond) then() else otherwise(), without results.
  void ifThenElse(Value cond, function_ref<void()> then,
                  function_ref<void()> otherwise) {
    auto op = scf::IfOp::create(*b, loc, cond, /*withElseRegion=*/true);
    OpBuilder *outer = b;
    OpBuilder thenBuilder = op.getThenBodyBuilder();
    b = &thenBuilder;
    then();
    OpBuilder elseBuilder = op.getElseBodyBuilder();
    b = &elseBuilder;
    otherwise();
    b = outer;
  }

  OpBuilder *b;
  Location loc;

private:
  Value constant(TypedAttr value) {
    if (!constantBlock)
      return arith::ConstantOp::create(*b, loc, value);
    Value &cached = constants[value];
    if (!cached) {
      // In creation order, after the ones made before.
      OpBuilder hoisted(constantBlock, constantBlock->begin());
      if (lastConstant)
        hoisted.setInsertionPointAfter(lastConstant);
      auto op = arith::ConstantOp::create(hoisted, loc, value);
      lastConstant = op;
      cached = op;
    }
    return cached;
  }

  Block *constantBlock = nullptr;
  Operation *lastConstant = nullptr;
  llvm::DenseMap<Attribute, Value> constants;
};

} // namespace mlir::kiln

#endif // KILN_CONVERSION_EMITTER_H

//===- LaunchAttrs.cpp - GPU launch descriptions as attributes ------------===//

#include "kiln/Conversion/KilnToGPU/LaunchAttrs.h"

#include "mlir/IR/Builders.h"

using namespace mlir;
using namespace mlir::kiln;
namespace plan = ::kiln::plan;

namespace {

/// Reads fields of one dictionary, reporting the first missing or mistyped
/// one through `emitError`.
class Fields {
public:
  Fields(Attribute attr, StringRef what,
         function_ref<InFlightDiagnostic()> emitError)
      : dict(dyn_cast_or_null<DictionaryAttr>(attr)), what(what),
        emitError(emitError) {
    if (!dict)
      fail("is not a dictionary");
  }
  bool ok() const { return good; }

  int64_t integer(StringRef key, int64_t fallback, bool required = true) {
    Attribute a = get(key, required);
    if (!a)
      return fallback;
    auto i = dyn_cast<IntegerAttr>(a);
    if (!i)
      return fail("'" + key + "' is not an integer"), fallback;
    return i.getInt();
  }
  bool flag(StringRef key) {
    Attribute a = get(key, /*required=*/false);
    return a && isa<UnitAttr, BoolAttr>(a) &&
           (!isa<BoolAttr>(a) || cast<BoolAttr>(a).getValue());
  }
  std::string string(StringRef key) {
    Attribute a = get(key, /*required=*/true);
    if (!a)
      return "";
    auto s = dyn_cast<StringAttr>(a);
    if (!s)
      return fail("'" + key + "' is not a string"), "";
    return s.str();
  }
  ArrayAttr array(StringRef key) {
    Attribute a = get(key, /*required=*/true);
    if (!a)
      return nullptr;
    auto list = dyn_cast<ArrayAttr>(a);
    if (!list)
      fail("'" + key + "' is not an array");
    return list;
  }
  SmallVector<int64_t> integers(StringRef key) {
    SmallVector<int64_t> out;
    Attribute a = get(key, /*required=*/true);
    if (!a)
      return out;
    auto list = dyn_cast<DenseI64ArrayAttr>(a);
    if (!list)
      return fail("'" + key + "' is not an array<i64>"), out;
    out.assign(list.asArrayRef().begin(), list.asArrayRef().end());
    return out;
  }
  void fail(const Twine &why) {
    if (good)
      emitError() << "'" << what << "' launch description: " << why;
    good = false;
  }

private:
  Attribute get(StringRef key, bool required) {
    if (!dict)
      return nullptr;
    Attribute a = dict.get(key);
    if (!a && required)
      fail("no '" + key + "'");
    return a;
  }

  DictionaryAttr dict;
  std::string what;
  function_ref<InFlightDiagnostic()> emitError;
  bool good = true;
};

} // namespace

DictionaryAttr mlir::kiln::encodeGpuLaunch(MLIRContext *context,
                                           const plan::GpuLaunch &l) {
  Builder b(context);
  SmallVector<NamedAttribute> fields;
  fields.push_back(b.getNamedAttr("function", b.getStringAttr(l.function)));
  if (l.function.empty())
    return b.getDictionaryAttr(fields);
  fields.push_back(
      b.getNamedAttr("block", b.getI64IntegerAttr(l.blockThreads)));
  fields.push_back(b.getNamedAttr("shared_bytes",
                                  b.getI64IntegerAttr(l.dynamicSharedBytes)));
  SmallVector<Attribute> grid;
  for (const plan::GridExtent &g : l.grid)
    grid.push_back(b.getDenseI64ArrayAttr(
        {g.rowsOf, g.perRow, g.constant, g.divisor, g.perSm}));
  fields.push_back(b.getNamedAttr("grid", b.getArrayAttr(grid)));
  SmallVector<Attribute> params;
  for (const plan::GpuParam &p : l.params) {
    SmallVector<NamedAttribute> param{
        b.getNamedAttr("kind", b.getStringAttr(plan::paramKindName(p.kind))),
        b.getNamedAttr("operand", b.getI64IntegerAttr(p.operand))};
    if (p.kind == plan::GpuParam::Kind::TensorMap) {
      param.push_back(b.getNamedAttr(
          "box", b.getDenseI64ArrayAttr({p.boxCols, p.boxRows})));
      if (p.box3)
        param.push_back(b.getNamedAttr("box3", b.getUnitAttr()));
      if (p.pool)
        param.push_back(b.getNamedAttr("pool", b.getUnitAttr()));
    }
    if (p.kind == plan::GpuParam::Kind::Scratch) {
      param.push_back(b.getNamedAttr("per_row", b.getI64IntegerAttr(p.perRow)));
      if (p.floatScratch)
        param.push_back(b.getNamedAttr("f32", b.getUnitAttr()));
    }
    params.push_back(b.getDictionaryAttr(param));
  }
  fields.push_back(b.getNamedAttr("params", b.getArrayAttr(params)));
  fields.push_back(
      b.getNamedAttr("select_operand", b.getI64IntegerAttr(l.selectOperand)));
  fields.push_back(b.getNamedAttr("max_rows", b.getI64IntegerAttr(l.maxRows)));
  return b.getDictionaryAttr(fields);
}

ArrayAttr mlir::kiln::encodeGpuSteps(MLIRContext *context,
                                     ArrayRef<plan::GpuStep> steps) {
  Builder b(context);
  SmallVector<Attribute> list;
  for (const plan::GpuStep &step : steps) {
    SmallVector<Attribute> variants;
    for (const plan::GpuLaunch &l : step.variants)
      variants.push_back(encodeGpuLaunch(context, l));
    list.push_back(b.getArrayAttr(variants));
  }
  return b.getArrayAttr(list);
}

FailureOr<plan::GpuLaunch>
mlir::kiln::decodeGpuLaunch(Attribute attr,
                            function_ref<InFlightDiagnostic()> emitError) {
  auto dict = dyn_cast_or_null<DictionaryAttr>(attr);
  std::string name = "?";
  if (dict)
    if (auto f = dict.getAs<StringAttr>("function"))
      name = f.str();
  Fields f(attr, name, emitError);
  plan::GpuLaunch l;
  l.function = f.string("function");
  if (!f.ok())
    return failure();
  if (l.function.empty())
    return l;
  l.blockThreads = f.integer("block", 0);
  l.dynamicSharedBytes = f.integer("shared_bytes", 0);
  l.selectOperand = f.integer("select_operand", -1);
  l.maxRows = f.integer("max_rows", -1);
  if (ArrayAttr grid = f.array("grid")) {
    if (grid.size() != 3)
      f.fail("'grid' has " + Twine(grid.size()) + " extents, not 3");
    for (auto [d, extent] : llvm::enumerate(grid.getValue())) {
      auto e = dyn_cast<DenseI64ArrayAttr>(extent);
      if (d >= 3 || !e || e.size() != 5) {
        f.fail("grid extent " + Twine(d) +
               " is not [rows_of, per_row, constant, divisor, per_sm]");
        break;
      }
      l.grid[d] = {e[0], e[1], e[2], e[3], e[4]};
    }
  }
  if (ArrayAttr params = f.array("params"))
    for (auto [i, p] : llvm::enumerate(params.getValue())) {
      Fields pf(p, name + " param " + std::to_string(i), emitError);
      plan::GpuParam param;
      std::string kind = pf.string("kind");
      if (pf.ok() && !plan::parseParamKind(kind, param.kind))
        pf.fail("unknown parameter kind '" + kind + "'");
      param.operand = pf.integer("operand", 0);
      if (param.kind == plan::GpuParam::Kind::TensorMap) {
        SmallVector<int64_t> box = pf.integers("box");
        if (pf.ok() && box.size() != 2)
          pf.fail("'box' is not [cols, rows]");
        if (pf.ok()) {
          param.boxCols = box[0];
          param.boxRows = box[1];
        }
        param.box3 = pf.flag("box3");
        param.pool = pf.flag("pool");
      }
      if (param.kind == plan::GpuParam::Kind::Scratch) {
        param.perRow = pf.integer("per_row", 0);
        param.floatScratch = pf.flag("f32");
      }
      if (!pf.ok())
        return failure();
      l.params.push_back(param);
    }
  if (!f.ok())
    return failure();
  return l;
}

FailureOr<std::vector<plan::GpuStep>>
mlir::kiln::decodeGpuSteps(Attribute attr,
                           function_ref<InFlightDiagnostic()> emitError) {
  auto list = dyn_cast_or_null<ArrayAttr>(attr);
  if (!list)
    return emitError() << "'" << kGpuStepsAttrName
                       << "' is not an array of steps",
           failure();
  std::vector<plan::GpuStep> steps;
  for (Attribute s : list) {
    auto variants = dyn_cast<ArrayAttr>(s);
    if (!variants || variants.empty())
      return emitError() << "'" << kGpuStepsAttrName
                         << "' holds a step that is not a non-empty array",
             failure();
    plan::GpuStep step;
    for (Attribute v : variants) {
      FailureOr<plan::GpuLaunch> l = decodeGpuLaunch(v, emitError);
      if (failed(l))
        return failure();
      step.variants.push_back(std::move(*l));
    }
    steps.push_back(std::move(step));
  }
  return steps;
}

//===- EngineWriter.cpp - Host engines from kernel graphs
//------------------===//
//
// The plan is a list of values (runtime inputs, checkpoint weights, weight
// repackings, activation buffers) and a list of launches reading and writing
// them, in graph order. Kernels are compiled once each, whatever the number
// of layers that launch them.
//
//===----------------------------------------------------------------------===//

#include "kiln/Target/Host/EngineWriter.h"
#include "dialects/kiln/KilnOps.h"
#include "kiln/Analysis/MemoryPlan.h"
#include "kiln/Conversion/Passes.h"
#include "kiln/Target/Host/SharedObject.h"
#include "kiln/runtime/EngineFile.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/SymbolTable.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/JSON.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Path.h"

using namespace mlir;
using namespace mlir::kiln;
namespace json = llvm::json;

static llvm::Error makeError(const llvm::Twine &message) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
}

static std::string dtypeName(Type type) {
  if (type.isBF16())
    return "BF16";
  if (type.isF16())
    return "F16";
  if (type.isF32())
    return "F32";
  if (type.isInteger(64))
    return "I64";
  if (type.isInteger(32))
    return "I32";
  return "?";
}

static json::Array shapeOf(RankedTensorType type) {
  json::Array shape;
  for (int64_t d : type.getShape())
    shape.push_back(ShapedType::isDynamic(d) ? int64_t(-1) : d);
  return shape;
}

/// Rows of a dynamically sized kernel result: one per token, or top_k per
/// token for the per-pair tensors of a decomposed MoE.
static int64_t rowsPerToken(func::FuncOp kernel, unsigned resultIndex) {
  auto ret = cast<func::ReturnOp>(kernel.getBody().front().getTerminator());
  Operation *def = ret.getOperand(resultIndex).getDefiningOp();
  if (auto route = dyn_cast_or_null<mlir::kiln::MoeRouteOp>(def))
    return route.getTopK();
  if (isa_and_nonnull<mlir::kiln::ExpertGateUpOp>(def)) {
    // One row per dispatched pair: top_k of the module's router.
    int64_t k = 1;
    kernel->getParentOfType<ModuleOp>().walk([&](mlir::kiln::MoeRouteOp r) {
      k = std::max<int64_t>(k, r.getTopK());
    });
    return k;
  }
  return 1;
}

llvm::Expected<json::Object> mlir::kiln::buildEnginePlan(
    ModuleOp module, function_ref<Type(Value)> storageOf,
    function_ref<llvm::Error(func::CallOp, json::Object &)> decorateLaunch) {
  auto elementOf = [&](Value v) {
    Type t = storageOf ? storageOf(v) : Type();
    return t ? t : cast<RankedTensorType>(v.getType()).getElementType();
  };
  func::FuncOp graph;
  for (auto f : module.getOps<func::FuncOp>())
    if (f.isPublic() && !f.isExternal())
      graph = f;
  if (!graph)
    return makeError("no graph function to compile");

  llvm::DenseMap<Value, int64_t> ids;
  json::Array values, launches, slots;
  auto addValue = [&](Value v, json::Object entry) {
    int64_t id = static_cast<int64_t>(values.size());
    entry["id"] = id;
    values.push_back(std::move(entry));
    ids[v] = id;
    return id;
  };
  Block &body = graph.getBody().front();
  for (BlockArgument arg : body.getArguments()) {
    auto type = cast<RankedTensorType>(arg.getType());
    json::Object entry{{"dtype", dtypeName(type.getElementType())},
                       {"shape", shapeOf(type)}};
    if (auto input = graph.getArgAttrOfType<StringAttr>(
            arg.getArgNumber(), KilnDialect::getInputAttrName())) {
      entry["kind"] = "input";
      entry["input"] = input.getValue();
    } else if (auto name = graph.getArgAttrOfType<StringAttr>(
                   arg.getArgNumber(), KilnDialect::getWeightAttrName())) {
      entry["kind"] = "weight";
      entry["name"] = name.getValue();
    } else {
      return makeError("graph argument " + llvm::Twine(arg.getArgNumber()) +
                       " is neither an input nor a weight");
    }
    addValue(arg, std::move(entry));
  }

  Value logits;
  int64_t slotCount = 0;
  for (Operation &op : body) {
    if (auto concat = dyn_cast<ConcatOp>(op)) {
      json::Array of;
      for (Value in : concat.getInputs())
        of.push_back(ids.lookup(in));
      auto type = concat.getType();
      addValue(concat, json::Object{{"kind", "concat"},
                                    {"of", std::move(of)},
                                    {"axis", concat.getAxis()},
                                    {"dtype", dtypeName(type.getElementType())},
                                    {"shape", shapeOf(type)}});
    } else if (auto call = dyn_cast<func::CallOp>(op)) {
      auto kernel = SymbolTable::lookupNearestSymbolFrom<func::FuncOp>(
          call, call.getCalleeAttr());
      if (!kernel || !kernel->hasAttr("kiln.kernel"))
        return makeError("call to @" + call.getCallee() + " is not a kernel");
      json::Array args, results, attention;
      for (Value operand : call.getOperands())
        args.push_back(ids.lookup(operand));
      for (auto [i, result] : llvm::enumerate(call.getResults())) {
        auto type = cast<RankedTensorType>(result.getType());
        json::Object entry{{"kind", "buffer"},
                           {"dtype", dtypeName(elementOf(result))},
                           {"shape", shapeOf(type)}};
        if (type.isDynamicDim(0))
          entry["rows_per_token"] = rowsPerToken(kernel, i);
        results.push_back(addValue(result, std::move(entry)));
      }
      for (Operation &inner : kernel.getBody().front())
        if (auto a = dyn_cast<AttentionOp>(inner)) {
          auto key = dyn_cast<BlockArgument>(a.getKey());
          auto value = dyn_cast<BlockArgument>(a.getValue());
          if (!key || !value)
            return makeError("@" + kernel.getSymName() +
                             ": attention keys and values must be kernel "
                             "arguments");
          int64_t width = cast<RankedTensorType>(key.getType()).getDimSize(1);
          attention.push_back(json::Object{{"key_arg", key.getArgNumber()},
                                           {"value_arg", value.getArgNumber()},
                                           {"slot", slotCount}});
          // Chunked layers only ever look inside the current chunk.
          int64_t chunk = a.getMask() == MaskKind::Chunked
                              ? a.getChunkSize().value_or(0)
                              : 0;
          slots.push_back(json::Object{{"width", width}, {"chunk", chunk}});
          ++slotCount;
        }
      json::Object launch{{"kernel", kernel.getSymName()},
                          {"args", std::move(args)},
                          {"results", std::move(results)},
                          {"attention", std::move(attention)}};
      if (decorateLaunch)
        if (llvm::Error e = decorateLaunch(call, launch))
          return std::move(e);
      launches.push_back(std::move(launch));
    } else if (auto ret = dyn_cast<func::ReturnOp>(op)) {
      if (ret.getNumOperands() != 1)
        return makeError("the graph must return exactly the logits");
      logits = ret.getOperand(0);
    } else {
      return op.emitOpError("is not part of a kernel graph (run "
                            "kiln-graph-pipeline first)"),
             makeError("the graph is not partitioned");
    }
  }

  // Activation buffers share one arena, placed by liveness.
  llvm::DenseMap<Value, int64_t> rowsPerTokenOf;
  for (Operation &op : body)
    if (auto call = dyn_cast<func::CallOp>(op)) {
      auto kernel = SymbolTable::lookupNearestSymbolFrom<func::FuncOp>(
          call, call.getCalleeAttr());
      for (auto [i, result] : llvm::enumerate(call.getResults()))
        rowsPerTokenOf[result] = rowsPerToken(kernel, i);
    }
  // The logits live outside the arena: a step that wants only its last
  // row's logits allocates one row, not tokens x vocab (0.8 MB a token for
  // Llama 4).
  ActivationPlan arena = planActivations(graph, [&](Value v) {
    if (v == logits)
      return int64_t(0);
    auto type = cast<RankedTensorType>(v.getType());
    int64_t row = elementOf(v).getIntOrFloatBitWidth() / 8;
    for (int64_t d : type.getShape().drop_front())
      row *= d;
    return rowsPerTokenOf.lookup(v) * row;
  });
  for (const BufferPlacement &b : arena.buffers)
    if (b.value != logits)
      (*values[ids.lookup(b.value)].getAsObject())["arena_offset"] =
          b.offsetPerToken;

  json::Object plan{{"values", std::move(values)},
                    {"arena_bytes_per_token", arena.peakPerToken},
                    {"launches", std::move(launches)},
                    {"kv_slots", std::move(slots)},
                    {"logits", ids.lookup(logits)}};
  if (auto eos =
          module->getAttrOfType<DenseI64ArrayAttr>("kiln.eos_token_ids")) {
    json::Array list;
    for (int64_t id : eos.asArrayRef())
      list.push_back(id);
    plan["eos_token_ids"] = std::move(list);
  }
  return plan;
}

llvm::Error mlir::kiln::writeHostEngine(ModuleOp module, llvm::StringRef path,
                                        llvm::StringRef workDir) {
  llvm::Expected<json::Object> plan = buildEnginePlan(module);
  if (!plan)
    return plan.takeError();

  // Kernels: clone, lower to loops and LLVM, compile, link.
  OwningOpRef<ModuleOp> kernels = ModuleOp::create(module.getLoc());
  for (auto f : module.getOps<func::FuncOp>())
    if (f->hasAttr("kiln.kernel"))
      kernels->push_back(f->clone());
  PassManager pm(module.getContext());
  pm.addPass(createConvertKilnToLoops());
  if (failed(pm.run(*kernels)))
    return makeError("lowering the kernels to host loops failed");
  if (failed(lowerToLLVMDialect(*kernels)))
    return makeError("lowering the kernels to the LLVM dialect failed");
  llvm::SmallString<256> object(workDir), library(workDir);
  llvm::sys::path::append(object, "kernels.o");
  llvm::sys::path::append(library, "kernels.so");
  HostCompileOptions options;
  options.cpu = "x86-64-v2"; // engines must run on other x86-64 machines too
  if (llvm::Error e = emitHostObject(*kernels, object, options))
    return e;
  if (llvm::Error e = linkSharedObject({std::string(object)}, library))
    return e;
  auto shared = llvm::MemoryBuffer::getFile(library, /*IsText=*/false);
  if (!shared)
    return makeError(library + ": " + shared.getError().message());

  ::kiln::EngineFile engine;
  engine.target = kHostTarget;
  engine.compilerVersion = "kiln 0.1.0";
  std::string planText;
  llvm::raw_string_ostream os(planText);
  os << json::Value(std::move(*plan));
  engine.sections[::kiln::SectionKind::Plan] = planText;
  engine.sections[::kiln::SectionKind::HostKernels] =
      (*shared)->getBuffer().str();
  std::string error;
  if (!engine.write(path.str(), error))
    return makeError(error);
  return llvm::Error::success();
}

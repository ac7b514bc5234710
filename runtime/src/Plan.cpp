//===- Plan.cpp - An engine's plan, parsed --------------------------------===//

#include "Plan.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kiln/runtime/Json.h"
#include "kiln/runtime/Npy.h"
#include "kiln/runtime/Safetensors.h"

using namespace kiln;
using namespace kiln::plan;

size_t kiln::plan::elementSize(const std::string &dtype) {
  if (dtype == "F32" || dtype == "I32")
    return 4;
  if (dtype == "I64")
    return 8;
  return 2; // BF16, F16
}

std::string kiln::plan::dumpDirectory() {
  const char *dir = std::getenv("KILN_DUMP_DIR");
  return dir && *dir ? dir : "";
}

bool kiln::plan::dumpValue(const std::string &dir, size_t step, size_t launch,
                           const std::string &kernel, size_t result,
                           const std::string &dtype,
                           const std::vector<int64_t> &shape, const void *data,
                           std::string &error) {
  int64_t n = 1;
  for (int64_t d : shape)
    n *= d;
  std::vector<float> values(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (dtype == "F32") {
      values[i] = static_cast<const float *>(data)[i];
    } else if (dtype == "BF16") {
      uint32_t bits =
          static_cast<uint32_t>(static_cast<const uint16_t *>(data)[i]) << 16;
      std::memcpy(&values[i], &bits, sizeof bits);
    } else if (dtype == "I64") {
      values[i] = static_cast<float>(static_cast<const int64_t *>(data)[i]);
    } else if (dtype == "I32") {
      values[i] = static_cast<float>(static_cast<const int32_t *>(data)[i]);
    } else {
      error = "cannot dump values of type " + dtype;
      return false;
    }
  }
  char name[64];
  std::snprintf(name, sizeof name, "/%03zu_%04zu_", step, launch);
  std::string path =
      dir + name + kernel + "_" + std::to_string(result) + ".npy";
  return writeNpyF32(path, shape, values.data(), error);
}

static bool intsOf(const json::Value *v, std::vector<int64_t> &out) {
  if (!v || !v->isArray())
    return false;
  out.clear();
  for (const json::Value &e : v->array) {
    if (!e.isNumber() || !e.isInteger)
      return false;
    out.push_back(e.integer);
  }
  return true;
}

static int64_t intField(const json::Value &o, const char *key, int64_t fallback,
                        bool &ok) {
  const json::Value *v = o.find(key);
  if (!v)
    return fallback;
  if (!v->isNumber() || !v->isInteger) {
    ok = false;
    return fallback;
  }
  return v->integer;
}

/// One GPU variant of a launch; `operands` bounds the operand indices.
static bool parseVariant(const json::Value &entry, size_t operands,
                         GpuVariant &out) {
  bool ok = true;
  const json::Value *function = entry.find("function");
  if (!function || !function->isString())
    return false;
  out.function = function->string;
  if (out.function.empty())
    return true; // a variant that launches nothing
  out.block = intField(entry, "block", 0, ok);
  out.sharedBytes = intField(entry, "shared_bytes", 0, ok);
  out.selectOperand = intField(entry, "select_operand", -1, ok);
  out.maxRows = intField(entry, "max_rows", -1, ok);
  const json::Value *grid = entry.find("grid");
  if (!grid || !grid->isArray() || grid->array.size() != 3)
    return false;
  for (int d = 0; d < 3; ++d) {
    const json::Value &g = grid->array[d];
    out.grid[d].rowsOf = intField(g, "rows_of", -1, ok);
    out.grid[d].perRow = intField(g, "per_row", 0, ok);
    out.grid[d].constant = intField(g, "constant", 1, ok);
    out.grid[d].divisor = intField(g, "divisor", 1, ok);
    out.grid[d].perSm = intField(g, "per_sm", 0, ok);
    if (out.grid[d].divisor <= 0 ||
        out.grid[d].rowsOf >= static_cast<int64_t>(operands))
      return false;
  }
  const json::Value *params = entry.find("params");
  if (!params || !params->isArray())
    return false;
  for (const json::Value &p : params->array) {
    GpuParam param;
    const json::Value *kind = p.find("kind");
    if (!kind || !kind->isString())
      return false;
    if (kind->string == "memref")
      param.kind = GpuParam::Kind::Memref;
    else if (kind->string == "tensor_map")
      param.kind = GpuParam::Kind::TensorMap;
    else if (kind->string == "key_positions")
      param.kind = GpuParam::Kind::KeyPositions;
    else if (kind->string == "kv_pool")
      param.kind = GpuParam::Kind::KvPool;
    else if (kind->string == "key_count")
      param.kind = GpuParam::Kind::KeyCount;
    else if (kind->string == "scratch")
      param.kind = GpuParam::Kind::Scratch;
    else
      return false;
    param.operand = intField(p, "operand", -1, ok);
    param.perRow = intField(p, "per_row", 0, ok);
    if (const json::Value *dtype = p.find("dtype"))
      param.floatScratch = dtype->isString() && dtype->string == "F32";
    std::vector<int64_t> box;
    if (param.kind == GpuParam::Kind::TensorMap) {
      if (!intsOf(p.find("box"), box) || box.size() < 2 || box.size() > 3 ||
          (box.size() == 3 && box[2] != 1))
        return false;
      param.boxCols = box[0];
      param.boxRows = box[1];
      param.box3 = box.size() == 3;
      if (const json::Value *pool = p.find("pool"))
        param.pool = pool->isBool() && pool->boolean;
    }
    if (param.operand < 0 || param.operand >= static_cast<int64_t>(operands))
      return false;
    out.params.push_back(param);
  }
  return ok && out.block > 0;
}

bool Plan::parse(const std::string &text, const std::string &path,
                 std::string &error) {
  json::Value plan;
  std::string jsonError;
  if (!json::parse(text, plan, jsonError)) {
    error = path + ": malformed plan: " + jsonError;
    return false;
  }
  auto bad = [&](const std::string &what) {
    error = path + ": malformed plan: " + what;
    return false;
  };
  const json::Value *list = plan.find("values");
  if (!list || !list->isArray())
    return bad("no 'values'");
  for (const json::Value &entry : list->array) {
    Value v;
    const json::Value *kind = entry.find("kind");
    const json::Value *dtype = entry.find("dtype");
    if (!kind || !kind->isString() || !dtype || !dtype->isString() ||
        !intsOf(entry.find("shape"), v.shape))
      return bad("value " + std::to_string(values.size()));
    v.dtype = dtype->string;
    if (kind->string == "input") {
      v.kind = ValueKind::Input;
      const json::Value *input = entry.find("input");
      if (!input || !input->isString())
        return bad("input without a name");
      v.input = input->string;
    } else if (kind->string == "weight") {
      v.kind = ValueKind::Weight;
      const json::Value *name = entry.find("name");
      if (!name || !name->isString())
        return bad("weight without a name");
      v.name = name->string;
    } else if (kind->string == "concat") {
      v.kind = ValueKind::Concat;
      if (!intsOf(entry.find("of"), v.of))
        return bad("concat without inputs");
      if (const json::Value *axis = entry.find("axis"))
        v.axis = axis->integer;
    } else if (kind->string == "buffer") {
      v.kind = ValueKind::Buffer;
      if (const json::Value *r = entry.find("rows_per_token"))
        v.rowsPerToken = r->integer;
      if (const json::Value *o = entry.find("arena_offset"))
        v.arenaOffset = o->integer;
    } else {
      return bad("unknown value kind '" + kind->string + "'");
    }
    values.push_back(std::move(v));
  }
  const json::Value *launchList = plan.find("launches");
  if (!launchList || !launchList->isArray())
    return bad("no 'launches'");
  for (const json::Value &entry : launchList->array) {
    Launch l;
    const json::Value *kernel = entry.find("kernel");
    if (!kernel || !kernel->isString() || !intsOf(entry.find("args"), l.args) ||
        !intsOf(entry.find("results"), l.results))
      return bad("launch " + std::to_string(launches.size()));
    l.kernel = kernel->string;
    if (const json::Value *att = entry.find("attention"))
      for (const json::Value &a : att->array) {
        const json::Value *k = a.find("key_arg"), *v = a.find("value_arg"),
                          *s = a.find("slot");
        if (!k || !v || !s)
          return bad("attention of launch " + std::to_string(launches.size()));
        l.attention.push_back({k->integer, v->integer, s->integer});
      }
    for (int64_t id : l.args)
      if (id < 0 || id >= static_cast<int64_t>(values.size()))
        return bad("launch argument out of range");
    for (int64_t id : l.results)
      if (id < 0 || id >= static_cast<int64_t>(values.size()))
        return bad("launch result out of range");
    for (const AttentionUse &a : l.attention)
      if (a.keyArg < 0 || a.valueArg < 0 ||
          a.keyArg >= static_cast<int64_t>(l.args.size()) ||
          a.valueArg >= static_cast<int64_t>(l.args.size()))
        return bad("attention operand out of range");
    if (const json::Value *gpu = entry.find("gpu")) {
      if (!gpu->isArray())
        return bad("gpu steps of launch " + l.kernel);
      for (const json::Value &step : gpu->array) {
        if (!step.isArray() || step.array.empty())
          return bad("gpu step of launch " + l.kernel);
        std::vector<GpuVariant> variants;
        for (const json::Value &variant : step.array) {
          GpuVariant v;
          if (!parseVariant(variant, l.operandCount(), v))
            return bad("gpu launch of kernel " + l.kernel);
          variants.push_back(std::move(v));
        }
        l.gpu.push_back(std::move(variants));
      }
    }
    launches.push_back(std::move(l));
  }
  if (const json::Value *kv = plan.find("kv_slots"))
    for (const json::Value &s : kv->array) {
      Slot slot;
      if (const json::Value *w = s.find("width"))
        slot.width = w->integer;
      if (const json::Value *c = s.find("chunk"))
        slot.chunk = c->integer;
      slotInfo.push_back(slot);
    }
  for (const Launch &l : launches)
    for (const AttentionUse &a : l.attention)
      if (a.slot < 0 || a.slot >= static_cast<int64_t>(slotInfo.size()))
        return bad("attention slot out of range");
  if (const json::Value *a = plan.find("arena_bytes_per_token"))
    arenaBytesPerToken = a->integer;
  for (const Value &v : values)
    if (v.arenaOffset >= 0 &&
        (v.kind != ValueKind::Buffer || v.arenaOffset >= arenaBytesPerToken))
      return bad("arena offset out of range");
  const json::Value *out = plan.find("logits");
  if (!out || !out->isInteger || out->integer < 0 ||
      out->integer >= static_cast<int64_t>(values.size()))
    return bad("no valid 'logits'");
  logits = out->integer;
  vocab = values[logits].shape.back();
  intsOf(plan.find("eos_token_ids"), eos);
  for (auto [key, function, block] :
       {std::tuple{"argmax", &argmaxFunction, &argmaxBlock},
        std::tuple{"sample", &sampleFunction, &sampleBlock}}) {
    const json::Value *entry = plan.find(key);
    if (!entry)
      continue;
    const json::Value *name = entry->find("function");
    const json::Value *threads = entry->find("block");
    if (!name || !name->isString() || !threads || !threads->isInteger ||
        threads->integer <= 0)
      return bad(key);
    *function = name->string;
    *block = threads->integer;
  }
  return true;
}

bool Plan::bindWeights(const Checkpoint &checkpoint, std::string &error) {
  for (Value &v : values) {
    if (v.kind == ValueKind::Weight) {
      const TensorInfo *info = checkpoint.find(v.name);
      if (!info) {
        error = checkpoint.locationOf(v.name) + ": missing tensor '" + v.name +
                "' the engine binds";
        return false;
      }
      if (info->shape != v.shape || dtypeName(info->dtype) != v.dtype) {
        error = info->file->path() + ": tensor '" + v.name + "' is " +
                dtypeName(info->dtype) + " " + info->shapeString() +
                "; the engine was compiled for " + v.dtype +
                " of another "
                "shape: recompile it for this checkpoint";
        return false;
      }
      v.data = info->data(); // zero-copy from the mapping
    } else if (v.kind == ValueKind::Concat) {
      if (v.axis != 0) {
        error = "engine: weight repacking along axis " +
                std::to_string(v.axis) + " is not supported";
        return false;
      }
      for (int64_t part : v.of) {
        const Value &p = values[part];
        int64_t n = 1;
        for (int64_t d : p.shape)
          n *= d;
        const uint8_t *bytes = static_cast<const uint8_t *>(p.data);
        v.owned.insert(v.owned.end(), bytes, bytes + n * elementSize(p.dtype));
      }
      v.data = v.owned.data();
    }
  }
  return true;
}

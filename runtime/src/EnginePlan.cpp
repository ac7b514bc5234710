//===- EnginePlan.cpp - The engine plan schema, read and written ----------===//
//
// The one place that spells the plan's JSON keys. The reader checks every
// index against what it indexes, so the backends never bounds-check plan
// data again.
//
//===----------------------------------------------------------------------===//

#include "kiln/runtime/EnginePlan.h"
#include "kiln/runtime/Json.h"

#include <cstdio>
#include <cstring>

using namespace kiln;
using namespace kiln::plan;

namespace {

constexpr struct {
  DType dtype;
  const char *name;
  size_t bytes;
} kDTypes[] = {{DType::F32, "F32", 4},
               {DType::BF16, "BF16", 2},
               {DType::F16, "F16", 2},
               {DType::I64, "I64", 8},
               {DType::I32, "I32", 4}};

constexpr struct {
  GpuParam::Kind kind;
  const char *name;
} kParamKinds[] = {{GpuParam::Kind::Memref, "memref"},
                   {GpuParam::Kind::TensorMap, "tensor_map"},
                   {GpuParam::Kind::KeyPositions, "key_positions"},
                   {GpuParam::Kind::KvPool, "kv_pool"},
                   {GpuParam::Kind::KeyCount, "key_count"},
                   {GpuParam::Kind::Scratch, "scratch"}};

constexpr struct {
  ValueKind kind;
  const char *name;
} kValueKinds[] = {{ValueKind::Input, "input"},
                   {ValueKind::Weight, "weight"},
                   {ValueKind::Concat, "concat"},
                   {ValueKind::Buffer, "buffer"}};

//===----------------------------------------------------------------------===//
// Writing
//===----------------------------------------------------------------------===//

/// Appends `"key":` after a comma when the object has members already.
class ObjectWriter {
public:
  explicit ObjectWriter(std::string &out) : out(out) { out += '{'; }
  ~ObjectWriter() { out += '}'; }

  std::string &key(const char *name) {
    if (!first)
      out += ',';
    first = false;
    json::writeString(out, name);
    out += ':';
    return out;
  }
  void integer(const char *name, int64_t value) {
    key(name) += std::to_string(value);
  }
  void string(const char *name, const std::string &value) {
    json::writeString(key(name), value);
  }
  void boolean(const char *name, bool value) {
    key(name) += value ? "true" : "false";
  }
  void integers(const char *name, const std::vector<int64_t> &list) {
    std::string &o = key(name);
    o += '[';
    for (size_t i = 0; i < list.size(); ++i)
      o += (i ? "," : "") + std::to_string(list[i]);
    o += ']';
  }

private:
  std::string &out;
  bool first = true;
};

template <typename T, typename Fn>
void writeArray(std::string &out, const std::vector<T> &items, Fn &&each) {
  out += '[';
  for (size_t i = 0; i < items.size(); ++i) {
    if (i)
      out += ',';
    each(items[i]);
  }
  out += ']';
}

const char *valueKindName(ValueKind kind) {
  for (const auto &k : kValueKinds)
    if (k.kind == kind)
      return k.name;
  return "?";
}

void writeGpuLaunch(std::string &out, const GpuLaunch &l) {
  ObjectWriter o(out);
  o.string("function", l.function);
  if (l.function.empty())
    return;
  o.integer("block", l.blockThreads);
  o.integer("shared_bytes", l.dynamicSharedBytes);
  writeArray(o.key("grid"), std::vector<GridExtent>(l.grid, l.grid + 3),
             [&](const GridExtent &g) {
               ObjectWriter e(out);
               e.integer("rows_of", g.rowsOf);
               e.integer("per_row", g.perRow);
               e.integer("constant", g.constant);
               e.integer("divisor", g.divisor);
               if (g.perSm)
                 e.integer("per_sm", g.perSm);
             });
  writeArray(o.key("params"), l.params, [&](const GpuParam &p) {
    ObjectWriter e(out);
    e.string("kind", paramKindName(p.kind));
    e.integer("operand", p.operand);
    if (p.kind == GpuParam::Kind::TensorMap) {
      std::vector<int64_t> box{p.boxCols, p.boxRows};
      if (p.box3)
        box.push_back(1);
      e.integers("box", box);
      e.integer("swizzle", 128);
      e.boolean("pool", p.pool);
    }
    if (p.kind == GpuParam::Kind::Scratch) {
      e.integer("per_row", p.perRow);
      e.string("dtype", p.floatScratch ? "F32" : "I64");
    }
  });
  o.integer("select_operand", l.selectOperand);
  o.integer("max_rows", l.maxRows);
}

//===----------------------------------------------------------------------===//
// Reading
//===----------------------------------------------------------------------===//

/// Reads fields of one JSON object, remembering the first problem as
/// "<what>: <why>".
class FieldReader {
public:
  FieldReader(const json::Value &object, std::string what, std::string &problem)
      : object(object), what(std::move(what)), problem(problem) {
    if (!object.isObject())
      fail("not an object");
  }

  bool ok() const { return problem.empty(); }

  int64_t integer(const char *key, int64_t fallback, bool required = false) {
    const json::Value *v = find(key, required);
    if (!v)
      return fallback;
    if (!v->isNumber() || !v->isInteger)
      return fail(std::string("'") + key + "' is not an integer"), fallback;
    return v->integer;
  }
  std::string string(const char *key, bool required = false) {
    const json::Value *v = find(key, required);
    if (!v)
      return "";
    if (!v->isString())
      return fail(std::string("'") + key + "' is not a string"), "";
    return v->string;
  }
  bool boolean(const char *key) {
    const json::Value *v = find(key, false);
    if (!v)
      return false;
    if (!v->isBool())
      return fail(std::string("'") + key + "' is not a boolean"), false;
    return v->boolean;
  }
  std::vector<int64_t> integers(const char *key, bool required = false) {
    std::vector<int64_t> out;
    const json::Value *v = find(key, required);
    if (!v)
      return out;
    if (!v->isArray())
      return fail(std::string("'") + key + "' is not a list"), out;
    for (const json::Value &e : v->array) {
      if (!e.isNumber() || !e.isInteger)
        return fail(std::string("'") + key + "' holds a non-integer"), out;
      out.push_back(e.integer);
    }
    return out;
  }
  const std::vector<json::Value> *list(const char *key, bool required) {
    const json::Value *v = find(key, required);
    if (!v)
      return nullptr;
    if (!v->isArray())
      return fail(std::string("'") + key + "' is not a list"), nullptr;
    return &v->array;
  }
  /// Requires lo <= value < hi.
  void inRange(const char *field, int64_t value, int64_t lo, int64_t hi) {
    if (value < lo || value >= hi)
      fail(std::string(field) + " " + std::to_string(value) + " is outside [" +
           std::to_string(lo) + ", " + std::to_string(hi) + ")");
  }
  void fail(const std::string &why) {
    // The top level needs no name of its own: "malformed plan: ..." says it.
    if (problem.empty())
      problem = what.empty() ? why : what + ": " + why;
  }

private:
  const json::Value *find(const char *key, bool required) {
    const json::Value *v = object.isObject() ? object.find(key) : nullptr;
    if (!v && required)
      fail(std::string("no '") + key + "'");
    return v;
  }

  const json::Value &object;
  std::string what;
  std::string &problem;
};

void readGpuLaunch(const json::Value &entry, const std::string &what,
                   size_t operands, GpuLaunch &out, std::string &problem) {
  FieldReader r(entry, what, problem);
  out.function = r.string("function", /*required=*/true);
  if (!r.ok() || out.function.empty())
    return;
  out.blockThreads = r.integer("block", 0, true);
  r.inRange("block", out.blockThreads, 1, 1025);
  out.dynamicSharedBytes = r.integer("shared_bytes", 0);
  r.inRange("shared_bytes", out.dynamicSharedBytes, 0, int64_t(1) << 20);
  out.selectOperand = r.integer("select_operand", -1);
  r.inRange("select_operand", out.selectOperand, -1, int64_t(operands));
  out.maxRows = r.integer("max_rows", -1);
  const std::vector<json::Value> *grid = r.list("grid", true);
  if (grid && grid->size() != 3)
    r.fail("'grid' has " + std::to_string(grid->size()) + " extents, not 3");
  for (size_t d = 0; grid && d < grid->size() && r.ok(); ++d) {
    FieldReader g((*grid)[d], what + " grid[" + std::to_string(d) + "]",
                  problem);
    GridExtent &e = out.grid[d];
    e.rowsOf = g.integer("rows_of", -1);
    g.inRange("rows_of", e.rowsOf, -1, int64_t(operands));
    e.perRow = g.integer("per_row", 0);
    e.constant = g.integer("constant", 1);
    e.divisor = g.integer("divisor", 1);
    g.inRange("divisor", e.divisor, 1, int64_t(1) << 40);
    e.perSm = g.integer("per_sm", 0);
  }
  const std::vector<json::Value> *params = r.list("params", true);
  for (size_t i = 0; params && i < params->size() && r.ok(); ++i) {
    FieldReader p((*params)[i], what + " param " + std::to_string(i), problem);
    GpuParam param;
    std::string kind = p.string("kind", true);
    if (p.ok() && !parseParamKind(kind, param.kind))
      p.fail("unknown kind '" + kind + "'");
    param.operand = p.integer("operand", -1, true);
    p.inRange("operand", param.operand, 0, int64_t(operands));
    if (param.kind == GpuParam::Kind::Scratch) {
      param.perRow = p.integer("per_row", 0);
      param.floatScratch = p.string("dtype") == "F32";
    }
    if (param.kind == GpuParam::Kind::TensorMap) {
      std::vector<int64_t> box = p.integers("box", true);
      if (p.ok() && (box.size() < 2 || box.size() > 3 ||
                     (box.size() == 3 && box[2] != 1) || box[0] <= 0 ||
                     box[0] > 256 || box[1] <= 0 || box[1] > 256))
        p.fail("'box' is not [cols, rows] or [cols, rows, 1] within 256");
      if (p.ok()) {
        param.boxCols = box[0];
        param.boxRows = box[1];
        param.box3 = box.size() == 3;
      }
      param.pool = p.boolean("pool");
    }
    out.params.push_back(param);
  }
}

/// The operands of a token dispatch or combine (kiln.token_dispatch /
/// kiln.token_combine): the routed rows of this rank's replica and their
/// routing over all E experts, the rank, and (dispatch) a router's
/// results over the E / G experts of the rank's group as received, or
/// (combine) the received pairs' outputs and the replica's rows.
void checkTokenExchange(const Plan &plan, const Launch &l,
                        const std::string &collective, FieldReader &r) {
  auto bad = [&](const std::string &why) {
    r.fail("a " + collective + " " + why);
  };
  bool dispatch = l.kind == LaunchKind::TokenDispatch;
  int64_t groups = l.expertGroups;
  if (plan.attentionReplicas < 2)
    return bad("in an engine without attention replicas");
  if (groups < 1 || plan.tensorParallel % groups != 0)
    return bad("needs expert_groups dividing the " +
               std::to_string(plan.tensorParallel) + " ranks");
  if (l.args.size() != 5 || l.results.size() != (dispatch ? 4u : 1u))
    return bad(dispatch ? "needs 5 arguments and 4 results"
                        : "needs 5 arguments and 1 result");
  auto value = [&](int64_t id) -> const Value & { return plan.values[id]; };
  auto rowsOf = [&](const Value &v, DType type) {
    return v.dtype == type && v.shape.size() == 2 && v.isDynamic() &&
           v.shape[1] > 0 && v.rowsPerToken == 1 && !v.gathered;
  };
  auto listOf = [&](const Value &v, DType type) {
    return v.dtype == type && v.shape.size() == 1 && v.isDynamic();
  };
  auto offsetsOf = [&](const Value &v) {
    return v.dtype == DType::I64 && v.shape.size() == 1 && v.shape[0] >= 2;
  };
  size_t routing = dispatch ? 0 : 1;
  const Value &rows = value(l.args[routing]);
  const Value &offsets = value(l.args[routing + 2]);
  const Value &rank = value(l.args[4]);
  // The routed rows as stored (bf16 on GPUs), which a dispatch moves and
  // a combine takes only the shape of; a combine sums f32.
  DType rowType = rows.dtype == DType::BF16 ? DType::BF16 : DType::F32;
  if (!rowsOf(rows, rowType) || rows.received ||
      !listOf(value(l.args[routing + 1]), DType::I64) || !offsetsOf(offsets) ||
      (dispatch && !listOf(value(l.args[3]), DType::F32)) ||
      rank.kind != ValueKind::Input || rank.input != "rank")
    return bad("needs its replica's F32 (or BF16) rows, their I64 token "
               "indices and "
               "expert offsets, " +
               std::string(dispatch ? "their F32 gates, " : "") +
               "and the rank input");
  int64_t experts = offsets.shape[0] - 1;
  if (experts % groups != 0)
    return bad("divides " + std::to_string(experts) + " experts into " +
               std::to_string(groups) + " groups");
  if (!dispatch) {
    const Value &outputs = value(l.args[0]);
    const Value &result = value(l.results[0]);
    if (!outputs.received || !rowsOf(outputs, DType::F32) ||
        outputs.shape[1] != rows.shape[1] || result.received ||
        !rowsOf(result, DType::F32) || result.shape != rows.shape)
      bad("needs the received pairs' F32 outputs of the rows' width and a "
          "result shaped like the rows");
    return;
  }
  const Value &got = value(l.results[0]);
  const Value &pairs = value(l.results[1]);
  const Value &gotOffsets = value(l.results[2]);
  const Value &gates = value(l.results[3]);
  if (!got.received || !rowsOf(got, rowType) || got.shape != rows.shape ||
      !pairs.received || !listOf(pairs, DType::I64) ||
      gotOffsets.dtype != DType::I64 ||
      gotOffsets.shape != std::vector<int64_t>{experts / groups + 1} ||
      !gates.received || !listOf(gates, DType::F32))
    bad("needs received rows like the sent ones, received I64 pair indices "
        "and F32 gates, and I64 offsets of the group's " +
        std::to_string(experts / groups) + " experts");
}

} // namespace

const char *kiln::plan::dtypeName(DType dtype) {
  for (const auto &d : kDTypes)
    if (d.dtype == dtype)
      return d.name;
  return "?";
}

bool kiln::plan::parseDType(const std::string &name, DType &out) {
  for (const auto &d : kDTypes)
    if (name == d.name) {
      out = d.dtype;
      return true;
    }
  return false;
}

const char *kiln::plan::paramKindName(GpuParam::Kind kind) {
  for (const auto &k : kParamKinds)
    if (k.kind == kind)
      return k.name;
  return "?";
}

bool kiln::plan::parseParamKind(const std::string &name, GpuParam::Kind &out) {
  for (const auto &k : kParamKinds)
    if (name == k.name) {
      out = k.kind;
      return true;
    }
  return false;
}

size_t kiln::plan::elementSize(DType dtype) {
  for (const auto &d : kDTypes)
    if (d.dtype == dtype)
      return d.bytes;
  return 0;
}

std::string kiln::plan::writePlan(const Plan &plan) {
  std::string out;
  {
    ObjectWriter o(out);
    if (plan.tensorParallel > 1)
      o.integer("tensor_parallel", plan.tensorParallel);
    if (plan.pipelineStages > 1)
      o.integer("pipeline_stages", plan.pipelineStages);
    if (plan.attentionReplicas > 1)
      o.integer("attention_replicas", plan.attentionReplicas);
    writeArray(o.key("values"), plan.values, [&](const Value &v) {
      ObjectWriter e(out);
      e.integer("id", &v - plan.values.data());
      e.string("kind", valueKindName(v.kind));
      switch (v.kind) {
      case ValueKind::Input:
        e.string("input", v.input);
        break;
      case ValueKind::Weight:
        e.string("name", v.name);
        if (v.panel > 0)
          e.integer("panel", v.panel);
        if (!v.shards.empty()) {
          std::vector<int64_t> flat;
          for (const Shard &sh : v.shards)
            flat.insert(flat.end(), {sh.dim, sh.parts, sh.groups, sh.stride});
          e.integers("shard", flat);
        }
        break;
      case ValueKind::Concat:
        e.integers("of", v.of);
        e.integer("axis", v.axis);
        break;
      case ValueKind::Buffer:
        if (v.isDynamic())
          e.integer("rows_per_token", v.rowsPerToken);
        if (v.arenaOffset >= 0)
          e.integer("arena_offset", v.arenaOffset);
        if (v.gathered)
          e.integer("gathered", 1);
        if (v.received)
          e.integer("received", 1);
        break;
      }
      if (v.stage >= 0)
        e.integer("stage", v.stage);
      e.string("dtype", dtypeName(v.dtype));
      e.integers("shape", v.shape);
    });
    o.integer("arena_bytes_per_token", plan.arenaBytesPerToken);
    writeArray(o.key("launches"), plan.launches, [&](const Launch &l) {
      ObjectWriter e(out);
      if (l.kind == LaunchKind::AllReduce)
        e.string("collective", "all_reduce");
      else if (l.kind == LaunchKind::StageSend)
        e.string("collective", "stage_send");
      else if (l.kind == LaunchKind::StageBroadcast)
        e.string("collective", "stage_broadcast");
      else if (l.kind == LaunchKind::AllGather)
        e.string("collective", "all_gather");
      else if (l.kind == LaunchKind::ReduceScatter)
        e.string("collective", "reduce_scatter");
      else if (l.kind == LaunchKind::GatherPartials)
        e.string("collective", "gather_partials");
      else if (l.kind == LaunchKind::TokenDispatch)
        e.string("collective", "token_dispatch");
      else if (l.kind == LaunchKind::TokenCombine)
        e.string("collective", "token_combine");
      else
        e.string("kernel", l.kernel);
      if (l.stage >= 0)
        e.integer("stage", l.stage);
      if (l.maxRows >= 0)
        e.integer("max_rows", l.maxRows);
      if (l.expertGroups > 0)
        e.integer("expert_groups", l.expertGroups);
      e.integers("args", l.args);
      e.integers("results", l.results);
      writeArray(e.key("attention"), l.attention, [&](const AttentionUse &a) {
        ObjectWriter u(out);
        u.integer("key_arg", a.keyArg);
        u.integer("value_arg", a.valueArg);
        u.integer("slot", a.slot);
      });
      if (!l.gpu.empty())
        writeArray(e.key("gpu"), l.gpu, [&](const GpuStep &step) {
          writeArray(out, step.variants,
                     [&](const GpuLaunch &g) { writeGpuLaunch(out, g); });
        });
    });
    writeArray(o.key("kv_slots"), plan.slots, [&](const Slot &s) {
      ObjectWriter e(out);
      e.integer("width", s.width);
      e.integer("chunk", s.chunk);
    });
    o.integer("logits", plan.logits);
    if (!plan.eosTokenIds.empty())
      o.integers("eos_token_ids", plan.eosTokenIds);
    if (plan.maxPositions > 0)
      o.integer("max_positions", plan.maxPositions);
    if (!plan.hostCpu.empty())
      o.string("host_cpu", plan.hostCpu);
    for (auto [key, fn] : {std::pair{"argmax", &plan.argmax},
                           std::pair{"sample", &plan.sample}}) {
      if (fn->function.empty())
        continue;
      o.key(key);
      ObjectWriter e(out);
      e.string("function", fn->function);
      e.integer("block", fn->blockThreads);
    }
  } // the object closes here, before `out` is returned
  return out;
}

bool kiln::plan::readPlan(const std::string &text, const std::string &path,
                          Plan &plan, std::string &error) {
  plan = Plan();
  json::Value root;
  std::string jsonError;
  if (!json::parse(text, root, jsonError)) {
    error = path + ": malformed plan: " + jsonError;
    return false;
  }
  std::string problem;
  FieldReader top(root, "", problem);
  auto finish = [&]() {
    if (problem.empty())
      return true;
    error = path + ": malformed plan: " + problem;
    return false;
  };

  plan.tensorParallel = top.integer("tensor_parallel", 1);
  top.inRange("tensor_parallel", plan.tensorParallel, 1, int64_t(1) << 20);
  plan.pipelineStages = top.integer("pipeline_stages", 1);
  top.inRange("pipeline_stages", plan.pipelineStages, 1, int64_t(1) << 12);
  plan.attentionReplicas = top.integer("attention_replicas", 1);
  top.inRange("attention_replicas", plan.attentionReplicas, 1,
              plan.tensorParallel + 1);
  if (problem.empty() && plan.tensorParallel % plan.attentionReplicas != 0)
    top.fail("attention_replicas " + std::to_string(plan.attentionReplicas) +
             " does not divide tensor_parallel " +
             std::to_string(plan.tensorParallel));
  const std::vector<json::Value> *values = top.list("values", true);
  for (size_t i = 0; values && i < values->size() && problem.empty(); ++i) {
    FieldReader r((*values)[i], "value " + std::to_string(i), problem);
    Value v;
    std::string kind = r.string("kind", true);
    bool known = false;
    for (const auto &k : kValueKinds)
      if (kind == k.name) {
        v.kind = k.kind;
        known = true;
      }
    if (r.ok() && !known)
      r.fail("unknown kind '" + kind + "'");
    v.stage = r.integer("stage", -1);
    r.inRange("stage", v.stage, -1,
              plan.pipelineStages > 1 ? plan.pipelineStages : 0);
    std::string dtype = r.string("dtype", true);
    if (r.ok() && !parseDType(dtype, v.dtype))
      r.fail("unknown dtype '" + dtype + "'");
    v.shape = r.integers("shape", true);
    if (r.ok() && v.shape.empty())
      r.fail("empty shape");
    for (size_t d = 0; d < v.shape.size() && r.ok(); ++d)
      if (v.shape[d] <= 0 && !(d == 0 && v.shape[d] == -1))
        r.fail("extent " + std::to_string(v.shape[d]) + " in its shape");
    // No tensor of a model is 2^44 elements (16 TB of bf16): a larger shape
    // is an edit, and its sizes would overflow where they are multiplied.
    constexpr uint64_t kMaxElements = uint64_t(1) << 44;
    uint64_t elements = 1;
    for (size_t d = 0; d < v.shape.size() && r.ok(); ++d) {
      uint64_t extent = v.shape[d] < 0 ? 1 : static_cast<uint64_t>(v.shape[d]);
      if (extent > kMaxElements / elements)
        r.fail("its shape holds more than 2^44 elements");
      else
        elements *= extent;
    }
    switch (v.kind) {
    case ValueKind::Input:
      v.input = r.string("input", true);
      if (r.ok() && v.input != "tokens" && v.input != "positions" &&
          v.input != "rank")
        r.fail("unknown input '" + v.input + "'");
      if (r.ok() && v.input == "rank" &&
          (v.shape != std::vector<int64_t>{1} || v.dtype != DType::I64))
        r.fail("the rank input is not i64 [1]");
      break;
    case ValueKind::Weight:
      v.name = r.string("name", true);
      if (r.ok() && v.isDynamic())
        r.fail("a weight with a dynamic extent");
      v.panel = r.integer("panel", 0);
      r.inRange("panel", v.panel, 0, 1 << 16);
      if (r.ok() && v.panel > 0 &&
          (v.shape.size() < 2 || v.shape.back() % v.panel != 0))
        r.fail("panel " + std::to_string(v.panel) +
               " does not divide the last extent of a weight of rank 2 or "
               "more");
      if (std::vector<int64_t> shard = r.integers("shard"); !shard.empty()) {
        if (plan.tensorParallel < 2)
          r.fail("a sharded weight in an engine of one rank");
        else if (shard.size() % 4 != 0 || shard.size() > 8)
          r.fail("shard is not one or two [dim, parts, groups, stride]");
        for (size_t k = 0; k + 3 < shard.size() && r.ok(); k += 4) {
          Shard sh{shard[k], shard[k + 1], shard[k + 2], shard[k + 3]};
          r.inRange("shard dim", sh.dim, 0,
                    static_cast<int64_t>(v.shape.size()));
          r.inRange("shard parts", sh.parts, 1, plan.tensorParallel + 1);
          r.inRange("shard groups", sh.groups, 1, int64_t(1) << 20);
          r.inRange("shard stride", sh.stride, 0, plan.tensorParallel);
          if (r.ok() && v.shape[sh.dim] % sh.groups != 0)
            r.fail("shard groups do not divide its extent");
          for (const Shard &other : v.shards)
            if (r.ok() && other.dim == sh.dim)
              r.fail("two shards along one dimension");
          v.shards.push_back(sh);
        }
      }
      break;
    case ValueKind::Concat:
      v.of = r.integers("of", true);
      v.axis = r.integer("axis", 0);
      for (int64_t part : v.of)
        r.inRange("concat input", part, 0, int64_t(i));
      break;
    case ValueKind::Buffer:
      v.rowsPerToken = r.integer("rows_per_token", 1);
      r.inRange("rows_per_token", v.rowsPerToken, 1, 1 << 16);
      v.arenaOffset = r.integer("arena_offset", -1);
      v.gathered = r.integer("gathered", 0) != 0;
      if (r.ok() && v.gathered &&
          (plan.attentionReplicas < 2 || !v.isDynamic() || v.arenaOffset >= 0))
        r.fail("a gathered value needs attention replicas, a dynamic first "
               "extent and storage of its own");
      v.received = r.integer("received", 0) != 0;
      if (r.ok() && v.received &&
          (plan.attentionReplicas < 2 || !v.isDynamic() || v.arenaOffset >= 0 ||
           v.gathered || v.rowsPerToken != 1))
        r.fail("a received value needs attention replicas, a dynamic first "
               "extent of a row per pair and storage of its own");
      break;
    }
    plan.values.push_back(std::move(v));
  }
  int64_t valueCount = static_cast<int64_t>(plan.values.size());
  plan.arenaBytesPerToken = top.integer("arena_bytes_per_token", 0);
  top.inRange("arena_bytes_per_token", plan.arenaBytesPerToken, 0,
              int64_t(1) << 40);
  for (size_t i = 0; i < plan.values.size() && problem.empty(); ++i) {
    const Value &v = plan.values[i];
    if (v.arenaOffset >= 0 &&
        v.arenaOffset + static_cast<int64_t>(rowBytes(v)) * v.rowsPerToken >
            plan.arenaBytesPerToken)
      top.fail("value " + std::to_string(i) +
               " runs past the arena (arena_offset " +
               std::to_string(v.arenaOffset) + ")");
  }

  const std::vector<json::Value> *launches = top.list("launches", true);
  for (size_t i = 0; launches && i < launches->size() && problem.empty(); ++i) {
    FieldReader r((*launches)[i], "launch " + std::to_string(i), problem);
    Launch l;
    std::string collective = r.string("collective", false);
    if (collective.empty())
      l.kernel = r.string("kernel", true);
    else if (collective == "all_reduce")
      l.kind = LaunchKind::AllReduce;
    else if (collective == "stage_send")
      l.kind = LaunchKind::StageSend;
    else if (collective == "stage_broadcast")
      l.kind = LaunchKind::StageBroadcast;
    else if (collective == "all_gather")
      l.kind = LaunchKind::AllGather;
    else if (collective == "reduce_scatter")
      l.kind = LaunchKind::ReduceScatter;
    else if (collective == "gather_partials")
      l.kind = LaunchKind::GatherPartials;
    else if (collective == "token_dispatch")
      l.kind = LaunchKind::TokenDispatch;
    else if (collective == "token_combine")
      l.kind = LaunchKind::TokenCombine;
    else
      r.fail("unknown collective '" + collective + "'");
    l.stage = r.integer("stage", -1);
    r.inRange("stage", l.stage, plan.pipelineStages > 1 ? 0 : -1,
              plan.pipelineStages > 1 ? plan.pipelineStages : 0);
    l.args = r.integers("args", true);
    l.results = r.integers("results", true);
    for (int64_t id : l.args)
      r.inRange("argument", id, 0, valueCount);
    for (int64_t id : l.results) {
      r.inRange("result", id, 0, valueCount);
      if (r.ok() && plan.values[id].kind != ValueKind::Buffer)
        r.fail("result " + std::to_string(id) + " is not a buffer");
    }
    if (r.ok() && (l.kind == LaunchKind::StageSend ||
                   l.kind == LaunchKind::StageBroadcast)) {
      bool send = l.kind == LaunchKind::StageSend;
      if (plan.pipelineStages < 2)
        r.fail("a " + collective + " in an engine of one stage");
      else if (send && l.stage + 1 >= plan.pipelineStages)
        r.fail("a stage_send from the last stage");
      else if (l.args.size() != 1 || l.results.size() != 1 ||
               plan.values[l.args[0]].dtype != DType::F32 ||
               plan.values[l.args[0]].shape !=
                   plan.values[l.results[0]].shape ||
               (!send && l.args[0] != l.results[0]))
        r.fail("a " + collective +
               " needs one F32 argument and one result of its shape (the "
               "same value for a broadcast)");
    }
    if (r.ok() && l.kind == LaunchKind::AllReduce) {
      if (plan.tensorParallel < 2)
        r.fail("an all_reduce in an engine of one rank");
      else if (l.args.size() != 1 || l.results.size() != 1 ||
               plan.values[l.args[0]].dtype != DType::F32 ||
               plan.values[l.args[0]].shape !=
                   plan.values[l.results[0]].shape ||
               plan.values[l.results[0]].dtype != DType::F32)
        r.fail("an all_reduce needs one F32 argument and one result of its "
               "shape");
    }
    l.maxRows = r.integer("max_rows", -1);
    r.inRange("max_rows", l.maxRows, -1, int64_t(1) << 40);
    if (r.ok() && l.kind == LaunchKind::GatherPartials) {
      int64_t ranks = plan.replicaRanks();
      if (r.ok() && ranks < 2)
        r.fail("a gather_partials in an engine of one rank per replica");
      else if (r.ok() && (l.args.size() != 1 || l.results.size() != 1))
        r.fail("a gather_partials needs one argument and one result");
      else if (r.ok()) {
        const Value &in = plan.values[l.args[0]];
        const Value &out = plan.values[l.results[0]];
        if (in.dtype != DType::F32 || out.dtype != DType::F32 ||
            in.shape.size() != 2 || in.shape != out.shape || !in.isDynamic() ||
            in.rowsPerToken != 1 || out.rowsPerToken != ranks || in.gathered ||
            out.gathered)
          r.fail("a gather_partials needs a 2-D F32 argument of a row per "
                 "token and an F32 result of its shape with a row per token "
                 "and rank (" +
                 std::to_string(ranks) + ")");
      }
    } else if (r.ok() && l.maxRows >= 0) {
      r.fail("max_rows on a launch that is not a gather_partials");
    }
    l.expertGroups = r.integer("expert_groups", 0);
    bool tokenExchange = l.kind == LaunchKind::TokenDispatch ||
                         l.kind == LaunchKind::TokenCombine;
    if (r.ok() && !tokenExchange && l.expertGroups != 0)
      r.fail("expert_groups on a launch that is not a token exchange");
    if (r.ok() && tokenExchange)
      checkTokenExchange(plan, l, collective, r);
    // A token exchange's GPU code (sm_90a engines): its row gather-sum.
    if (r.ok() && tokenExchange) {
      const std::vector<json::Value> *steps = r.list("gpu", false);
      if (steps && (steps->size() != 1 || !(*steps)[0].isArray() ||
                    (*steps)[0].array.size() != 1))
        r.fail("a " + collective +
               " has one GPU step of one variant (its row gather-sum)");
    }
    if (r.ok() && (l.kind == LaunchKind::AllGather ||
                   l.kind == LaunchKind::ReduceScatter)) {
      // The gather's result holds every replica's rows, the scatter's
      // argument too; the other side holds this rank's replica's.
      bool gather = l.kind == LaunchKind::AllGather;
      if (plan.attentionReplicas < 2)
        r.fail("a " + collective + " in an engine without attention replicas");
      else if (l.args.size() != 1 || l.results.size() != 1)
        r.fail("a " + collective + " needs one argument and one result");
      else {
        const Value &in = plan.values[l.args[0]];
        const Value &out = plan.values[l.results[0]];
        const Value &all = gather ? out : in, &mine = gather ? in : out;
        // A gather moves rows as stored (bf16 on GPUs); a scatter sums f32.
        bool typed =
            gather ? (in.dtype == DType::F32 || in.dtype == DType::BF16) &&
                         in.dtype == out.dtype
                   : in.dtype == DType::F32 && out.dtype == DType::F32;
        if (!typed || in.shape.size() != 2 || in.shape != out.shape ||
            !in.isDynamic() || in.rowsPerToken != 1 || out.rowsPerToken != 1 ||
            !all.gathered || mine.gathered)
          r.fail("a " + collective +
                 " needs a 2-D argument and result of one shape and type "
                 "(F32, or BF16 for a gather), with a row per token, the "
                 "gathered one marked so");
      }
    }
    if (const std::vector<json::Value> *uses = r.list("attention", false))
      for (size_t a = 0; a < uses->size() && r.ok(); ++a) {
        FieldReader u((*uses)[a],
                      "launch " + std::to_string(i) + " attention " +
                          std::to_string(a),
                      problem);
        AttentionUse use;
        use.keyArg = u.integer("key_arg", 0, true);
        use.valueArg = u.integer("value_arg", 0, true);
        use.slot = u.integer("slot", 0, true);
        u.inRange("key_arg", use.keyArg, 0, int64_t(l.args.size()));
        u.inRange("value_arg", use.valueArg, 0, int64_t(l.args.size()));
        l.attention.push_back(use);
      }
    if (const std::vector<json::Value> *steps = r.list("gpu", false))
      for (size_t s = 0; s < steps->size() && r.ok(); ++s) {
        const json::Value &step = (*steps)[s];
        std::string what = "launch " + std::to_string(i) + " (" + l.kernel +
                           ") gpu step " + std::to_string(s);
        if (!step.isArray() || step.array.empty()) {
          r.fail("(" + l.kernel + ") gpu step " + std::to_string(s) +
                 " is not a non-empty list");
          break;
        }
        GpuStep gpuStep;
        for (const json::Value &variant : step.array) {
          GpuLaunch g;
          readGpuLaunch(variant, what, l.operandCount(), g, problem);
          gpuStep.variants.push_back(std::move(g));
        }
        l.gpu.push_back(std::move(gpuStep));
      }
    plan.launches.push_back(std::move(l));
  }

  if (const std::vector<json::Value> *slots = top.list("kv_slots", false))
    for (size_t i = 0; i < slots->size() && problem.empty(); ++i) {
      FieldReader r((*slots)[i], "kv slot " + std::to_string(i), problem);
      Slot slot;
      slot.width = r.integer("width", 0, true);
      r.inRange("width", slot.width, 1, int64_t(1) << 24);
      slot.chunk = r.integer("chunk", 0);
      r.inRange("chunk", slot.chunk, 0, int64_t(1) << 40);
      plan.slots.push_back(slot);
    }
  for (size_t i = 0; i < plan.launches.size() && problem.empty(); ++i)
    for (const AttentionUse &a : plan.launches[i].attention)
      top.inRange(("launch " + std::to_string(i) + " attention slot").c_str(),
                  a.slot, 0, int64_t(plan.slots.size()));

  plan.logits = top.integer("logits", -1, true);
  top.inRange("logits", plan.logits, 0, valueCount);
  if (problem.empty() && (plan.values[plan.logits].dtype != DType::F32 ||
                          plan.values[plan.logits].shape.size() != 2))
    top.fail("the logits value is not a 2-D F32 buffer");
  plan.eosTokenIds = top.integers("eos_token_ids");
  plan.maxPositions = top.integer("max_positions", 0);
  top.inRange("max_positions", plan.maxPositions, 0, int64_t(1) << 40);
  plan.hostCpu = top.string("host_cpu");
  if (!plan.hostCpu.empty() && plan.hostCpu != "x86-64-v2" &&
      plan.hostCpu != "x86-64-v3" && plan.hostCpu != "x86-64-v4")
    top.fail("unknown host_cpu '" + plan.hostCpu +
             "' (known: x86-64-v2, x86-64-v3, x86-64-v4)");
  for (auto [key, fn] :
       {std::pair{"argmax", &plan.argmax}, std::pair{"sample", &plan.sample}}) {
    const json::Value *entry = root.isObject() ? root.find(key) : nullptr;
    if (!entry || !problem.empty())
      continue;
    FieldReader r(*entry, key, problem);
    fn->function = r.string("function", true);
    fn->blockThreads = r.integer("block", 0, true);
    r.inRange("block", fn->blockThreads, 1, 1025);
  }
  return finish();
}

static void sliceOne(const kiln::plan::Shard &shard,
                     const std::vector<int64_t> &full, size_t elementBytes,
                     const uint8_t *bytes, int64_t rank, int64_t ranks,
                     std::vector<uint8_t> &out) {
  // Dimension `dim` viewed as [groups, parts, block]: the rank's block of
  // every group.
  int64_t dim = shard.dim, groups = shard.groups, extent = full[dim];
  int64_t part = shard.partOf(rank, ranks);
  int64_t block = extent / shard.parts / groups;
  int64_t outer = 1;
  size_t inner = elementBytes;
  for (int64_t d = 0; d < dim; ++d)
    outer *= full[d];
  for (size_t d = dim + 1; d < full.size(); ++d)
    inner *= static_cast<size_t>(full[d]);
  out.clear();
  out.reserve(static_cast<size_t>(outer * groups * block) * inner);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t g = 0; g < groups; ++g) {
      int64_t from = o * extent + g * (extent / groups) + part * block;
      const uint8_t *first = bytes + static_cast<size_t>(from) * inner;
      out.insert(out.end(), first, first + static_cast<size_t>(block) * inner);
    }
}

void kiln::plan::packPanels(const std::vector<int64_t> &shape,
                            size_t elementBytes, const void *data,
                            int64_t panel, std::vector<uint8_t> &out) {
  size_t bytes = elementBytes;
  for (int64_t d : shape)
    bytes *= static_cast<size_t>(d);
  out.resize(bytes);
  packPanels(shape, elementBytes, data, panel, out.data());
}

void kiln::plan::packPanels(const std::vector<int64_t> &shape,
                            size_t elementBytes, const void *data,
                            int64_t panel, uint8_t *out) {
  size_t rank = shape.size();
  size_t k = static_cast<size_t>(shape[rank - 2]);
  size_t n = static_cast<size_t>(shape[rank - 1]);
  size_t batch = 1;
  for (size_t d = 0; d + 2 < rank; ++d)
    batch *= static_cast<size_t>(shape[d]);
  size_t p = static_cast<size_t>(panel), rowBytes = p * elementBytes;
  const uint8_t *from = static_cast<const uint8_t *>(data);
  uint8_t *to = out;
  for (size_t b = 0; b < batch; ++b)
    for (size_t j = 0; j < n / p; ++j)
      for (size_t i = 0; i < k; ++i, to += rowBytes)
        std::memcpy(to, from + ((b * k + i) * n + j * p) * elementBytes,
                    rowBytes);
}

void kiln::plan::sliceShards(const std::vector<Shard> &shards,
                             const std::vector<int64_t> &full,
                             size_t elementBytes, const void *data,
                             int64_t rank, int64_t ranks,
                             std::vector<uint8_t> &out) {
  std::vector<int64_t> shape = full;
  const uint8_t *from = static_cast<const uint8_t *>(data);
  std::vector<uint8_t> step;
  for (size_t k = 0; k < shards.size(); ++k) {
    std::vector<uint8_t> &into = k + 1 == shards.size() ? out : step;
    std::vector<uint8_t> source;
    if (k > 0)
      source.swap(step);
    sliceOne(shards[k], shape, elementBytes, k > 0 ? source.data() : from, rank,
             ranks, into);
    shape[shards[k].dim] /= shards[k].parts;
  }
}

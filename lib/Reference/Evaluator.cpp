//===- Evaluator.cpp - Reference evaluator of kiln graphs
//------------------===//
//
// Interprets the body of a kiln function op by op with the kernels of
// Kernels.cpp. Values live in dense row-major buffers of the evaluation type
// and are released after their last use.
//
//===----------------------------------------------------------------------===//

#include "kiln/Reference/Evaluator.h"
#include "dialects/kiln/KilnOps.h"
#include "kiln/Reference/Kernels.h"
#include "kiln/runtime/EnginePlan.h"
#include "kiln/runtime/Safetensors.h"

#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/TypeSwitch.h"
#include "llvm/Support/FormatVariadic.h"

#include <cstring>
#include <map>

using namespace mlir;
using ::kiln::Checkpoint;
using ::kiln::TensorInfo;
using ::kiln::ref::Evaluator;
using ::kiln::ref::Precision;

Evaluator::~Evaluator() = default;

static llvm::Error makeError(const llvm::Twine &message) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(), message);
}

llvm::Error
Evaluator::runReplicas(llvm::ArrayRef<std::vector<int64_t>> tokens,
                       llvm::ArrayRef<std::vector<int64_t>> positions,
                       std::vector<std::vector<double>> &results,
                       int64_t &width) {
  if (tokens.size() != 1 || positions.size() != 1)
    return makeError(llvm::formatv("the graph has one replica, but {0} "
                                   "sequences were given",
                                   tokens.size()));
  results.resize(1);
  return run(tokens[0], positions[0], results[0], width);
}

static std::string locString(Location loc) {
  std::string s;
  llvm::raw_string_ostream os(s);
  loc.print(os);
  return s;
}

/// The first expert an expert-parallel block of `groups` groups over
/// `ranks` ranks holds on the rank in `rank` ({rank}), `local` experts per
/// group: group rank * groups / ranks.
static int64_t firstExpertOf(const std::vector<int64_t> &rank, int64_t groups,
                             int64_t ranks, int64_t local) {
  return rank.at(0) * groups / ranks * local;
}

static llvm::Error opError(Operation *op, const llvm::Twine &message) {
  return makeError(locString(op->getLoc()) + ": '" +
                   op->getName().getStringRef() + "': " + message);
}

static const char *storageName(Type type) {
  if (type.isF32())
    return "F32";
  if (type.isF16())
    return "F16";
  if (type.isBF16())
    return "BF16";
  return "?";
}

namespace {

template <typename T> struct Buffer {
  std::vector<int64_t> shape;
  std::vector<T> data;
  int64_t rows() const { return shape.empty() ? 1 : shape[0]; }
  int64_t cols() const { return shape.size() < 2 ? 1 : shape[1]; }
};

template <typename T> struct KvState {
  std::vector<T> key, value;
  std::vector<int64_t> positions;
};

template <typename T> class EvaluatorImpl final : public Evaluator {
public:
  explicit EvaluatorImpl(func::FuncOp func, int64_t rank = 0, int64_t ranks = 1)
      : func(func), rank(rank), ranks(ranks) {}

  /// The evaluators of every rank of a tensor-parallel graph, this one
  /// included, in rank order: kiln.all_reduce sums over them.
  void setGroup(llvm::ArrayRef<EvaluatorImpl *> peers) {
    group.assign(peers.begin(), peers.end());
  }
  /// Every rank of a graph with data-parallel attention, in rank order, and
  /// this rank's place: kiln.all_gather and kiln.reduce_scatter exchange
  /// rows between the replicas (`replicaRanks` consecutive ranks each).
  void setWorld(llvm::ArrayRef<EvaluatorImpl *> ranks, int64_t worldRank,
                int64_t replicaRanks) {
    world.assign(ranks.begin(), ranks.end());
    this->worldRank = worldRank;
    this->replicaRanks = replicaRanks;
  }
  /// Evaluation in steps, so that the ranks of a tensor-parallel graph can
  /// go op by op together: begin, then step and releaseAfter for each op
  /// up to the return, then finish.
  llvm::Error begin(llvm::ArrayRef<int64_t> tokens,
                    llvm::ArrayRef<int64_t> positions, bool allowEmpty = false);
  llvm::Error step(Operation *op) { return evaluate(op); }
  void releaseAfter(Operation *op) {
    for (Value v : dying.lookup(op))
      release(v);
  }
  void finish(func::ReturnOp ret, std::vector<double> *result, int64_t *width,
              int64_t tokens);
  void abandon() {
    values.clear();
    intValues.clear();
  }
  /// Pipeline transfers, done by the multi-rank evaluator: `v` as this
  /// rank holds it, and `v` set to a copy of another rank's buffer.
  const Buffer<T> &valueOf(Value v) { return get(v); }
  void receive(Value v, const Buffer<T> &from) {
    values[v.getAsOpaquePointer()] = from;
  }

  llvm::Error bindWeights(const Checkpoint &checkpoint);
  llvm::Expected<std::vector<::kiln::ref::KernelValue>>
  runKernel(llvm::ArrayRef<::kiln::ref::KernelValue> args);
  llvm::Error run(llvm::ArrayRef<int64_t> tokens,
                  llvm::ArrayRef<int64_t> positions,
                  std::vector<double> &result, int64_t &width) override;
  void reset() override {
    kvStates.clear();
    cached = 0;
  }
  int64_t numCachedTokens() const override { return cached; }

private:
  const Buffer<T> &get(Value v) {
    auto alias = aliases.find(v.getAsOpaquePointer());
    if (alias != aliases.end())
      return *alias->second;
    auto it = weights.find(v);
    if (it != weights.end())
      return it->second;
    return values.find(v.getAsOpaquePointer())->second;
  }
  /// The function input (tokens or positions) an index value stands for.
  Value resolveIndex(Value v) const {
    auto it = indexAliases.find(v.getAsOpaquePointer());
    return it == indexAliases.end() ? v : it->second;
  }
  const std::vector<int64_t> &indexValues(Value v) {
    v = resolveIndex(v);
    if (v == tokensArg)
      return currentTokens;
    if (v == positionsArg)
      return currentPositions;
    if (v == rankArg)
      return rankValue;
    return intValues.find(v.getAsOpaquePointer())->second;
  }
  void release(Value v) {
    values.erase(v.getAsOpaquePointer());
    intValues.erase(v.getAsOpaquePointer());
  }
  llvm::Error evaluate(Operation *op);
  llvm::Error evaluateCall(func::CallOp call);
  /// The expert of pair `pair` of a router's results.
  static int64_t expertOfPair(const std::vector<int64_t> &offsets,
                              int64_t pair) {
    return static_cast<int64_t>(
               std::upper_bound(offsets.begin(), offsets.end(), pair) -
               offsets.begin()) -
           1;
  }
  /// The (sender, pair) list rank `receiver` gets from a
  /// kiln.token_dispatch of `input` routed by `indices` / `offsets` (all
  /// experts) in `groups` expert groups: pairs of the experts of the
  /// receiver's group whose token lies in the sender's piece of its
  /// replica's rows, by expert, then sender, then the sender's order.
  std::vector<std::pair<int64_t, int64_t>>
  receivedPairs(int64_t receiver, Value input, Value indices, Value offsets,
                int64_t groups) {
    int64_t ranksPerGroup = static_cast<int64_t>(world.size()) / groups;
    int64_t experts =
        cast<RankedTensorType>(offsets.getType()).getDimSize(0) - 1;
    int64_t local = experts / groups, group = receiver / ranksPerGroup;
    std::vector<std::pair<int64_t, int64_t>> pairs;
    for (int64_t e = group * local; e < (group + 1) * local; ++e)
      for (size_t s = 0; s < world.size(); ++s) {
        EvaluatorImpl *from = world[s];
        int64_t rows = from->get(input).rows();
        int64_t piece = static_cast<int64_t>(s) % replicaRanks;
        int64_t begin = rows * piece / replicaRanks,
                end = rows * (piece + 1) / replicaRanks;
        const std::vector<int64_t> &idx = from->indexValues(indices);
        const std::vector<int64_t> &off = from->indexValues(offsets);
        for (int64_t p = off[e]; p < off[e + 1]; ++p)
          if (idx[p] >= begin && idx[p] < end)
            pairs.push_back({static_cast<int64_t>(s), p});
      }
    return pairs;
  }
  Buffer<T> sliceForRank(const Buffer<T> &full,
                         llvm::ArrayRef<mlir::kiln::ShardAttr> shards,
                         llvm::ArrayRef<int64_t> local) const;

  func::FuncOp func;
  int64_t rank, ranks;
  std::vector<EvaluatorImpl *> group;
  std::vector<EvaluatorImpl *> world;
  int64_t worldRank = 0, replicaRanks = 1;
  llvm::DenseMap<Value, Buffer<T>> weights;
  /// Intermediate values. A node-based map: kernels hold references to
  /// their operands while their result is inserted.
  std::map<void *, Buffer<T>> values;
  /// Intermediate index tensors (MoE dispatch).
  std::map<void *, std::vector<int64_t>> intValues;
  Value tokensArg, positionsArg, rankArg;
  /// What the `kiln.input = "rank"` argument holds: {rank}.
  std::vector<int64_t> rankValue;
  /// The values each op of the graph reads for the last time, released
  /// after it (computed once, in bindWeights).
  llvm::DenseMap<Operation *, llvm::SmallVector<Value>> dying;
  std::vector<int64_t> currentTokens, currentPositions;
  /// Kernel arguments bound to the caller's buffers during a call.
  std::map<void *, const Buffer<T> *> aliases;
  std::map<void *, Value> indexAliases;
  /// The call being evaluated: a kernel shared by several layers is called
  /// once per layer, and each call site has its own KV state.
  Operation *currentCall = nullptr;
  std::map<std::pair<Operation *, Operation *>, KvState<T>> kvStates;
  int64_t cached = 0;
};

} // namespace

template <typename T>
llvm::Error EvaluatorImpl<T>::bindWeights(const Checkpoint &checkpoint) {
  Block &body = func.getBody().front();
  for (BlockArgument arg : body.getArguments()) {
    unsigned i = arg.getArgNumber();
    auto type = dyn_cast<RankedTensorType>(arg.getType());
    if (auto input = func.getArgAttrOfType<StringAttr>(
            i, mlir::kiln::KilnDialect::getInputAttrName())) {
      if (input.getValue() == "rank") {
        rankArg = arg;
        rankValue = {rank};
        continue;
      }
      (input.getValue() == "tokens" ? tokensArg : positionsArg) = arg;
      continue;
    }
    auto name = func.getArgAttrOfType<StringAttr>(
        i, mlir::kiln::KilnDialect::getWeightAttrName());
    if (!name)
      return makeError(llvm::formatv(
          "@{0}: argument {1} has neither 'kiln.weight' nor 'kiln.input'",
          func.getName(), i));
    const TensorInfo *info = checkpoint.find(name.getValue().str());
    if (!info)
      return makeError(llvm::formatv("{0}: missing tensor '{1}' bound to "
                                     "argument {2} of @{3}",
                                     checkpoint.locationOf(name.str()),
                                     name.getValue(), i, func.getName()));
    // A rank of a tensor-parallel graph binds its slice of the tensor.
    llvm::SmallVector<mlir::kiln::ShardAttr> shards =
        mlir::kiln::weightShardsOf(func, i);
    llvm::SmallVector<int64_t> fullShape(type.getShape());
    for (mlir::kiln::ShardAttr shard : shards)
      fullShape[shard.getDim()] *= shard.getParts();
    if (llvm::ArrayRef<int64_t>(info->shape) != llvm::ArrayRef(fullShape)) {
      std::string expected;
      llvm::raw_string_ostream os(expected);
      os << type;
      if (!shards.empty()) {
        os << ", a rank's slice of [";
        llvm::interleaveComma(fullShape, os);
        os << "]";
      }
      return makeError(llvm::formatv(
          "{0}: tensor '{1}' has shape {2} but argument {3} is {4}",
          info->file->path(), name.getValue(), info->shapeString(), i,
          expected));
    }
    if (std::string(::kiln::dtypeName(info->dtype)) !=
        storageName(type.getElementType()))
      return makeError(llvm::formatv(
          "{0}: tensor '{1}' is stored as {2} but argument {3} expects {4}",
          info->file->path(), name.getValue(), ::kiln::dtypeName(info->dtype),
          i, storageName(type.getElementType())));
    Buffer<T> buffer;
    buffer.shape = info->shape;
    std::string error;
    if (!::kiln::readAsFloat(*info, buffer.data, error))
      return makeError(error);
    if (!shards.empty())
      buffer = sliceForRank(buffer, shards, type.getShape());
    weights[arg] = std::move(buffer);
  }
  llvm::DenseMap<Value, Operation *> lastUse;
  for (Operation &op : body)
    for (Value operand : op.getOperands())
      lastUse[operand] = &op;
  for (auto &[value, op] : lastUse)
    if (!isa<BlockArgument>(value))
      dying[op].push_back(value);
  if (!tokensArg || !positionsArg)
    return makeError(llvm::formatv("@{0}: expected one argument with "
                                   "kiln.input = \"tokens\" and one with "
                                   "kiln.input = \"positions\"",
                                   func.getName()));
  if (func.getNumResults() != 1 ||
      cast<RankedTensorType>(func.getResultTypes()[0]).getRank() != 2)
    return makeError(
        llvm::formatv("@{0}: expected exactly one 2-D result", func.getName()));
  return llvm::Error::success();
}

template <typename T>
Buffer<T>
EvaluatorImpl<T>::sliceForRank(const Buffer<T> &full,
                               llvm::ArrayRef<mlir::kiln::ShardAttr> shards,
                               llvm::ArrayRef<int64_t> local) const {
  std::vector<::kiln::plan::Shard> splits;
  for (mlir::kiln::ShardAttr shard : shards)
    splits.push_back({shard.getDim(), shard.getParts(), shard.getGroups(),
                      shard.getStride()});
  std::vector<uint8_t> bytes;
  ::kiln::plan::sliceShards(splits, full.shape, sizeof(T), full.data.data(),
                            rank, ranks, bytes);
  Buffer<T> out;
  out.shape.assign(local.begin(), local.end());
  out.data.resize(bytes.size() / sizeof(T));
  std::memcpy(out.data.data(), bytes.data(), bytes.size());
  return out;
}

template <typename T>
llvm::Error EvaluatorImpl<T>::begin(llvm::ArrayRef<int64_t> tokens,
                                    llvm::ArrayRef<int64_t> positions,
                                    bool allowEmpty) {
  if (tokens.size() != positions.size())
    return makeError(llvm::formatv("{0} tokens but {1} positions",
                                   tokens.size(), positions.size()));
  if (tokens.empty() && !allowEmpty)
    return makeError("no tokens to evaluate");
  for (int64_t p : positions)
    if (p < 0)
      return makeError(llvm::formatv("negative position {0}", p));
  currentTokens.assign(tokens.begin(), tokens.end());
  currentPositions.assign(positions.begin(), positions.end());
  values.clear();
  return llvm::Error::success();
}

template <typename T>
void EvaluatorImpl<T>::finish(func::ReturnOp ret, std::vector<double> *result,
                              int64_t *width, int64_t tokens) {
  if (result) {
    const Buffer<T> &out = get(ret.getOperand(0));
    *width = out.cols();
    result->assign(out.data.begin(), out.data.end());
  }
  values.clear();
  intValues.clear();
  cached += tokens;
}

template <typename T>
llvm::Error EvaluatorImpl<T>::run(llvm::ArrayRef<int64_t> tokens,
                                  llvm::ArrayRef<int64_t> positions,
                                  std::vector<double> &result, int64_t &width) {
  if (llvm::Error e = begin(tokens, positions))
    return e;
  for (Operation &op : func.getBody().front()) {
    if (auto ret = dyn_cast<func::ReturnOp>(op)) {
      finish(ret, &result, &width, static_cast<int64_t>(tokens.size()));
      break;
    }
    if (llvm::Error e = step(&op)) {
      abandon();
      return e;
    }
    releaseAfter(&op);
  }
  return llvm::Error::success();
}

template <typename T> llvm::Error EvaluatorImpl<T>::evaluate(Operation *op) {
  // An op works on the rows of its activation operand (dynamic leading
  // dimension): the step's tokens, or every replica's between a
  // kiln.all_gather and its kiln.reduce_scatter. An expert_down's first
  // operand is dispatch rows; its addend has the tokens'. A norm summing
  // gathered partials has a block of rows per rank; its residual the
  // tokens'. Gathered partials have a block per rank.
  int64_t numTokens = static_cast<int64_t>(currentTokens.size());
  SmallVector<Value> rowOperands(op->getOperands());
  if (auto down = dyn_cast<mlir::kiln::ExpertDownOp>(op))
    rowOperands.assign({down.getAddend()});
  if (auto norm = dyn_cast<mlir::kiln::AddRmsNormOp>(op))
    rowOperands.assign({norm.getResidual()});
  for (Value operand : rowOperands) {
    auto type = dyn_cast<RankedTensorType>(operand.getType());
    if (type && type.getRank() == 2 && type.isDynamicDim(0) &&
        isa<FloatType>(type.getElementType()) && !weights.count(operand)) {
      numTokens = get(operand).rows();
      break;
    }
  }
  auto output = [&](Value v, int64_t cols) -> Buffer<T> & {
    Buffer<T> &b = values[v.getAsOpaquePointer()];
    b.shape = {numTokens, cols};
    b.data.assign(static_cast<size_t>(numTokens * cols), T(0));
    return b;
  };
  auto width = [](Value v) {
    return cast<RankedTensorType>(v.getType()).getDimSize(1);
  };
  auto checkTokens = [&](Value v) -> llvm::Error {
    v = resolveIndex(v);
    if (v != tokensArg && v != positionsArg)
      return opError(op, "index operands must be the function's tokens or "
                         "positions argument");
    return llvm::Error::success();
  };
  auto ints = [&](Value v) -> const std::vector<int64_t> & {
    return indexValues(v);
  };
  // A token exchange sees every rank, grouped into replicas as the op says.
  auto checkExchange = [&](uint64_t ranks, uint64_t replicas) -> llvm::Error {
    if (currentCall)
      return opError(op, "collectives must be in the graph, not in a kernel "
                         "function");
    if (world.size() != ranks || ranks / replicaRanks != replicas)
      return opError(op, llvm::formatv("exchanges rows of {0} replicas of {1} "
                                       "ranks but {2} ranks are being "
                                       "evaluated as {3} replicas",
                                       replicas, ranks, world.size(),
                                       world.size() / replicaRanks));
    return llvm::Error::success();
  };

  return llvm::TypeSwitch<Operation *, llvm::Error>(op)
      .Case([&](mlir::kiln::EmbeddingOp e) -> llvm::Error {
        if (llvm::Error err = checkTokens(e.getTokens()))
          return err;
        const Buffer<T> &table = get(e.getTable());
        const std::vector<int64_t> &ids = ints(e.getTokens());
        for (int64_t id : ids)
          if (id < 0 || id >= table.rows())
            return opError(op, llvm::formatv("token id {0} is outside the "
                                             "vocabulary [0, {1})",
                                             id, table.rows()));
        Buffer<T> &out = output(e.getResult(), table.cols());
        ::kiln::ref::embedding(table.data.data(), table.cols(), ids.data(),
                               numTokens, out.data.data());
        return llvm::Error::success();
      })
      .Case([&](mlir::kiln::RmsNormOp n) -> llvm::Error {
        const Buffer<T> &x = get(n.getInput());
        Buffer<T> &out = output(n.getResult(), x.cols());
        ::kiln::ref::rmsNorm(x.data.data(), numTokens, x.cols(),
                             get(n.getWeight()).data.data(),
                             n.getEpsilon().convertToDouble(), out.data.data());
        return llvm::Error::success();
      })
      .Case([&](mlir::kiln::QkNormOp n) -> llvm::Error {
        const Buffer<T> &x = get(n.getInput());
        Buffer<T> &out = output(n.getResult(), x.cols());
        int64_t headDim = x.cols() / n.getNumHeads();
        // Each head slice is one row of the weightless norm.
        ::kiln::ref::rmsNorm<T>(
            x.data.data(), numTokens * n.getNumHeads(), headDim, nullptr,
            n.getEpsilon().convertToDouble(), out.data.data());
        return llvm::Error::success();
      })
      .Case([&](mlir::kiln::LinearOp l) -> llvm::Error {
        const Buffer<T> &x = get(l.getInput());
        const Buffer<T> &w = get(l.getWeight());
        Buffer<T> &out = output(l.getResult(), w.rows());
        ::kiln::ref::linear(x.data.data(), numTokens, x.cols(), w.data.data(),
                            w.rows(), out.data.data());
        return llvm::Error::success();
      })
      .Case([&](mlir::kiln::RopeOp r) -> llvm::Error {
        if (llvm::Error err = checkTokens(r.getPositions()))
          return err;
        const Buffer<T> &x = get(r.getInput());
        Buffer<T> &out = output(r.getResult(), x.cols());
        out.data = x.data;
        std::vector<double> freqs(r.getInvFreq().begin(), r.getInvFreq().end());
        ::kiln::ref::rope(out.data.data(), numTokens, r.getNumHeads(),
                          x.cols() / r.getNumHeads(),
                          ints(r.getPositions()).data(), freqs);
        return llvm::Error::success();
      })
      .Case([&](mlir::kiln::AttentionOp a) -> llvm::Error {
        if (llvm::Error err = checkTokens(a.getPositions()))
          return err;
        const Buffer<T> &q = get(a.getQuery());
        const Buffer<T> &k = get(a.getKey());
        const Buffer<T> &v = get(a.getValue());
        // Append this step's keys and values to the op's KV state.
        KvState<T> &kv = kvStates[{currentCall, op}];
        kv.key.insert(kv.key.end(), k.data.begin(), k.data.end());
        kv.value.insert(kv.value.end(), v.data.begin(), v.data.end());
        const std::vector<int64_t> &pos = ints(a.getPositions());
        kv.positions.insert(kv.positions.end(), pos.begin(), pos.end());
        ::kiln::ref::AttentionParams p;
        p.numHeads = a.getNumHeads();
        p.numKvHeads = a.getNumKvHeads();
        p.headDim = q.cols() / p.numHeads;
        p.scale = a.getScale().convertToDouble();
        p.chunkSize = a.getMask() == mlir::kiln::MaskKind::Chunked
                          ? a.getChunkSize().value_or(0)
                          : 0;
        if (a.getFloorScale()) {
          p.floorScale = *a.getFloorScale();
          p.attnScale = a.getAttnScale()->convertToDouble();
        }
        Buffer<T> &out = output(a.getResult(), q.cols());
        ::kiln::ref::attention(
            q.data.data(), pos.data(), numTokens, kv.key.data(),
            kv.value.data(), kv.positions.data(),
            static_cast<int64_t>(kv.positions.size()), p, out.data.data());
        return llvm::Error::success();
      })
      .Case([&](mlir::kiln::SwiGluOp s) -> llvm::Error {
        const Buffer<T> &g = get(s.getGate());
        const Buffer<T> &u = get(s.getUp());
        Buffer<T> &out = output(s.getResult(), g.cols());
        ::kiln::ref::swiglu(g.data.data(), u.data.data(),
                            static_cast<int64_t>(g.data.size()),
                            out.data.data());
        return llvm::Error::success();
      })
      .Case([&](mlir::kiln::AddOp s) -> llvm::Error {
        const Buffer<T> &l = get(s.getLhs());
        const Buffer<T> &r = get(s.getRhs());
        Buffer<T> &out = output(s.getResult(), l.cols());
        for (size_t i = 0; i < out.data.size(); ++i)
          out.data[i] = l.data[i] + r.data[i];
        return llvm::Error::success();
      })
      .Case([&](mlir::kiln::MoeOp m) -> llvm::Error {
        const Buffer<T> &x = get(m.getInput());
        const Buffer<T> &router = get(m.getRouter());
        const Buffer<T> &down = get(m.getDown());
        ::kiln::ref::MoeParams p;
        p.hidden = x.cols();
        p.numExperts = router.rows();
        p.ffn = down.shape[1];
        p.topK = m.getTopK();
        if (m.getExpertGroups()) {
          p.localExperts = get(m.getGateUp()).shape[0];
          p.firstExpert = firstExpertOf(ints(m.getRank()), *m.getExpertGroups(),
                                        *m.getRanks(), p.localExperts);
        }
        const T *sg = nullptr, *su = nullptr, *sd = nullptr;
        if (m.getSharedGate()) {
          const Buffer<T> &g = get(m.getSharedGate());
          p.sharedFfn = g.rows();
          sg = g.data.data();
          su = get(m.getSharedUp()).data.data();
          sd = get(m.getSharedDown()).data.data();
        }
        Buffer<T> &out = output(m.getResult(), x.cols());
        ::kiln::ref::moe(x.data.data(), numTokens, router.data.data(),
                         get(m.getGateUp()).data.data(), down.data.data(), sg,
                         su, sd, p, out.data.data());
        return llvm::Error::success();
      })
      .Case([&](mlir::kiln::ConcatOp c) -> llvm::Error {
        // Weight repacking: a static N-D concatenation along `axis`.
        auto type = cast<RankedTensorType>(c.getType());
        int64_t axis = c.getAxis();
        int64_t outer = 1, inner = 1;
        for (int64_t d = 0; d < axis; ++d)
          outer *= type.getDimSize(d);
        for (int64_t d = axis + 1; d < type.getRank(); ++d)
          inner *= type.getDimSize(d);
        Buffer<T> result;
        result.shape.assign(type.getShape().begin(), type.getShape().end());
        result.data.reserve(type.getNumElements());
        for (int64_t o = 0; o < outer; ++o)
          for (Value input : c.getInputs()) {
            const Buffer<T> &part = get(input);
            int64_t block = part.shape[axis] * inner;
            auto begin = part.data.begin() + o * block;
            result.data.insert(result.data.end(), begin, begin + block);
          }
        values[c.getResult().getAsOpaquePointer()] = std::move(result);
        return llvm::Error::success();
      })
      .Case([&](mlir::kiln::SplitOp sp) -> llvm::Error {
        const Buffer<T> &x = get(sp.getInput());
        int64_t offset = 0;
        for (Value part : sp.getResults()) {
          int64_t w = width(part);
          Buffer<T> &out = output(part, w);
          for (int64_t t = 0; t < numTokens; ++t)
            std::copy(x.data.begin() + t * x.cols() + offset,
                      x.data.begin() + t * x.cols() + offset + w,
                      out.data.begin() + t * w);
          offset += w;
        }
        return llvm::Error::success();
      })
      .Case([&](mlir::kiln::PackedSwiGluOp s) -> llvm::Error {
        const Buffer<T> &x = get(s.getInput());
        int64_t f = x.cols() / 2;
        Buffer<T> &out = output(s.getResult(), f);
        for (int64_t t = 0; t < numTokens; ++t)
          ::kiln::ref::swiglu(x.data.data() + t * 2 * f,
                              x.data.data() + t * 2 * f + f, f,
                              out.data.data() + t * f);
        return llvm::Error::success();
      })
      .Case([&](mlir::kiln::AddRmsNormOp a) -> llvm::Error {
        const Buffer<T> &l = get(a.getInput());
        const Buffer<T> &r = get(a.getResidual());
        Buffer<T> &sum = output(a.getSum(), l.cols());
        // The input's blocks (one, or a rank's partial sum each) summed in
        // order, then the residual: an all-reduce's order and then its add.
        size_t block = sum.data.size();
        if (static_cast<int64_t>(a.getPartials()) * r.rows() != l.rows())
          return opError(op,
                         llvm::formatv("sums {0} blocks of {1} rows but "
                                       "its input has {2} rows",
                                       a.getPartials(), r.rows(), l.rows()));
        for (size_t i = 0; i < block; ++i) {
          T acc = l.data[i];
          for (size_t p = 1; p < a.getPartials(); ++p)
            acc += l.data[p * block + i];
          sum.data[i] = acc + r.data[i];
        }
        Buffer<T> &normed = output(a.getNormed(), l.cols());
        ::kiln::ref::rmsNorm(sum.data.data(), numTokens, l.cols(),
                             get(a.getWeight()).data.data(),
                             a.getEpsilon().convertToDouble(),
                             normed.data.data());
        return llvm::Error::success();
      })
      .Case([&](mlir::kiln::QkvEpilogueOp e) -> llvm::Error {
        if (llvm::Error err = checkTokens(e.getPositions()))
          return err;
        const Buffer<T> &qkv = get(e.getQkv());
        const std::vector<int64_t> &pos = ints(e.getPositions());
        int64_t numHeads = e.getNumHeads(), numKvHeads = e.getNumKvHeads();
        int64_t qWidth = width(e.getQuery()), kvWidth = width(e.getKey());
        int64_t headDim = qWidth / numHeads;
        Buffer<T> &q = output(e.getQuery(), qWidth);
        Buffer<T> &k = output(e.getKey(), kvWidth);
        Buffer<T> &v = output(e.getValue(), kvWidth);
        for (int64_t t = 0; t < numTokens; ++t) {
          const T *row = qkv.data.data() + t * qkv.cols();
          std::copy(row, row + qWidth, q.data.begin() + t * qWidth);
          std::copy(row + qWidth, row + qWidth + kvWidth,
                    k.data.begin() + t * kvWidth);
          std::copy(row + qWidth + kvWidth, row + qWidth + 2 * kvWidth,
                    v.data.begin() + t * kvWidth);
        }
        // Same order as the unfused graph: RoPE, then QK norm, then the
        // temperature on q.
        if (std::optional<ArrayRef<double>> f = e.getInvFreq()) {
          std::vector<double> freqs(f->begin(), f->end());
          ::kiln::ref::rope(q.data.data(), numTokens, numHeads, headDim,
                            pos.data(), freqs);
          ::kiln::ref::rope(k.data.data(), numTokens, numKvHeads, headDim,
                            pos.data(), freqs);
        }
        if (std::optional<llvm::APFloat> eps = e.getQkNormEpsilon()) {
          std::vector<T> tmp(q.data);
          ::kiln::ref::rmsNorm<T>(tmp.data(), numTokens * numHeads, headDim,
                                  nullptr, eps->convertToDouble(),
                                  q.data.data());
          tmp = k.data;
          ::kiln::ref::rmsNorm<T>(tmp.data(), numTokens * numKvHeads, headDim,
                                  nullptr, eps->convertToDouble(),
                                  k.data.data());
        }
        if (std::optional<int64_t> floor = e.getFloorScale()) {
          double attnScale = e.getAttnScale()->convertToDouble();
          for (int64_t t = 0; t < numTokens; ++t) {
            T tau = static_cast<T>(
                ::kiln::ref::attentionTemperature(pos[t], attnScale, *floor));
            for (int64_t i = 0; i < qWidth; ++i)
              q.data[t * qWidth + i] *= tau;
          }
        }
        return llvm::Error::success();
      })
      .Case([&](func::CallOp call) { return evaluateCall(call); })
      .Case([&](mlir::kiln::MoeRouteOp r) -> llvm::Error {
        const Buffer<T> &x = get(r.getInput());
        const Buffer<T> &router = get(r.getRouter());
        std::vector<int64_t> indices, offsets;
        Buffer<T> gates;
        int64_t local = r.getExpertOffsets().getType().getDimSize(0) - 1,
                first = 0;
        if (r.getExpertGroups())
          first = firstExpertOf(ints(r.getRank()), *r.getExpertGroups(),
                                *r.getRanks(), local);
        ::kiln::ref::moeRoute(x.data.data(), numTokens, x.cols(),
                              router.data.data(), router.rows(), r.getTopK(),
                              first, local, indices, offsets, gates.data);
        gates.shape = {static_cast<int64_t>(gates.data.size())};
        intValues[r.getTokenIndices().getAsOpaquePointer()] =
            std::move(indices);
        intValues[r.getExpertOffsets().getAsOpaquePointer()] =
            std::move(offsets);
        values[r.getGates().getAsOpaquePointer()] = std::move(gates);
        return llvm::Error::success();
      })
      .Case([&](mlir::kiln::ExpertGateUpOp g) -> llvm::Error {
        const Buffer<T> &x = get(g.getInput());
        const std::vector<int64_t> &indices = ints(g.getTokenIndices());
        const std::vector<int64_t> &offsets = ints(g.getExpertOffsets());
        int64_t ffn = width(g.getResult());
        Buffer<T> &out = values[g.getResult().getAsOpaquePointer()];
        out.shape = {static_cast<int64_t>(indices.size()), ffn};
        out.data.assign(indices.size() * ffn, T(0));
        ::kiln::ref::expertGateUp(
            x.data.data(), x.cols(), indices.data(), offsets.data(),
            static_cast<int64_t>(offsets.size()) - 1,
            get(g.getGates()).data.data(), get(g.getGateUp()).data.data(), ffn,
            out.data.data());
        return llvm::Error::success();
      })
      .Case([&](mlir::kiln::ExpertDownOp d) -> llvm::Error {
        const Buffer<T> &h = get(d.getHidden());
        const Buffer<T> &addend = get(d.getAddend());
        const std::vector<int64_t> &offsets = ints(d.getExpertOffsets());
        Buffer<T> &out = output(d.getResult(), addend.cols());
        ::kiln::ref::expertDown(
            h.data.data(), h.cols(), ints(d.getTokenIndices()).data(),
            offsets.data(), static_cast<int64_t>(offsets.size()) - 1,
            get(d.getDown()).data.data(), addend.data.data(), numTokens,
            addend.cols(), out.data.data());
        return llvm::Error::success();
      })
      .Case([&](mlir::kiln::ExpertDownPairsOp d) -> llvm::Error {
        const Buffer<T> &h = get(d.getHidden());
        const std::vector<int64_t> &offsets = ints(d.getExpertOffsets());
        int64_t pairs = h.rows(), cols = width(d.getResult());
        Buffer<T> &out = values[d.getResult().getAsOpaquePointer()];
        out.shape = {pairs, cols};
        // Pair i of the identity dispatch is row i: expert_down's
        // combination onto zero rows, one per pair.
        std::vector<int64_t> identity(static_cast<size_t>(pairs));
        for (int64_t i = 0; i < pairs; ++i)
          identity[i] = i;
        std::vector<T> zeros(static_cast<size_t>(pairs * cols), T(0));
        out.data.assign(zeros.size(), T(0));
        ::kiln::ref::expertDown(h.data.data(), h.cols(), identity.data(),
                                offsets.data(),
                                static_cast<int64_t>(offsets.size()) - 1,
                                get(d.getDown()).data.data(), zeros.data(),
                                pairs, cols, out.data.data());
        return llvm::Error::success();
      })
      .Case([&](mlir::kiln::TokenDispatchOp d) -> llvm::Error {
        if (llvm::Error err = checkExchange(d.getRanks(), d.getReplicas()))
          return err;
        std::vector<std::pair<int64_t, int64_t>> pairs =
            receivedPairs(worldRank, d.getInput(), d.getTokenIndices(),
                          d.getExpertOffsets(), d.getExpertGroups());
        int64_t cols = width(d.getInput());
        int64_t local = d.getReceivedOffsets().getType().getDimSize(0) - 1;
        Buffer<T> rows, gates;
        rows.shape = {static_cast<int64_t>(pairs.size()), cols};
        gates.shape = {static_cast<int64_t>(pairs.size())};
        std::vector<int64_t> indices,
            offsets(static_cast<size_t>(local + 1), 0);
        int64_t first =
            worldRank /
            (static_cast<int64_t>(world.size()) / d.getExpertGroups()) * local;
        for (auto [sender, pair] : pairs) {
          EvaluatorImpl *from = world[sender];
          const Buffer<T> &x = from->get(d.getInput());
          int64_t token = from->indexValues(d.getTokenIndices())[pair];
          rows.data.insert(rows.data.end(), x.data.begin() + token * cols,
                           x.data.begin() + (token + 1) * cols);
          gates.data.push_back(from->get(d.getGates()).data[pair]);
          indices.push_back(static_cast<int64_t>(indices.size()));
          int64_t e =
              expertOfPair(from->indexValues(d.getExpertOffsets()), pair);
          ++offsets[e - first + 1];
        }
        for (int64_t e = 0; e < local; ++e)
          offsets[e + 1] += offsets[e];
        values[d.getRows().getAsOpaquePointer()] = std::move(rows);
        values[d.getReceivedGates().getAsOpaquePointer()] = std::move(gates);
        intValues[d.getPairIndices().getAsOpaquePointer()] = std::move(indices);
        intValues[d.getReceivedOffsets().getAsOpaquePointer()] =
            std::move(offsets);
        return llvm::Error::success();
      })
      .Case([&](mlir::kiln::TokenCombineOp c) -> llvm::Error {
        if (llvm::Error err = checkExchange(c.getRanks(), c.getReplicas()))
          return err;
        const Buffer<T> &x = get(c.getInput());
        int64_t cols = x.cols();
        Buffer<T> &out = values[c.getResult().getAsOpaquePointer()];
        out.shape = {x.rows(), cols};
        out.data.assign(x.data.size(), T(0));
        int64_t ranksPerGroup =
            static_cast<int64_t>(world.size()) / c.getExpertGroups();
        int64_t experts = c.getExpertOffsets().getType().getDimSize(0) - 1;
        int64_t local = experts / c.getExpertGroups();
        // Where each rank put each of this rank's pairs.
        std::vector<std::map<int64_t, int64_t>> placeOnRank(world.size());
        for (size_t r = 0; r < world.size(); ++r) {
          std::vector<std::pair<int64_t, int64_t>> got = receivedPairs(
              static_cast<int64_t>(r), c.getInput(), c.getTokenIndices(),
              c.getExpertOffsets(), c.getExpertGroups());
          for (auto [i, sp] : llvm::enumerate(got))
            if (sp.first == worldRank)
              placeOnRank[r][sp.second] = static_cast<int64_t>(i);
        }
        const std::vector<int64_t> &indices = ints(c.getTokenIndices());
        const std::vector<int64_t> &offsets = ints(c.getExpertOffsets());
        for (size_t p = 0; p < indices.size(); ++p) {
          int64_t group =
              expertOfPair(offsets, static_cast<int64_t>(p)) / local;
          for (int64_t r = group * ranksPerGroup;
               r < (group + 1) * ranksPerGroup; ++r) {
            auto at = placeOnRank[r].find(static_cast<int64_t>(p));
            if (at == placeOnRank[r].end())
              continue; // a row of another rank's piece
            const Buffer<T> &o = world[r]->get(c.getPairOutputs());
            for (int64_t k = 0; k < cols; ++k)
              out.data[indices[p] * cols + k] += o.data[at->second * cols + k];
          }
        }
        return llvm::Error::success();
      })
      .Case([&](mlir::kiln::AllReduceOp r) -> llvm::Error {
        if (currentCall)
          return opError(op, "collectives must be in the graph, not in a "
                             "kernel function");
        if (group.size() != r.getRanks())
          return opError(op, llvm::formatv("sums over {0} ranks but {1} are "
                                           "being evaluated",
                                           r.getRanks(), group.size()));
        const Buffer<T> &x = get(r.getInput());
        Buffer<T> &out = output(r.getResult(), x.cols());
        // Every rank adds in rank order: the same sum everywhere.
        for (EvaluatorImpl *peer : group) {
          const Buffer<T> &part = peer->get(r.getInput());
          for (size_t i = 0; i < out.data.size(); ++i)
            out.data[i] += part.data[i];
        }
        return llvm::Error::success();
      })
      .Case([&](mlir::kiln::GatherPartialsOp g) -> llvm::Error {
        if (currentCall)
          return opError(op, "collectives must be in the graph, not in a "
                             "kernel function");
        if (group.size() != g.getRanks())
          return opError(op, llvm::formatv("gathers over {0} ranks but {1} "
                                           "are being evaluated",
                                           g.getRanks(), group.size()));
        Buffer<T> all;
        all.shape = {0, width(g.getInput())};
        // Rank order, like an all-reduce's sum.
        for (EvaluatorImpl *peer : group) {
          const Buffer<T> &part = peer->get(g.getInput());
          all.data.insert(all.data.end(), part.data.begin(), part.data.end());
          all.shape[0] += part.rows();
        }
        values[g.getResult().getAsOpaquePointer()] = std::move(all);
        return llvm::Error::success();
      })
      .Case([&](mlir::kiln::AllGatherOp g) -> llvm::Error {
        if (llvm::Error err = checkExchange(g.getRanks(), g.getReplicas()))
          return err;
        int64_t cols = width(g.getInput());
        Buffer<T> all;
        all.shape = {0, cols};
        // One copy per replica: the rank at this rank's place in it.
        for (int64_t d = 0, e = g.getReplicas(); d < e; ++d) {
          const Buffer<T> &part =
              world[d * replicaRanks + worldRank % replicaRanks]->get(
                  g.getInput());
          all.data.insert(all.data.end(), part.data.begin(), part.data.end());
          all.shape[0] += part.rows();
        }
        values[g.getResult().getAsOpaquePointer()] = std::move(all);
        return llvm::Error::success();
      })
      .Case([&](mlir::kiln::ReduceScatterOp r) -> llvm::Error {
        if (llvm::Error err = checkExchange(r.getRanks(), r.getReplicas()))
          return err;
        int64_t cols = width(r.getInput()), replica = worldRank / replicaRanks;
        int64_t first = 0;
        for (int64_t d = 0; d < replica; ++d)
          first += world[d * replicaRanks]->get(r.getLike()).rows();
        int64_t mine = get(r.getLike()).rows();
        Buffer<T> &out = values[r.getResult().getAsOpaquePointer()];
        out.shape = {mine, cols};
        out.data.assign(static_cast<size_t>(mine * cols), T(0));
        // Every rank adds in rank order: the same sum on a replica's ranks.
        for (EvaluatorImpl *peer : world) {
          const Buffer<T> &part = peer->get(r.getInput());
          if (part.rows() < first + mine)
            return opError(op, llvm::formatv("has {0} rows on a rank, fewer "
                                             "than the gathered {1}",
                                             part.rows(), first + mine));
          const T *from = part.data.data() + first * cols;
          for (size_t i = 0; i < out.data.size(); ++i)
            out.data[i] += from[i];
        }
        return llvm::Error::success();
      })
      .Default([&](Operation *other) -> llvm::Error {
        return opError(other, "the reference evaluator does not support this "
                              "op");
      });
}

template <typename T>
llvm::Error EvaluatorImpl<T>::evaluateCall(func::CallOp call) {
  auto callee = SymbolTable::lookupNearestSymbolFrom<func::FuncOp>(
      call, call.getCalleeAttr());
  if (!callee || callee.isExternal() || !callee.getBody().hasOneBlock())
    return opError(call, "callee @" + call.getCallee() +
                             " is not a single-block function");
  if (currentCall)
    return opError(call, "nested kernel calls are not supported");
  Block &body = callee.getBody().front();
  for (auto [arg, operand] :
       llvm::zip(body.getArguments(), call.getOperands())) {
    if (isa<IntegerType>(getElementTypeOrSelf(operand.getType())))
      indexAliases[arg.getAsOpaquePointer()] = resolveIndex(operand);
    else
      aliases[arg.getAsOpaquePointer()] = &get(operand);
  }
  currentCall = call;
  llvm::Error error = llvm::Error::success();
  for (Operation &op : body) {
    if (auto ret = dyn_cast<func::ReturnOp>(op)) {
      // Copy out before the kernel's values are released.
      for (auto [result, v] : llvm::zip(call.getResults(), ret.getOperands())) {
        if (isa<IntegerType>(getElementTypeOrSelf(v.getType())))
          intValues[result.getAsOpaquePointer()] = indexValues(v);
        else
          values[result.getAsOpaquePointer()] = get(v);
      }
      break;
    }
    if ((error = evaluate(&op)))
      break;
  }
  currentCall = nullptr;
  for (Operation &op : body)
    for (Value result : op.getResults())
      release(result);
  for (BlockArgument arg : body.getArguments()) {
    aliases.erase(arg.getAsOpaquePointer());
    indexAliases.erase(arg.getAsOpaquePointer());
  }
  return error;
}

template <typename T>
llvm::Expected<std::vector<::kiln::ref::KernelValue>>
EvaluatorImpl<T>::runKernel(llvm::ArrayRef<::kiln::ref::KernelValue> args) {
  Block &body = func.getBody().front();
  if (args.size() != body.getNumArguments())
    return makeError(llvm::formatv("@{0} takes {1} arguments, got {2}",
                                   func.getName(), body.getNumArguments(),
                                   args.size()));
  // The token count comes from the first argument with a dynamic token
  // dimension that is not a dispatch vector (those have k rows per token).
  int64_t tokens = -1;
  for (auto [argument, value] : llvm::zip(body.getArguments(), args)) {
    BlockArgument arg = argument;
    auto type = cast<RankedTensorType>(arg.getType());
    bool dispatch = llvm::any_of(arg.getUsers(), [&](Operation *user) {
      if (isa<mlir::kiln::ExpertGateUpOp>(user))
        return arg != user->getOperand(0); // all but the token rows
      if (isa<mlir::kiln::ExpertDownOp>(user))
        return arg != user->getOperand(4);             // all but the addend
      return isa<mlir::kiln::ExpertDownPairsOp>(user); // pairs throughout
    });
    if (isa<IntegerType>(type.getElementType())) {
      bool isTokens = llvm::any_of(arg.getUsers(), [&](Operation *user) {
        auto e = dyn_cast<mlir::kiln::EmbeddingOp>(user);
        return e && e.getTokens() == arg;
      });
      bool isRank = llvm::any_of(arg.getUsers(), [&](Operation *user) {
        if (auto r = dyn_cast<mlir::kiln::MoeRouteOp>(user))
          return r.getRank() == arg;
        auto m = dyn_cast<mlir::kiln::MoeOp>(user);
        return m && m.getRank() == arg;
      });
      if (isRank) {
        intValues[arg.getAsOpaquePointer()] = value.ints;
        continue;
      }
      if (isTokens) {
        tokensArg = arg;
        currentTokens = value.ints;
      } else if (!dispatch) {
        positionsArg = arg;
        currentPositions = value.ints;
      } else {
        intValues[arg.getAsOpaquePointer()] = value.ints;
      }
      if (!dispatch && tokens < 0)
        tokens = static_cast<int64_t>(value.ints.size());
      continue;
    }
    Buffer<T> buffer;
    buffer.shape = value.shape;
    buffer.data.assign(value.floats.begin(), value.floats.end());
    if (type.isDynamicDim(0) && !dispatch && tokens < 0)
      tokens = value.shape[0];
    if (type.hasStaticShape())
      weights[arg] = std::move(buffer);
    else
      values[arg.getAsOpaquePointer()] = std::move(buffer);
  }
  if (tokens < 0)
    return makeError("cannot tell the token count of @" + func.getName());
  if (!tokensArg)
    currentTokens.assign(tokens, 0);
  if (!positionsArg)
    currentPositions.assign(tokens, 0);
  std::vector<::kiln::ref::KernelValue> results;
  for (Operation &op : body) {
    if (auto ret = dyn_cast<func::ReturnOp>(op)) {
      for (Value v : ret.getOperands()) {
        ::kiln::ref::KernelValue out;
        if (isa<IntegerType>(getElementTypeOrSelf(v.getType()))) {
          out.ints = indexValues(v);
          out.shape = {static_cast<int64_t>(out.ints.size())};
        } else {
          const Buffer<T> &b = get(v);
          out.shape = b.shape;
          out.floats.assign(b.data.begin(), b.data.end());
        }
        results.push_back(std::move(out));
      }
      break;
    }
    if (llvm::Error e = evaluate(&op))
      return std::move(e);
  }
  return results;
}

llvm::Expected<std::vector<::kiln::ref::KernelValue>>(
    ::kiln::ref::evaluateKernel)(func::FuncOp kernel,
                                 llvm::ArrayRef<::kiln::ref::KernelValue> args,
                                 Precision precision) {
  if (kernel.isExternal() || !kernel.getBody().hasOneBlock())
    return makeError("@" + kernel.getName() + " must have a single block");
  if (precision == Precision::F64)
    return EvaluatorImpl<double>(kernel).runKernel(args);
  return EvaluatorImpl<float>(kernel).runKernel(args);
}

namespace {

/// A tensor- or pipeline-parallel graph: one evaluator per rank, each bound
/// to its slices of the weights, stepped op by op together so that a
/// kiln.all_reduce sees every rank of its group and a stage transfer finds
/// its value on the sending ranks. A rank evaluates only the ops of its
/// stage (rank r of tp x stages is in stage r / tp). With data-parallel
/// attention the tp ranks form replicas of tp / replicas ranks, each with
/// its own sequence, and the all-reduces sum over a replica. A replica's
/// ranks end with the same logits; its first rank's are returned.
template <typename T> class TensorParallelEvaluator final : public Evaluator {
public:
  TensorParallelEvaluator(func::FuncOp func, int64_t tp, int64_t replicas,
                          mlir::kiln::StageAssignment stages)
      : func(func), tp(tp), replicas(replicas), stages(std::move(stages)) {
    for (int64_t r = 0; r < tp * this->stages.stages; ++r)
      evaluators.push_back(
          std::make_unique<EvaluatorImpl<T>>(func, r % tp, tp));
    int64_t groupSize = tp / replicas;
    for (size_t first = 0; first < evaluators.size(); first += groupSize) {
      std::vector<EvaluatorImpl<T> *> group;
      for (int64_t r = 0; r < groupSize; ++r)
        group.push_back(evaluators[first + r].get());
      for (EvaluatorImpl<T> *e : group)
        e->setGroup(group);
    }
    // Replicas exchange rows within a pipeline stage: its tp ranks.
    if (replicas > 1)
      for (int64_t s = 0; s < this->stages.stages; ++s) {
        std::vector<EvaluatorImpl<T> *> world;
        for (int64_t r = 0; r < tp; ++r)
          world.push_back(evaluators[s * tp + r].get());
        for (int64_t r = 0; r < tp; ++r)
          world[r]->setWorld(world, r, groupSize);
      }
  }

  llvm::Error bindWeights(const Checkpoint &checkpoint) {
    for (auto &e : evaluators)
      if (llvm::Error err = e->bindWeights(checkpoint))
        return err;
    return llvm::Error::success();
  }

  int64_t numReplicas() const override { return replicas; }

  llvm::Error run(llvm::ArrayRef<int64_t> tokens,
                  llvm::ArrayRef<int64_t> positions,
                  std::vector<double> &result, int64_t &width) override {
    if (replicas > 1)
      return makeError(llvm::formatv(
          "the graph has {0} data-parallel attention replicas, each with its "
          "own sequence: give one per replica",
          replicas));
    std::vector<std::vector<double>> results;
    if (llvm::Error err =
            runAll({std::vector<int64_t>(tokens.begin(), tokens.end())},
                   {std::vector<int64_t>(positions.begin(), positions.end())},
                   results, width))
      return err;
    result = std::move(results[0]);
    return llvm::Error::success();
  }

  llvm::Error runReplicas(llvm::ArrayRef<std::vector<int64_t>> tokens,
                          llvm::ArrayRef<std::vector<int64_t>> positions,
                          std::vector<std::vector<double>> &results,
                          int64_t &width) override {
    if (static_cast<int64_t>(tokens.size()) != replicas ||
        positions.size() != tokens.size())
      return makeError(llvm::formatv("the graph has {0} replicas, but {1} "
                                     "sequences were given",
                                     replicas, tokens.size()));
    if (llvm::all_of(tokens, [](const auto &t) { return t.empty(); }))
      return makeError("no tokens to evaluate in any replica");
    return runAll(tokens, positions, results, width);
  }

  void reset() override {
    for (auto &e : evaluators)
      e->reset();
  }
  int64_t numCachedTokens() const override {
    return evaluators.front()->numCachedTokens();
  }

private:
  llvm::Error runAll(llvm::ArrayRef<std::vector<int64_t>> tokens,
                     llvm::ArrayRef<std::vector<int64_t>> positions,
                     std::vector<std::vector<double>> &results,
                     int64_t &width) {
    int64_t groupSize = tp / replicas;
    results.assign(tokens.size(), {});
    // Rank r (of stage r / tp) runs the sequence of replica r % tp /
    // groupSize.
    auto replicaOf = [&](size_t r) {
      return static_cast<int64_t>(r) % tp / groupSize;
    };
    for (size_t r = 0; r < evaluators.size(); ++r)
      if (llvm::Error err = evaluators[r]->begin(
              tokens[replicaOf(r)], positions[replicaOf(r)], replicas > 1))
        return err;
    for (Operation &op : func.getBody().front()) {
      if (auto ret = dyn_cast<func::ReturnOp>(op)) {
        for (auto [r, e] : llvm::enumerate(evaluators)) {
          int64_t d = replicaOf(r);
          e->finish(ret,
                    static_cast<int64_t>(r) == d * groupSize ? &results[d]
                                                             : nullptr,
                    &width, static_cast<int64_t>(tokens[d].size()));
        }
        break;
      }
      if (llvm::Error err = stepAll(op)) {
        for (auto &other : evaluators)
          other->abandon();
        return err;
      }
      // Only once every rank has read them (an all-reduce reads its
      // peers' operands).
      for (auto &e : evaluators)
        e->releaseAfter(&op);
    }
    return llvm::Error::success();
  }

  llvm::Error stepAll(Operation &op) {
    int64_t stage = stages.of(&op);
    if (auto send = dyn_cast<mlir::kiln::StageSendOp>(op)) {
      // Rank t of the next stage receives from rank t of this one.
      for (int64_t r = 0; r < tp; ++r)
        evaluators[(stage + 1) * tp + r]->receive(
            send.getResult(),
            evaluators[stage * tp + r]->valueOf(send.getInput()));
      return llvm::Error::success();
    }
    if (auto broadcast = dyn_cast<mlir::kiln::StageBroadcastOp>(op)) {
      for (size_t w = 0; w < evaluators.size(); ++w)
        evaluators[w]->receive(
            broadcast.getResult(),
            evaluators[stage * tp + static_cast<int64_t>(w) % tp]->valueOf(
                broadcast.getInput()));
      return llvm::Error::success();
    }
    for (size_t w = 0; w < evaluators.size(); ++w)
      if (stage == mlir::kiln::StageAssignment::kAllStages ||
          static_cast<int64_t>(w) / tp == stage)
        if (llvm::Error err = evaluators[w]->step(&op))
          return err;
    return llvm::Error::success();
  }

  func::FuncOp func;
  int64_t tp, replicas;
  mlir::kiln::StageAssignment stages;
  std::vector<std::unique_ptr<EvaluatorImpl<T>>> evaluators;
};

template <typename T>
llvm::Expected<std::unique_ptr<Evaluator>>
createTensorParallel(func::FuncOp func, const Checkpoint &checkpoint,
                     int64_t ranks, int64_t replicas,
                     mlir::kiln::StageAssignment stages) {
  auto evaluator = std::make_unique<TensorParallelEvaluator<T>>(
      func, ranks, replicas, std::move(stages));
  if (llvm::Error e = evaluator->bindWeights(checkpoint))
    return std::move(e);
  return std::unique_ptr<Evaluator>(std::move(evaluator));
}

} // namespace

llvm::Expected<std::unique_ptr<Evaluator>>
Evaluator::create(func::FuncOp func, const Checkpoint &checkpoint,
                  Precision precision) {
  auto module = func->getParentOfType<ModuleOp>();
  auto ranks = module
                   ? module->getAttrOfType<IntegerAttr>(
                         mlir::kiln::KilnDialect::getTensorParallelAttrName())
                   : IntegerAttr();
  auto pipeline =
      module ? module->getAttrOfType<IntegerAttr>(
                   mlir::kiln::KilnDialect::getPipelineStagesAttrName())
             : IntegerAttr();
  if (ranks || pipeline) {
    if (func.getBody().empty() || !func.getBody().hasOneBlock())
      return makeError("@" + func.getName() + " must have a single block");
    FailureOr<mlir::kiln::StageAssignment> stages =
        mlir::kiln::assignStages(func);
    if (failed(stages))
      return makeError("@" + func.getName() +
                       ": inconsistent pipeline stages (see the error above)");
    int64_t tp = ranks ? ranks.getInt() : 1;
    auto replicasAttr = module->getAttrOfType<IntegerAttr>(
        mlir::kiln::KilnDialect::getAttentionReplicasAttrName());
    int64_t replicas = replicasAttr ? replicasAttr.getInt() : 1;
    if (replicas < 1 || tp % replicas != 0)
      return makeError(llvm::formatv("{0} attention replicas do not divide "
                                     "{1} ranks",
                                     replicas, tp));
    if (precision == Precision::F64)
      return createTensorParallel<double>(func, checkpoint, tp, replicas,
                                          std::move(*stages));
    return createTensorParallel<float>(func, checkpoint, tp, replicas,
                                       std::move(*stages));
  }
  if (func.getBody().empty())
    return makeError("@" + func.getName() + " has no body");
  if (!func.getBody().hasOneBlock())
    return makeError("@" + func.getName() + " must have a single block");
  std::unique_ptr<Evaluator> evaluator;
  llvm::Error e = llvm::Error::success();
  if (precision == Precision::F64) {
    auto impl = std::make_unique<EvaluatorImpl<double>>(func);
    e = impl->bindWeights(checkpoint);
    evaluator = std::move(impl);
  } else {
    auto impl = std::make_unique<EvaluatorImpl<float>>(func);
    e = impl->bindWeights(checkpoint);
    evaluator = std::move(impl);
  }
  if (e)
    return std::move(e);
  return evaluator;
}

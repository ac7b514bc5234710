//===- kiln-ref.cpp - The reference evaluator's command line --------------===//
//
//   kiln-ref <checkpoint-dir> (--tokens 1,2,3 | --tokens-file FILE)
//            [--dump-logits OUT.npy] [--max-new-tokens N] [--f64]
//
// A graph with data-parallel attention replicas (--graph, from kilnc --dp)
// takes one --tokens-file and, if any, one --dump-logits per replica.
//
// Imports the checkpoint, evaluates the prompt with the reference evaluator
// and optionally continues it greedily. This command line is a contract other
// tools and checks depend on: change it only compatibly.
//
//===----------------------------------------------------------------------===//

#include "kiln/Import/Llama4Import.h"
#include "kiln/InitAll.h"
#include "kiln/Reference/Evaluator.h"
#include "kiln/runtime/Npy.h"
#include "kiln/runtime/Safetensors.h"
#include "kiln/runtime/Tokens.h"
#include "kiln/runtime/ToolGuards.h"

#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/Verifier.h"
#include "mlir/Parser/Parser.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/WithColor.h"

#include <chrono>

using namespace llvm;

static cl::OptionCategory category("kiln-ref options");
static cl::opt<std::string> checkpointDir(cl::Positional, cl::Required,
                                          cl::desc("<checkpoint-dir>"),
                                          cl::cat(category));
static cl::opt<std::string> tokensText("tokens", cl::cat(category),
                                       cl::desc("Prompt token ids: 1,2,3"));
static cl::list<std::string>
    tokensFiles("tokens-file", cl::cat(category),
                cl::desc("File of token ids separated by white space and/or "
                         "commas (one per replica of a graph with "
                         "data-parallel attention)"));
static cl::list<std::string>
    dumpLogits("dump-logits", cl::cat(category),
               cl::desc("Write the float32 logits of every prompt position "
                        "([T, vocab], .npy; one per replica)"));
static cl::opt<unsigned> maxNewTokens("max-new-tokens", cl::init(0),
                                      cl::cat(category),
                                      cl::desc("Greedy continuation length"));
static cl::opt<unsigned>
    maxContext("max-context", cl::init(0), cl::cat(category),
               cl::desc("The longest run allowed (default: the model's "
                        "max_position_embeddings)"));
static cl::opt<bool> useF64("f64", cl::cat(category),
                            cl::desc("Evaluate in float64 (default float32)"));
static cl::opt<bool> ignoreEos("ignore-eos", cl::cat(category),
                               cl::desc("Do not stop the continuation at an "
                                        "end-of-sequence token"));
static cl::opt<unsigned> stepSize(
    "step", cl::init(0), cl::cat(category),
    cl::desc("Evaluate the prompt in steps of this many tokens through the "
             "KV state (1 = token-by-token decode; default: all at once)"));
static cl::opt<std::string>
    graphFile("graph", cl::cat(category),
              cl::desc("Evaluate this kiln MLIR file (its @forward) instead "
                       "of importing the checkpoint's config"));

static int fail(const Twine &message) {
  WithColor::error(errs(), "kiln-ref") << message << "\n";
  return 1;
}

static int64_t argmax(const std::vector<double> &row, size_t begin,
                      size_t width) {
  size_t best = 0;
  for (size_t i = 1; i < width; ++i)
    if (row[begin + i] > row[begin + best])
      best = i;
  return static_cast<int64_t>(best);
}

/// Evaluates each replica's prompt (one, unless the graph has data-parallel
/// attention replicas), all replicas stepped together: a replica whose
/// prompt or continuation is done takes no tokens in a step. Prints and
/// dumps each one's results; a lone sequence's lines carry no replica.
static int evaluatePrompts(kiln::ref::Evaluator &evaluator,
                           const std::vector<std::vector<int64_t>> &prompts,
                           const std::vector<int64_t> &eosIds) {
  size_t replicas = prompts.size(), longest = 0, total = 0;
  for (const std::vector<int64_t> &p : prompts) {
    longest = std::max(longest, p.size());
    total += p.size();
  }
  auto label = [&](size_t d) {
    return replicas == 1 ? std::string() : "replica " + std::to_string(d) + " ";
  };
  size_t step = stepSize == 0 ? longest : stepSize;
  std::vector<std::vector<double>> logits(replicas);
  int64_t vocab = 0;
  auto start = std::chrono::steady_clock::now();
  for (size_t begin = 0; begin < longest; begin += step) {
    std::vector<std::vector<int64_t>> tokens(replicas), positions(replicas);
    for (size_t d = 0; d < replicas; ++d)
      for (size_t i = begin; i < std::min(begin + step, prompts[d].size());
           ++i) {
        tokens[d].push_back(prompts[d][i]);
        positions[d].push_back(static_cast<int64_t>(i));
      }
    std::vector<std::vector<double>> part;
    if (Error e = evaluator.runReplicas(tokens, positions, part, vocab))
      return fail(toString(std::move(e)));
    for (size_t d = 0; d < replicas; ++d)
      logits[d].insert(logits[d].end(), part[d].begin(), part[d].end());
  }
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  errs() << "kiln-ref: prefill of " << total << " tokens in "
         << format("%.2f", seconds) << " s (" << (useF64 ? "f64" : "f32")
         << ")\n";
  std::string error;
  std::vector<int64_t> next(replicas);
  for (size_t d = 0; d < replicas; ++d) {
    const std::vector<int64_t> &prompt = prompts[d];
    if (!dumpLogits.empty()) {
      std::vector<float> narrow(logits[d].begin(), logits[d].end());
      if (!kiln::writeNpyF32(dumpLogits[d],
                             {static_cast<int64_t>(prompt.size()), vocab},
                             narrow.data(), error))
        return fail(error);
    }
    next[d] = argmax(logits[d], (prompt.size() - 1) * vocab, vocab);
    outs() << label(d) << "next token: " << next[d] << "\n";
  }
  if (maxNewTokens == 0)
    return 0;

  // Greedy continuation in lockstep, as the single-sequence path does it.
  std::vector<std::vector<int64_t>> generated(replicas);
  std::vector<bool> active(replicas, true), stoppedAtEos(replicas, false);
  size_t running = replicas;
  while (running > 0) {
    std::vector<std::vector<int64_t>> tokens(replicas), positions(replicas);
    for (size_t d = 0; d < replicas; ++d) {
      if (!active[d])
        continue;
      generated[d].push_back(next[d]);
      bool eos = !ignoreEos && llvm::is_contained(eosIds, next[d]);
      stoppedAtEos[d] = eos;
      if (eos || generated[d].size() == maxNewTokens) {
        active[d] = false;
        --running;
        continue;
      }
      tokens[d] = {next[d]};
      positions[d] = {
          static_cast<int64_t>(prompts[d].size() + generated[d].size() - 1)};
    }
    if (running == 0)
      break;
    std::vector<std::vector<double>> step;
    if (Error e = evaluator.runReplicas(tokens, positions, step, vocab))
      return fail(toString(std::move(e)));
    for (size_t d = 0; d < replicas; ++d)
      if (active[d])
        next[d] = argmax(step[d], 0, vocab);
  }
  for (size_t d = 0; d < replicas; ++d) {
    outs() << label(d) << "generated:";
    for (int64_t t : generated[d])
      outs() << " " << t;
    outs() << (stoppedAtEos[d] ? " (end of sequence)" : "") << "\n";
  }
  return 0;
}

int main(int argc, char **argv) {
  InitLLVM init(argc, argv);
  // After InitLLVM, whose own out-of-memory handler aborts with a stack dump.
  kiln::installToolGuards("kiln-ref");
  cl::HideUnrelatedOptions(category);
  cl::ParseCommandLineOptions(argc, argv,
                              "Kiln reference evaluator (the oracle)\n");

  if (tokensText.empty() == tokensFiles.empty())
    return fail("give exactly one of --tokens and --tokens-file");
  std::vector<std::vector<int64_t>> prompts;
  std::string error;
  for (const std::string &file : tokensFiles)
    if (!kiln::readTokenFile(file, prompts.emplace_back(), error))
      return fail(error);
  if (!tokensText.empty() &&
      !kiln::parseTokenList(tokensText, "--tokens", prompts.emplace_back(),
                            error))
    return fail(error);
  if (!dumpLogits.empty() && dumpLogits.size() != prompts.size())
    return fail(std::to_string(prompts.size()) + " prompts but " +
                std::to_string(dumpLogits.size()) + " --dump-logits files");

  mlir::DialectRegistry registry;
  mlir::kiln::registerAllKilnDialects(registry);
  mlir::MLIRContext context(registry);
  mlir::OwningOpRef<mlir::ModuleOp> module;
  std::vector<int64_t> eosIds;
  if (!graphFile.empty()) {
    module = mlir::parseSourceFile<mlir::ModuleOp>(graphFile, &context);
    if (!module)
      return fail(graphFile + ": cannot parse the kiln graph");
  } else {
    auto imported = kiln::importLlama4Checkpoint(context, checkpointDir);
    if (!imported)
      return fail(toString(imported.takeError()));
    module = std::move(*imported);
  }
  if (auto eos = (*module)->getAttrOfType<mlir::DenseI64ArrayAttr>(
          "kiln.eos_token_ids"))
    eosIds.assign(eos.asArrayRef().begin(), eos.asArrayRef().end());
  auto forward = module->lookupSymbol<mlir::func::FuncOp>("forward");
  if (!forward)
    return fail("the graph has no @forward function");
  // A run past the model's context is refused before the evaluator sizes
  // anything for it, unless the caller raises the bound.
  int64_t allowed = maxContext;
  if (auto positions = (*module)->getAttrOfType<mlir::IntegerAttr>(
          "kiln.max_position_embeddings");
      positions && allowed == 0)
    allowed = positions.getInt();
  for (const std::vector<int64_t> &p : prompts) {
    int64_t length = static_cast<int64_t>(p.size()) + maxNewTokens;
    if (allowed > 0 && length > allowed)
      return fail("the prompt (" + std::to_string(p.size()) +
                  " tokens) and --max-new-tokens " +
                  std::to_string(maxNewTokens) + " reach position " +
                  std::to_string(length) + ", past the " +
                  (maxContext > 0 ? std::string("--max-context ")
                                  : std::string("model's "
                                                "max_position_embeddings ")) +
                  std::to_string(allowed) +
                  (maxContext > 0 ? "" : " (--max-context N raises it)"));
  }

  std::unique_ptr<kiln::Checkpoint> checkpoint =
      kiln::Checkpoint::open(checkpointDir, error);
  if (!checkpoint)
    return fail(error);
  if (!checkpoint->hasWeights())
    return fail(checkpointDir +
                ": no weights (model.safetensors or "
                "model.safetensors.index.json) to evaluate with");
  auto evaluator = kiln::ref::Evaluator::create(
      forward, *checkpoint,
      useF64 ? kiln::ref::Precision::F64 : kiln::ref::Precision::F32);
  if (!evaluator)
    return fail(toString(evaluator.takeError()));
  int64_t replicas = (*evaluator)->numReplicas();
  if (static_cast<int64_t>(prompts.size()) != replicas)
    return fail("the graph has " + std::to_string(replicas) +
                (replicas == 1 ? " replica"
                               : " data-parallel attention "
                                 "replicas") +
                ", but " + std::to_string(prompts.size()) +
                " prompts were given (one --tokens-file per replica)");
  return evaluatePrompts(**evaluator, prompts, eosIds);
}

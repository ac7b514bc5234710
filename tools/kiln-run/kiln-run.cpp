//===- kiln-run.cpp - Run a compiled engine -------------------------------===//
//
//   kiln-run model.kiln --checkpoint <dir> (--tokens 1,2,3 | --tokens-file F)
//            [--dump-logits OUT.npy] [--max-new-tokens N] [--temperature T]
//            [--top-k K] [--top-p P] [--seed S] [--ignore-eos]
//            [--step N | --decode-from N] [--kv-tokens N]
//
// Same logits contract as kiln-ref (float32 [T, vocab] .npy of every prompt
// position); prints the continuation and prefill / decode tokens per second.
// An engine with data-parallel attention replicas (kilnc --dp) takes one
// prompt and one dump per replica (--tokens / --tokens-file and
// --dump-logits repeated, in replica order) or one prompt for all; the
// first rank of each replica prints its lines, named by the replica, and
// replica r samples with seed S + r.
// MLIR-free: it links only the runtime, through its C API (kiln/kiln.h).
//
//===----------------------------------------------------------------------===//

#include "kiln/kiln.hpp"
#include "kiln/runtime/Npy.h"
#include "kiln/runtime/Tokens.h"
#include "kiln/runtime/ToolGuards.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace {

/// An error ends every rank of a multi-rank job, also one met while loading:
/// the other ranks may be waiting in a collective (the NCCL id's broadcast,
/// ncclCommInitRank) or in MPI_Finalize for this one. Without MPI it only
/// returns.
int fail(const std::string &message) {
  std::fprintf(stderr, "kiln-run: error: %s\n", message.c_str());
  kiln::api::Model::abortRanks(1);
  return 1;
}

void usage() {
  std::fprintf(
      stderr,
      "usage: kiln-run MODEL.kiln --checkpoint DIR (--tokens LIST | "
      "--tokens-file FILE)\n"
      "                [--dump-logits OUT.npy] [--max-new-tokens N]\n"
      "                [--temperature T] [--top-k K] [--top-p P] "
      "[--seed S]\n"
      "                [--ignore-eos] [--step N | --decode-from N]\n"
      "                [--device auto|host|cuda] [--kv-tokens N] "
      "[--max-context N]\n"
      "                [--threads N]\n"
      "--kv-tokens: context to reserve KV caches for (default: the "
      "prompt plus\n"
      "             --max-new-tokens; 0 grows them as needed)\n"
      "--max-context: the longest run allowed (default: the model's "
      "max_position_embeddings)\n"
      "engines with attention replicas: --tokens/--tokens-file and "
      "--dump-logits once per\n"
      "             replica, in order (or one prompt for all); replica r "
      "samples with --seed S + r\n"
      "--threads: threads of the host kernels (default: every core; "
      "KILN_THREADS)\n");
}

bool parseNumber(const char *text, double &out) {
  char *end;
  out = std::strtod(text, &end);
  return *text && !*end && std::isfinite(out);
}

} // namespace

int main(int argc, char **argv) {
  kiln::installToolGuards("kiln-run");
  std::string engine, checkpoint;
  // One prompt (and dump) per data-parallel attention replica, or one for
  // all of them; each from --tokens or --tokens-file, in order.
  std::vector<std::pair<std::string, bool>> promptArgs; // text, is a file
  std::vector<std::string> dumps;
  std::string device = "auto";
  long maxNew = 0, step = 0, decodeFrom = 0, kvTokens = -1, maxContext = 0;
  long threads = 0;
  bool ignoreEos = false;
  double temperature = 0, topP = 1;
  int64_t topK = 0;
  uint64_t seed = 0;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&](const char *name) -> const char * {
      if (i + 1 >= argc) {
        fail(std::string("missing value for ") + name);
        std::exit(1);
      }
      return argv[++i];
    };
    double number;
    if (arg == "--checkpoint")
      checkpoint = value("--checkpoint");
    else if (arg == "--tokens")
      promptArgs.push_back({value("--tokens"), false});
    else if (arg == "--tokens-file")
      promptArgs.push_back({value("--tokens-file"), true});
    else if (arg == "--dump-logits")
      dumps.push_back(value("--dump-logits"));
    else if (arg == "--ignore-eos")
      ignoreEos = true;
    else if (arg == "--device") {
      device = value("--device");
      if (device != "auto" && device != "host" && device != "cuda")
        return fail("--device must be auto, host or cuda, got '" + device +
                    "'");
    } else if (arg == "--max-new-tokens" || arg == "--top-k" ||
               arg == "--seed" || arg == "--step" || arg == "--decode-from" ||
               arg == "--kv-tokens" || arg == "--max-context" ||
               arg == "--threads") {
      const char *text = value(arg.c_str());
      // Counts of tokens are bounded far past any model (2^40); a seed by
      // what a double holds exactly.
      double limit = arg == "--seed" ? 9007199254740992.0 : 1099511627776.0;
      if (!parseNumber(text, number) || number < 0 ||
          number != std::floor(number) || number > limit)
        return fail(arg + " expects an integer in [0, " +
                    std::to_string(static_cast<long long>(limit)) + "], got '" +
                    text + "'");
      if (arg == "--max-new-tokens")
        maxNew = static_cast<long>(number);
      else if (arg == "--top-k")
        topK = static_cast<int64_t>(number);
      else if (arg == "--seed")
        seed = static_cast<uint64_t>(number);
      else if (arg == "--decode-from")
        decodeFrom = static_cast<long>(number);
      else if (arg == "--kv-tokens")
        kvTokens = static_cast<long>(number);
      else if (arg == "--max-context")
        maxContext = static_cast<long>(number);
      else if (arg == "--threads") {
        if (number < 1 || number > 4096)
          return fail("--threads expects 1 to 4096, got '" + std::string(text) +
                      "'");
        threads = static_cast<long>(number);
      } else
        step = static_cast<long>(number);
    } else if (arg == "--temperature" || arg == "--top-p") {
      const char *text = value(arg.c_str());
      if (!parseNumber(text, number) || number < 0 ||
          (arg == "--top-p" && (number <= 0 || number > 1)))
        return fail(arg + " got an invalid value '" + text + "'");
      (arg == "--temperature" ? temperature : topP) = number;
    } else if (arg == "-h" || arg == "--help") {
      usage();
      return 0;
    } else if (!arg.empty() && arg[0] == '-') {
      usage();
      return fail("unknown option '" + arg + "'");
    } else if (engine.empty()) {
      engine = arg;
    } else {
      usage();
      return fail("unexpected argument '" + arg + "'");
    }
  }
  if (engine.empty() || checkpoint.empty()) {
    usage();
    return fail("an engine and --checkpoint are required");
  }
  if (promptArgs.empty())
    return fail("give --tokens or --tokens-file (one per attention replica, "
                "or one for all)");
  std::vector<std::vector<int64_t>> prompts;
  std::string error;
  for (const auto &[text, isFile] : promptArgs) {
    std::vector<int64_t> prompt;
    if (!(isFile ? kiln::readTokenFile(text, prompt, error)
                 : kiln::parseTokenList(text, "--tokens", prompt, error)))
      return fail(error);
    prompts.push_back(std::move(prompt));
  }

  // An engine is compiled for one target: `auto` runs it there (an sm_90a
  // engine on the GPU), `host` and `cuda` insist on one and say why not.
  kiln_device where = device == "host"   ? KILN_DEVICE_HOST
                      : device == "cuda" ? KILN_DEVICE_CUDA
                                         : KILN_DEVICE_AUTO;
  if (where == KILN_DEVICE_CUDA && kiln::api::cudaDevices(error) == 0)
    return fail(error);
  auto sampler =
      kiln::api::Sampler::create(temperature, topK, topP, seed, error);
  if (!sampler)
    return fail(error);
  std::fprintf(stderr, "kiln-run: loading %s and binding weights from %s\n",
               engine.c_str(), checkpoint.c_str());
  // The run's whole context, reserved up front: the KV caches never grow
  // (and a decode graph is never recaptured for it) within the run.
  auto model = kiln::api::Model::load(engine, checkpoint, error, where,
                                      static_cast<int>(threads));
  if (!model)
    return fail(error);
  // Data-parallel attention: replica r runs prompt r (or the one prompt)
  // and writes dump r; its first rank prints, with the replica named.
  int64_t replicas = model->replicas(), replica = model->replica();
  if (prompts.size() != 1 && static_cast<int64_t>(prompts.size()) != replicas)
    return fail(std::to_string(prompts.size()) + " prompts for an engine of " +
                std::to_string(replicas) + " attention replica" +
                (replicas == 1 ? "" : "s") + ": give one, or one per replica");
  if (!dumps.empty() && static_cast<int64_t>(dumps.size()) != replicas)
    return fail(std::to_string(dumps.size()) +
                " --dump-logits files for an engine of " +
                std::to_string(replicas) + " attention replica" +
                (replicas == 1 ? "" : "s") + ": give one per replica");
  auto promptOf = [&](int64_t r) -> const std::vector<int64_t> & {
    return prompts[prompts.size() == 1 ? 0 : static_cast<size_t>(r)];
  };
  const std::vector<int64_t> &prompt = promptOf(replica);
  std::string dumpLogits = dumps.empty() ? "" : dumps[replica];
  // Replicas sampling one prompt draw different continuations: replica r
  // draws with seed S + r (replica 0 as a one-replica engine would).
  if (replica > 0 && !(sampler = kiln::api::Sampler::create(
                           temperature, topK, topP,
                           seed + static_cast<uint64_t>(replica), error)))
    return fail(error);
  // A run past the model's context is refused before anything is sized
  // for it, unless the caller raises the bound.
  long context = maxContext > 0 ? maxContext : model->maxPositions();
  long length = static_cast<long>(prompt.size()) + maxNew;
  if (context > 0 && length > context)
    return fail("the prompt (" + std::to_string(prompt.size()) +
                " tokens) and --max-new-tokens " + std::to_string(maxNew) +
                " reach position " + std::to_string(length) + ", past the " +
                (maxContext > 0 ? std::string("--max-context ")
                                : std::string("model's "
                                              "max_position_embeddings ")) +
                std::to_string(context) +
                (maxContext > 0 ? "" : " (--max-context N raises it)"));
  if (kvTokens < 0)
    kvTokens = length;
  auto session = kiln::api::Session::open(*model, error, kvTokens);
  if (!session)
    return fail(error);
  int64_t vocab = model->vocabSize();
  // Every rank of a tensor-parallel group runs the same steps and computes
  // the same logits: the first rank of each replica prints them and writes
  // the dump.
  bool leader = model->replicaRank() == 0;
  if (!leader && !std::freopen("/dev/null", "w", stdout))
    return fail("cannot silence the output of rank " +
                std::to_string(model->rank()));
  std::string who =
      replicas > 1 ? "replica " + std::to_string(replica) + ": " : "";

  // The prompt goes in one step, or in steps of --step tokens, or (with
  // --decode-from N) as an N-token prefill followed by one token at a time.
  auto chunksOf = [&](const std::vector<int64_t> &p) {
    std::vector<std::pair<size_t, size_t>> chunks;
    size_t chunk = step > 0 ? static_cast<size_t>(step) : p.size();
    for (size_t begin = 0; begin < p.size();) {
      size_t n = std::min(chunk, p.size() - begin);
      if (decodeFrom > 0)
        n = begin == 0 ? std::min<size_t>(decodeFrom, p.size()) : 1;
      chunks.push_back({begin, n});
      begin += n;
    }
    return chunks;
  };
  std::vector<std::pair<size_t, size_t>> chunks = chunksOf(prompt);
  // Replicas step together: every rank takes as many steps as the longest
  // replica's prefill and whole generation; a replica with nothing left
  // (done, or stopped at an end-of-sequence token) takes idle steps.
  long decodeSteps = maxNew > 0 ? maxNew - 1 : 0;
  size_t lockstep = 0;
  for (int64_t r = 0; replicas > 1 && r < replicas; ++r)
    lockstep = std::max(lockstep, chunksOf(promptOf(r)).size() + decodeSteps);
  auto idleUntil = [&](size_t &taken) -> std::string {
    for (; taken < lockstep; ++taken)
      if (std::string e = session->idle(); !e.empty())
        return e;
    return "";
  };
  size_t taken = 0; // steps, this replica's and idle

  using Clock = std::chrono::steady_clock;
  std::vector<float> logits, part;
  auto start = Clock::now();
  // Without dumps each token is picked where the engine runs (on the GPU
  // for sm_90a engines, greedy or sampled): no logits are copied back.
  bool onDevice = dumpLogits.empty();
  int64_t next = -1;
  for (auto [begin, n] : chunks) {
    std::vector<int64_t> ids(prompt.begin() + begin,
                             prompt.begin() + begin + n);
    std::vector<int64_t> positions(n);
    std::iota(positions.begin(), positions.end(), static_cast<int64_t>(begin));
    // Every row's logits only when they are dumped: otherwise the LM head
    // runs on the step's last row alone.
    // The sampler draws once per generated token: the prompt's last step.
    bool last = begin + n == prompt.size();
    error = !onDevice ? session->logits(ids, positions, part)
            : last    ? session->next(ids, positions, sampler.get(), next)
                      : session->next(ids, positions, nullptr, next);
    if (!error.empty())
      return fail(error);
    ++taken;
    if (dumpLogits.empty())
      logits = part;
    else
      logits.insert(logits.end(), part.begin(), part.end());
  }
  double prefill = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf("%sprefill: %zu tokens in %.3f s (%.1f tokens/s)\n", who.c_str(),
              prompt.size(), prefill, prompt.size() / prefill);
  if (!dumpLogits.empty() && leader &&
      !kiln::writeNpyF32(dumpLogits,
                         {static_cast<int64_t>(prompt.size()), vocab},
                         logits.data(), error))
    return fail(error);

  if (!onDevice)
    next = sampler->pick(logits.data() + logits.size() - vocab, vocab);
  std::printf("%snext token: %lld\n", who.c_str(),
              static_cast<long long>(next));
  std::vector<int64_t> generated;
  const std::vector<int64_t> eos = model->eosTokens();
  int64_t position = static_cast<int64_t>(prompt.size());
  bool stopped = false;
  start = Clock::now();
  long decoded = 0;
  for (long i = 0; i < maxNew; ++i) {
    generated.push_back(next);
    if (!ignoreEos && std::find(eos.begin(), eos.end(), next) != eos.end()) {
      stopped = true;
      break;
    }
    if (i + 1 == maxNew)
      break;
    int64_t at = position++;
    error = onDevice ? session->next({next}, {at}, sampler.get(), next)
                     : session->logits({next}, {at}, part);
    if (!error.empty())
      return fail(error);
    ++taken;
    ++decoded;
    if (!onDevice)
      next = sampler->pick(part.data(), vocab);
  }
  double decode = std::chrono::duration<double>(Clock::now() - start).count();
  if (!(error = idleUntil(taken)).empty())
    return fail(error);
  if (maxNew == 0)
    return 0;
  std::printf("%sgenerated:", who.c_str());
  for (int64_t t : generated)
    std::printf(" %lld", static_cast<long long>(t));
  std::printf("%s\n", stopped ? " (end of sequence)" : "");
  if (decoded > 0)
    std::printf("%sdecode: %ld steps in %.3f s (%.1f tokens/s)\n", who.c_str(),
                decoded, decode, decoded / decode);
  return 0;
}

//===- kilnc.cpp - The Kiln compiler driver -------------------------------===//
//
//   kilnc import <checkpoint-dir> [-o model.mlir]
//     imports a Hugging Face Llama 4 checkpoint folder into the kiln dialect;
//   kilnc <checkpoint-dir> [--report] [-o kernels.mlir]
//     imports, fuses and partitions it into kernels, prints the cost report
//     and/or writes the kernel graph;
//   kilnc <checkpoint-dir> --target host|sm_90a -o model.kiln
//     also generates the kernels and writes an engine for kiln-run;
//     for sm_90a, --emit-ptx writes the PTX and --kernel-resources prints
//     what ptxas reports per GPU function.
//
//===----------------------------------------------------------------------===//

#include "dialects/kiln/KilnOps.h"
#include "kiln/Analysis/CostReport.h"
#include "kiln/Analysis/ParallelPlan.h"
#include "kiln/Import/Llama4Import.h"
#include "kiln/InitAll.h"
#include "kiln/Pipelines/Pipelines.h"
#include "kiln/Target/Cuda/EngineWriter.h"
#include "kiln/Target/Host/EngineWriter.h"
#include "kiln/Target/Host/SharedObject.h"
#include "kiln/Transforms/Passes.h"
#include "kiln/runtime/ToolGuards.h"

#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Support/FileUtilities.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/Process.h"
#include "llvm/Support/ToolOutputFile.h"
#include "llvm/Support/WithColor.h"

using namespace llvm;

// --help lists these groups only (not LLVM's own options).
static cl::OptionCategory outputCategory("Input and output");
static cl::OptionCategory targetCategory("Code generation");
static cl::OptionCategory reportCategory("Cost report (--report)");
static cl::OptionCategory parallelCategory("Parallelism");

static cl::SubCommand importCommand(
    "import", "Import a Hugging Face Llama 4 checkpoint folder as kiln MLIR");
static cl::opt<std::string> checkpointDir(cl::Positional, cl::Required,
                                          cl::desc("<checkpoint-dir>"),
                                          cl::sub(importCommand),
                                          cl::cat(outputCategory));
static cl::opt<std::string>
    outputPath("o", cl::desc("Output file (default: stdout)"),
               cl::value_desc("file"), cl::init("-"), cl::sub(importCommand),
               cl::cat(outputCategory));

// The main command: import, fuse, partition; report and/or write the kernel
// graph. (Engines and code generation come with the host and sm_90a targets.)
static cl::opt<std::string> mainDir(cl::Positional,
                                    cl::desc("<checkpoint-dir>"),
                                    cl::cat(outputCategory));
static cl::opt<std::string>
    mainOutput("o",
               cl::desc("Write the engine (with --target), else the fused, "
                        "partitioned kiln graph, to this file"),
               cl::value_desc("file"), cl::cat(outputCategory));
static cl::opt<std::string>
    target("target",
           cl::desc("Write an engine for this target to -o (host, sm_90a)"),
           cl::value_desc("target"), cl::cat(targetCategory));
static cl::opt<std::string>
    emitPtx("emit-ptx", cl::desc("sm_90a: also write the kernels' PTX here"),
            cl::value_desc("file"), cl::cat(targetCategory));
static cl::opt<std::string> hostCpu(
    "cpu", cl::init("native"),
    cl::desc("Host engines: the x86-64 level the kernels may use "
             "(native, the default: the highest this machine has; or "
             "x86-64-v2, x86-64-v3 (AVX2), x86-64-v4 (AVX-512) for engines "
             "that run elsewhere); the engine refuses to load on a CPU "
             "without it"));
static cl::opt<bool> hostThreads(
    "host-threads", cl::init(true),
    cl::desc("Host engines: run the kernels on a pool of threads (libomp); "
             "--host-threads=false for one thread"));
static cl::opt<bool> kernelResources(
    "kernel-resources",
    cl::desc("sm_90a: print registers, spills and shared memory per GPU "
             "function (from ptxas)"),
    cl::cat(targetCategory));
static cl::opt<bool> report("report",
                            cl::desc("Print the per-kernel cost report"),
                            cl::cat(reportCategory));
static cl::opt<int64_t> reportPrefill("report-prefill-tokens", cl::init(4096),
                                      cl::desc("Prefill length in the report"),
                                      cl::cat(reportCategory));
static cl::opt<int64_t>
    reportContext("report-decode-context", cl::init(4096),
                  cl::desc("Cached tokens before the reported decode step"),
                  cl::cat(reportCategory));
static cl::opt<int64_t> reportMaxContext(
    "report-max-context", cl::init(131072),
    cl::desc("Context length the KV cache pools are sized for"),
    cl::cat(reportCategory));

static cl::opt<int64_t> tensorParallel(
    "tp", cl::init(1),
    cl::desc("Split the graph over this many tensor-parallel ranks "
             "(kiln-shard-tensor-parallel; -o writes the graph every rank "
             "runs)"),
    cl::value_desc("ranks"), cl::cat(parallelCategory));

static cl::opt<int64_t> pipelineParallel(
    "pp", cl::init(1),
    cl::desc("Split the layers into this many pipeline stages "
             "(kiln-pipeline-stages), each stage a --tp group: the engine "
             "runs on tp x pp ranks"),
    cl::value_desc("stages"), cl::cat(parallelCategory));

static cl::opt<int64_t> expertParallel(
    "ep", cl::init(1),
    cl::desc("Divide the routed experts into this many expert-parallel "
             "groups of the tp x dp ranks (whole experts per group, each "
             "split within it); --ep alone implies --tp of the same size, "
             "--ep above --tp implies --dp"),
    cl::value_desc("groups"), cl::cat(parallelCategory));

static cl::opt<int64_t> attentionReplicas(
    "dp", cl::init(1),
    cl::desc("Data-parallel attention: this many replicas of --tp ranks, "
             "each running its own sequence, with the routed experts "
             "divided over all tp x dp ranks and tokens exchanged around "
             "each MoE block; --ep wider than --tp implies --dp ep / tp. "
             "Engines run it (one process per rank, a sequence per "
             "replica)"),
    cl::value_desc("replicas"), cl::cat(parallelCategory));

static cl::opt<std::string> tokenExchange(
    "exchange", cl::init("auto"),
    cl::desc("How MoE blocks of a graph with attention replicas exchange "
             "tokens: all-to-all (each routed row to the ranks holding its "
             "expert), gather (all-gather + reduce-scatter), or auto (the one "
             "that moves fewer bytes by the cost model)"),
    cl::value_desc("auto|all-to-all|gather"), cl::cat(parallelCategory));

static cl::opt<int64_t> fusedAllReduceRows(
    "fused-all-reduce-rows", cl::init(-1),
    cl::desc("Largest step, in rows per rank, for which a block-ending "
             "all-reduce becomes a gather of the ranks' partial sums that "
             "the next residual add + RMS norm sums (one communication "
             "step, no summed buffer); larger steps all-reduce. -1: the "
             "cost model's limit (none at 2 ranks); 0: always all-reduce"),
    cl::value_desc("rows"), cl::cat(parallelCategory));

static cl::opt<bool>
    plan("plan",
         cl::desc("Print memory per GPU and estimated step times of every TP x "
                  "EP x PP x DP layout of --gpus GPUs, and the one to use"),
         cl::cat(parallelCategory));
static cl::opt<int64_t> planGpus("gpus", cl::init(8),
                                 cl::desc("GPUs to plan for (--plan)"),
                                 cl::cat(parallelCategory));
static cl::opt<int64_t>
    planContext("context", cl::init(8192),
                cl::desc("Context per sequence the plan sizes the KV cache "
                         "for (--plan)"),
                cl::cat(parallelCategory));
static cl::opt<int64_t>
    planBatch("batch", cl::init(1),
              cl::desc("Sequences decoded together per replica (--plan)"),
              cl::cat(parallelCategory));

/// Prints `module` to `path` ("-" for stdout).
static int writeModule(mlir::ModuleOp module, StringRef path) {
  std::string error;
  auto output = mlir::openOutputFile(path, &error);
  if (!output) {
    WithColor::error(errs(), "kilnc") << error << "\n";
    return 1;
  }
  module->print(output->os());
  output->os() << "\n";
  output->keep();
  return 0;
}

static int runCompile() {
  mlir::DialectRegistry registry;
  mlir::kiln::registerAllKilnDialects(registry);
  mlir::MLIRContext context(registry);
  bool progress = sys::Process::StandardErrIsDisplayed();
  auto stage = [&](const char *name) {
    if (progress)
      errs() << "kilnc: " << name << "\n";
  };
  stage("importing");
  auto module = kiln::importLlama4Checkpoint(context, mainDir);
  if (!module) {
    WithColor::error(errs(), "kilnc") << toString(module.takeError()) << "\n";
    return 1;
  }
  if (plan) {
    mlir::kiln::PlanOptions options;
    options.gpus = planGpus;
    options.context = planContext;
    options.batch = planBatch;
    if (options.gpus < 1 || options.gpus > 1000000 || options.context < 1 ||
        options.batch < 1) {
      WithColor::error(errs(), "kilnc")
          << "--gpus must be in [1, 1000000], --context and --batch at "
             "least 1\n";
      return 1;
    }
    auto shape = mlir::kiln::modelShapeOf(**module);
    if (mlir::failed(shape) ||
        mlir::failed(mlir::kiln::writeParallelPlan(*shape, options, outs())))
      return 1;
    if (target.empty() && !report && mainOutput.empty())
      return 0;
  }
  // Bounded so that products of them cannot overflow; no model has more
  // heads, layers or experts to split.
  constexpr int64_t kMaxSplit = 1 << 20;
  for (auto [flag, value] :
       {std::pair<const char *, int64_t>{"--tp", tensorParallel},
        {"--pp", pipelineParallel},
        {"--ep", expertParallel},
        {"--dp", attentionReplicas}}) {
    if (value < 1) {
      WithColor::error(errs(), "kilnc") << flag << " must be at least 1\n";
      return 1;
    }
    if (value > kMaxSplit) {
      WithColor::error(errs(), "kilnc")
          << flag << " " << value << " is above the largest split, "
          << kMaxSplit << "\n";
      return 1;
    }
  }
  if (expertParallel > 1 && tensorParallel.getNumOccurrences() == 0 &&
      attentionReplicas.getNumOccurrences() == 0)
    tensorParallel = expertParallel;
  // Expert parallelism wider than tensor parallelism: the extra ranks are
  // attention replicas.
  if (attentionReplicas.getNumOccurrences() == 0 &&
      expertParallel > tensorParallel && expertParallel % tensorParallel == 0)
    attentionReplicas = expertParallel / tensorParallel;
  int64_t worldRanks = tensorParallel * attentionReplicas;
  if (worldRanks % expertParallel != 0) {
    WithColor::error(errs(), "kilnc")
        << "--ep " << expertParallel << " does not divide the " << worldRanks
        << " ranks (--tp x --dp): expert-parallel groups are made of "
           "whole ranks\n";
    return 1;
  }
  if (tokenExchange != "auto" && tokenExchange != "all-to-all" &&
      tokenExchange != "gather") {
    WithColor::error(errs(), "kilnc")
        << "--exchange must be auto, all-to-all or gather, got '"
        << tokenExchange << "'\n";
    return 1;
  }
  bool allToAll = false;
  if (attentionReplicas > 1) {
    // Both exchanges move bytes in proportion to the tokens, so the one
    // that moves fewer at one token does at every step size.
    int64_t topK = 1;
    (*module)->walk([&](mlir::kiln::MoeOp moe) { topK = moe.getTopK(); });
    mlir::kiln::ReplicaExchangeBytes bytes = mlir::kiln::replicaExchangeBytes(
        attentionReplicas, worldRanks, expertParallel, topK, 1.0, 1);
    allToAll =
        tokenExchange == "all-to-all" ||
        (tokenExchange == "auto" && bytes.allToAll < bytes.gatherScatter);
    if (allToAll && target == "sm_90a")
      WithColor::note(errs(), "kilnc")
          << "sm_90a: a step with the all-to-all token exchange waits on the "
             "host for the routing counts at each MoE block; a decode step "
             "replays a CUDA graph per part between exchanges, and runs the "
             "expert GEMMs on the received pairs launch by launch\n";
  }
  stage("fusing and partitioning");
  mlir::PassManager pm(&context);
  if (worldRanks > 1)
    pm.addPass(mlir::kiln::createShardTensorParallel(
        mlir::kiln::ShardTensorParallelOptions{worldRanks, expertParallel,
                                               attentionReplicas, allToAll}));
  if (pipelineParallel > 1)
    pm.addPass(mlir::kiln::createPipelineStages(
        mlir::kiln::PipelineStagesOptions{pipelineParallel}));
  if (fusedAllReduceRows < -1) {
    WithColor::error(errs(), "kilnc")
        << "--fused-all-reduce-rows must be -1 (the cost model's limit) or "
           ">= 0, got "
        << fusedAllReduceRows << "\n";
    return 1;
  }
  mlir::kiln::buildGraphPipeline(
      pm, mlir::kiln::GraphPipelineOptions{fusedAllReduceRows});
  if (mlir::failed(pm.run(**module)))
    return 1;
  if (report) {
    mlir::kiln::ReportOptions options;
    options.prefillTokens = reportPrefill;
    options.decodeContext = reportContext;
    options.maxContext = reportMaxContext;
    if (options.prefillTokens < 1 || options.decodeContext < 0 ||
        options.maxContext < 1) {
      WithColor::error(errs(), "kilnc") << "report sizes must be positive\n";
      return 1;
    }
    if (mlir::failed(mlir::kiln::writeCostReport(**module, options, outs())))
      return 1;
  }
  if (!target.empty()) {
    if (target != "host" && target != "sm_90a") {
      WithColor::error(errs(), "kilnc")
          << "unknown target '" << target << "' (available: host, sm_90a)\n";
      return 1;
    }
    if (mainOutput.empty() &&
        !(target == "sm_90a" && (kernelResources || !emitPtx.empty()))) {
      WithColor::error(errs(), "kilnc") << "--target needs -o <engine>\n";
      return 1;
    }
    llvm::SmallString<128> workDir;
    if (std::error_code ec = sys::fs::createUniqueDirectory("kilnc", workDir)) {
      WithColor::error(errs(), "kilnc")
          << "cannot create a work directory: " << ec.message() << "\n";
      return 1;
    }
    auto fail = [&](llvm::Error e) {
      sys::fs::remove_directories(workDir);
      WithColor::error(errs(), "kilnc") << toString(std::move(e)) << "\n";
      return 1;
    };
    if (target == "host") {
      stage("generating host code");
      mlir::kiln::HostEngineOptions hostOptions;
      hostOptions.cpu = hostCpu;
      hostOptions.threads = hostThreads;
      if (hostThreads && !mlir::kiln::findOpenMPRuntime())
        WithColor::warning(errs(), "kilnc")
            << "no OpenMP runtime (libomp.so) beside LLVM 22 (install "
               "libomp-22-dev): the host kernels run on one thread\n";
      if (llvm::Error e = mlir::kiln::writeHostEngine(**module, mainOutput,
                                                      workDir, hostOptions))
        return fail(std::move(e));
    } else {
      stage("generating sm_90a code");
      auto engine = mlir::kiln::cuda::buildCudaEngine(**module, workDir);
      if (!engine)
        return fail(engine.takeError());
      if (engine->code.cubin.empty())
        WithColor::warning(errs(), "kilnc")
            << "no ptxas found (set CUDA_HOME or KILN_PTXAS): the engine "
               "holds PTX only, which the driver compiles at load time\n";
      if (!emitPtx.empty()) {
        std::string error;
        auto out = mlir::openOutputFile(emitPtx, &error);
        if (!out)
          return fail(llvm::createStringError(error));
        out->os() << engine->code.ptx;
        out->keep();
      }
      if (kernelResources)
        mlir::kiln::cuda::printKernelResources(*engine, outs());
      if (!mainOutput.empty())
        if (llvm::Error e =
                mlir::kiln::cuda::writeCudaEngine(*engine, mainOutput))
          return fail(std::move(e));
    }
    sys::fs::remove_directories(workDir);
    stage("done");
    return 0;
  }
  if (!mainOutput.empty() && writeModule(**module, mainOutput) != 0)
    return 1;
  if (!report && mainOutput.empty())
    errs() << "kilnc: compiled; nothing requested (use --report or -o)\n";
  return 0;
}

static int runImport() {
  mlir::DialectRegistry registry;
  mlir::kiln::registerAllKilnDialects(registry);
  mlir::MLIRContext context(registry);
  auto module = kiln::importLlama4Checkpoint(context, checkpointDir);
  if (!module) {
    WithColor::error(errs(), "kilnc") << toString(module.takeError()) << "\n";
    return 1;
  }
  return writeModule(**module, outputPath);
}

int main(int argc, char **argv) {
  InitLLVM init(argc, argv);
  // After InitLLVM, whose own out-of-memory handler aborts with a stack dump.
  kiln::installToolGuards("kilnc");
  for (cl::SubCommand *sub : {&cl::SubCommand::getTopLevel(), &importCommand})
    cl::HideUnrelatedOptions(
        {&outputCategory, &targetCategory, &reportCategory}, *sub);
  cl::ParseCommandLineOptions(argc, argv, "Kiln: a compiler for Llama 4\n");
  if (importCommand)
    return runImport();
  if (!mainDir.empty())
    return runCompile();
  WithColor::error(errs(), "kilnc")
      << "no checkpoint given; try 'kilnc <checkpoint-dir> --report', "
         "'kilnc import <checkpoint-dir>' or 'kilnc --help'\n";
  return 1;
}

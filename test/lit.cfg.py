# -*- Python -*-
# lit configuration of the Kiln tests.

import os
import shutil
import subprocess

import lit.formats
from lit.llvm import llvm_config

config.name = "Kiln"
config.test_format = lit.formats.ShTest(not llvm_config.use_lit_shell)
config.suffixes = [".mlir", ".test"]
config.excludes = ["Inputs", "lit.cfg.py", "lit.site.cfg.py", "CMakeLists.txt",
                   "unittests"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.kiln_obj_root, "test")

llvm_config.use_default_substitutions()
llvm_config.add_tool_substitutions(
    ["kiln-opt", "kilnc", "kiln-ref", "kiln-mkmodel", "kiln-compare", "kiln-run",
     "kiln-mlir-runner", "kiln-ptx-forms", "kiln-generate",
     "kiln-capi-sessions"],
    [config.kiln_tools_dir])
llvm_config.add_tool_substitutions(
    ["FileCheck", "not", "count", "split-file"], [config.llvm_tools_dir])
config.substitutions.append(("%kiln_src", config.kiln_src_root))
config.substitutions.append(("%kiln_obj", config.kiln_obj_root))
# A project configured by a test builds with Kiln's own generator (a fresh
# machine may have ninja and no make).
config.substitutions.append(
    ("%cmake_configure", '%s -G "%s" -DCMAKE_MAKE_PROGRAM=%s' %
     (config.kiln_cmake, config.kiln_cmake_generator, config.kiln_make_program)))
config.substitutions.append(("%cmake", config.kiln_cmake))
config.substitutions.append(("%cc", config.kiln_cc))

# A sanitized build (KILN_SANITIZE, docs/testing.md): the tools find the
# shared sanitizer runtime through their rpath; Python and the C programs a
# test builds are not instrumented, so the runtime is preloaded into them
# before they load libkiln.so (%kiln_python, %preload_sanitizer). Leaks are
# checked in Kiln's own processes only (Python keeps memory to exit).
python = config.kiln_python or "python3"
preload = ""
asan_options = ["abort_on_error=0", "halt_on_error=1",
                "allocator_may_return_null=1",
                # LLVM's headers poison the free part of allocator slabs in
                # instrumented code; the distribution's libMLIR is not
                # instrumented and writes there legitimately.
                "allow_user_poisoning=0",
                "detect_stack_use_after_return=0"]
if config.kiln_sanitize:
    config.available_features.add("sanitized")
    supp = os.path.join(config.kiln_src_root, "test", "sanitizers")
    config.environment["ASAN_OPTIONS"] = ":".join(asan_options)
    config.environment["LSAN_OPTIONS"] = "suppressions=" + os.path.join(
        supp, "lsan.supp")
    config.environment["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    if "address" in config.kiln_sanitize:
        runtime = subprocess.run(
            [config.kiln_cc, "-print-file-name=libclang_rt.asan-x86_64.so"],
            capture_output=True, text=True).stdout.strip()
        preload = "env LD_PRELOAD=%s ASAN_OPTIONS=%s " % (
            runtime, ":".join(asan_options + ["detect_leaks=0"]))
config.substitutions.append(("%preload_sanitizer", preload))
config.substitutions.append(("%kiln_python", preload + python))
config.substitutions.append(("%python", python))

# NumPy cross-checks run only where Debian's python3-numpy is installed.
def has_numpy(python):
    if not python:
        return False
    try:
        return subprocess.run([python, "-c", "import numpy"],
                              capture_output=True).returncode == 0
    except OSError:
        return False

if has_numpy(config.kiln_python):
    config.available_features.add("numpy")
else:
    lit_config.note("NumPy not found for " + str(config.kiln_python) +
                    ": NumPy cross-checks are skipped "
                    "(apt-get install python3-numpy)")

# Host engines built for AVX-512 (kilnc --cpu x86-64-v4) run only where the
# CPU has it; the engine refuses to load elsewhere.
def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()

if {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"} <= cpu_flags():
    config.available_features.add("cpu-x86-64-v4")
else:
    lit_config.note("no AVX-512 on this CPU: x86-64-v4 host engines are "
                    "compiled but not run")

# OpenMPI's mpirun for tensor-parallel engines (one process per rank); as
# root it must be told that is fine, and ranks may outnumber the cores.
mpirun = shutil.which("mpirun")
if mpirun:
    config.available_features.add("mpirun")
    # Under the sanitizers the ranks skip the leak check: OpenMPI unloads
    # its plugins before exit, so what they keep cannot be attributed (and
    # suppressed); single-process runs check the same runtime for leaks.
    no_leaks = ""
    if config.kiln_sanitize:
        no_leaks = "env ASAN_OPTIONS=%s " % ":".join(
            asan_options + ["detect_leaks=0"])
    config.substitutions.append(
        ("%mpirun", no_leaks + mpirun + " --allow-run-as-root --oversubscribe"))
else:
    lit_config.note("mpirun not found: tensor-parallel engines are not run "
                    "(apt-get install openmpi-bin)")

# A driver without a GPU (test/fakecuda) for the CUDA backend's host side.
config.substitutions.append(
    ("%fake_cuda", os.path.join(config.kiln_obj_root, "lib",
                                "libkiln-fake-cuda.so")))

# The libFuzzer targets (fuzz/), built when the compiler links libFuzzer.
if os.path.exists(os.path.join(config.kiln_obj_root, "bin", "kiln-fuzz-json")):
    config.available_features.add("libfuzzer")
else:
    lit_config.note("no libFuzzer targets (clang with libclang-rt-22-dev): "
                    "the fuzz smoke run is skipped")
# A stand-in for NCCL over shared memory (test/standin-nccl), for ranks on
# emulated GPUs.
config.substitutions.append(
    ("%standin_nccl", os.path.join(config.kiln_obj_root, "lib",
                                   "libkiln-test-nccl.so")))
# The sm_90a emulator (emulator/): a CUDA driver that runs the PTX.
config.substitutions.append(
    ("%kiln_emu", os.path.join(config.kiln_obj_root, "lib",
                               "libkiln-cuda-emu.so")))

# Upstream MLIR's sm90 integration tests, kept verbatim outside the project
# (shared/third_party/mlir-sm90-tests beside the checkout, or
# KILN_SM90_TESTS): the emulator is proven on them where they are present.
sm90_tests = os.environ.get("KILN_SM90_TESTS") or os.path.join(
    config.kiln_src_root, "..", "shared", "third_party", "mlir-sm90-tests")
if os.path.isfile(os.path.join(sm90_tests, "gemm_f32_f16_f16_128x128x128.mlir")):
    config.available_features.add("mlir-sm90-tests")
    config.substitutions.append(("%sm90_tests", os.path.abspath(sm90_tests)))
else:
    lit_config.note("upstream MLIR sm90 tests not found at " + sm90_tests +
                    ": the emulator's proof on them is skipped "
                    "(set KILN_SM90_TESTS)")

# A usable CUDA driver changes what `kiln-run --device cuda` says.
try:
    import ctypes
    ctypes.CDLL("libcuda.so.1")
    config.available_features.add("cuda-driver")
except OSError:
    pass

if config.kiln_cuda_found:
    config.available_features.add("ptxas")
    config.substitutions.append(("%ptxas", config.kiln_ptxas))
    # The toolkit's stub libcuda (cuInit fails with CUDA_ERROR_STUB_LIBRARY).
    config.substitutions.append(
        ("%cuda_stub", os.path.join(os.path.dirname(os.path.dirname(
            config.kiln_ptxas)), "lib64", "stubs", "libcuda.so")))
else:
    lit_config.note("no CUDA toolkit: PTX checks are skipped")

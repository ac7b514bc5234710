# -*- Python -*-
# lit configuration of the Kiln tests.

import os
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
    ["kiln-opt", "kilnc", "kiln-ref", "kiln-mkmodel", "kiln-compare", "kiln-run"],
    [config.kiln_tools_dir])
llvm_config.add_tool_substitutions(
    ["FileCheck", "not", "count", "split-file"], [config.llvm_tools_dir])
config.substitutions.append(("%kiln_src", config.kiln_src_root))
config.substitutions.append(("%python", config.kiln_python or "python3"))

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

# A driver without a GPU (test/fakecuda) for the CUDA backend's host side.
config.substitutions.append(
    ("%fake_cuda", os.path.join(config.kiln_obj_root, "lib",
                                "libkiln-fake-cuda.so")))

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

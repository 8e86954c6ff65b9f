"""Test setup: 8 simulated CPU devices, set before jax is imported, XLA's
CPU backend without LLVM optimization, and one persistent compilation
cache and one temporary folder for the whole run.

Single-device runs use `mesh.data=1` (the first device), so the same
process compares 1-device and multi-device training. A test that starts
processes with another device count appends its own
`--xla_force_host_platform_device_count` to XLA_FLAGS (the last one
counts), keeping the other flags.

On a 2-core CPU XLA's compile is most of the tests' time, and on their
tiny shapes the code LLVM would optimize runs for milliseconds:
`--xla_backend_optimization_level=0` compiles the same optimized HLO
without LLVM's passes (a tiny parity AdaTape run: 17.0 -> 12.0 s, its
compiles 12.2 -> 7.3 s; the suite's files 11-15% faster, measured
alternately; experiments/results/suite_time_cpu.txt). What the tests
assert is computed by the same programs; only the machine code differs.

Many tests train the same tiny configs, in this process or in the runs
they start. JAX keys each cache entry by the program's HLO, the compile
options, the devices and the XLA flags, so a hit loads the executable a
compile would have built: what the tests assert is unchanged. The first
process of a run (the xdist controller, or pytest alone) makes the folder
and removes it at exit; both workers and every process a test starts
inherit it through the environment. An eviction limit makes JAX lock the
folder (`filelock`), so two workers never read an entry half written. A
folder already named in JAX_COMPILATION_CACHE_DIR is used and kept.
"""

import atexit
import os
import shutil
import sys
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8"
    + " --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# One temporary folder for the run, removed at exit like the cache below:
# tfds leaves an empty `tmp*tfds` folder behind each builder it makes for
# data not yet prepared (`DatasetInfo.initialize_from_bucket`), and
# TensorFlow's autograph its generated files, in the system's temporary
# folder. Processes the tests start inherit it through TMPDIR.
if "ADATAPE_TESTS_TMPDIR" not in os.environ:
  _TMP = tempfile.mkdtemp(prefix="adatape-tests-tmp-")
  os.environ["ADATAPE_TESTS_TMPDIR"] = os.environ["TMPDIR"] = _TMP
  atexit.register(shutil.rmtree, _TMP, ignore_errors=True)
tempfile.tempdir = os.environ["ADATAPE_TESTS_TMPDIR"]

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="adatape-tests-jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
# Also the tiny programs (a few tenths of a second each, many times over);
# not the op-by-op ones, which cost less than their entry.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

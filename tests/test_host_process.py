"""The library leaves the process that imports it alone: only the tools change it, when they start."""

import json
import os
import pkgutil
import subprocess
import sys

import mnist_dnn
from conftest import ENVIRON_AT_START, ROOT

# Run in a fresh interpreter: what it reports before and after importing every module of the package.
PROBE = r"""
import json, os, pkgutil, sys, importlib
def state():
    fd2 = os.fstat(2)
    from tensorflow.python.framework import config  # (the getter has no public name)
    return {"environ": dict(os.environ), "fd2": [fd2.st_dev, fd2.st_ino],
            "determinism": config.is_op_determinism_enabled(),
            "tfds_progress_bar": __import__("tensorflow_datasets").core.utils.tqdm_utils._active}
before = state()
import mnist_dnn
modules = [m.name for m in pkgutil.walk_packages(mnist_dnn.__path__, "mnist_dnn.")]
from absl import flags
for name in modules:
    # The tools define flags of the same names, as separate programs may: forget the last tool's.
    defined = {f.name for module, module_flags in flags.FLAGS.flags_by_module_dict().items()
               if module.startswith("mnist_dnn") for f in module_flags}
    for flag in defined:
        delattr(flags.FLAGS, flag)
    for loaded in [m for m in sys.modules if m.startswith("mnist_dnn.") and not m.startswith("mnist_dnn.lib")]:
        sys.modules.pop(loaded)
    importlib.import_module(name)
print(json.dumps({"before": before, "after": state(), "modules": modules}), flush=True)
os._exit(0)  # without Python's teardown of TensorFlow (seconds): the report is out
"""


def test_importing_every_module_of_the_package_changes_no_environment_stderr_or_tensorflow_switch():
    # The environment from before conftest imported the package: what an import sets shows in the probe's "after" only.
    env = {k: v for k, v in ENVIRON_AT_START.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_XLA_FLAGS")}
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    expected = {m.name for m in pkgutil.walk_packages(mnist_dnn.__path__, "mnist_dnn.")}
    assert set(report["modules"]) == expected and {"mnist_dnn.train", "mnist_dnn.lib.trainer.training"} <= expected
    assert report["after"] == report["before"]

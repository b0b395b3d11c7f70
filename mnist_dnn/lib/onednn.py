"""TensorFlow's oneDNN CPU kernels: chosen before TensorFlow is imported, and read back after.

TensorFlow 2.21 turns them on by itself only on CPUs with AVX-512 VNNI or BF16, or AMX; elsewhere
its convolutions run on Eigen. On a 2-core AMD EPYC (Zen 3: AVX2 and FMA, no AVX-512) oneDNN
trained the convnets faster, and kept the exact resume, the NaN guard and `--deterministic`
(benchmarks/cnn_speed.json, docs/speed.md). So `auto` turns it on on every x86-64 CPU with AVX2 and
FMA (oneDNN's AVX2 kernels are the same code on Intel's and AMD's), and leaves TensorFlow's own
choice elsewhere, where it was not measured. The switch is the variable TF_ENABLE_ONEDNN_OPTS,
which TensorFlow reads once, as it is imported.
"""

import os
import platform

ENV = "TF_ENABLE_ONEDNN_OPTS"
CHOICES = ("auto", "on", "off")


def cpu_flags_line(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The flags line of /proc/cpuinfo: every instruction-set extension the kernel lets programs use (None where
    there is none)."""
    try:
        with open(cpuinfo) as f:
            return next((line for line in f if line.startswith("flags")), None)
    except OSError:
        return None


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The instruction-set flags of this CPU (empty where /proc/cpuinfo cannot be read)."""
    return set((cpu_flags_line(cpuinfo) or "").partition(":")[2].split())


def wanted(choice: str, flags: set[str], machine: str) -> bool | None:
    """Whether oneDNN should run for `choice` on this CPU; None leaves TensorFlow's default."""
    if choice != "auto":
        return choice == "on"
    if machine in ("x86_64", "AMD64") and {"avx2", "fma"} <= flags:
        return True
    return None


def choose(choice: str = "auto", environ=os.environ) -> None:
    """Sets TF_ENABLE_ONEDNN_OPTS for `choice` (auto, on or off); it acts only before TensorFlow is imported.

    `auto` keeps a value already in the environment: the user's, or a parent tool's.
    """
    if choice not in CHOICES:
        raise ValueError(f"onednn must be one of {', '.join(CHOICES)}; got {choice!r}")
    if choice == "auto" and ENV in environ:
        return
    on = wanted(choice, cpu_flags(), platform.machine())
    if on is not None:
        environ[ENV] = "1" if on else "0"


def running() -> bool:
    """Whether TensorFlow's oneDNN kernels are on in this process, as TensorFlow reports it."""
    from tensorflow.python.util import _pywrap_util_port  # no public API says it

    return bool(_pywrap_util_port.IsMklEnabled())

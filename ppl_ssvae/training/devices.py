"""Where and how precisely a run computes: the device, the training-step precision, and
the environment (versions, CPU capability, git commit) recorded with every run."""

from __future__ import annotations

import contextlib
import ctypes
import platform
import subprocess
import warnings
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pyro
import torch

from .. import __version__
from ..errors import UserError

# Training-step precision: autocast dtype per name (None = off). bf16 autocast runs the
# matrix products of the SVI steps in bfloat16 while parameters, optimiser state and every
# distribution stay float32 (nn.full_precision). "auto" picks bf16 only where the device
# multiplies bfloat16 matrices fast enough to gain (``native_bf16``).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
PRECISION_CHOICES = ("auto", *PRECISIONS)
# What an explicit bf16 costs where it is emulated (measured by benchmarks/precision_speed.py
# and a full epoch on an AVX2-only AMD EPYC).
EMULATED_BF16 = (
    "an M2 epoch was measured 7.6x slower (417 vs 55 CPU-s) on an AVX2 CPU, "
    "and M2 steps 1.4x slower on an AVX512-BF16 CPU without AMX"
)
# Settings a resume may change; the others are the run's identity.


class PrecisionWarning(UserWarning):
    """bf16 was asked for where it is emulated, so it slows training down."""


DEVICE_TYPES = ("cpu", "cuda")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available; a device that is not here is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type not in DEVICE_TYPES:
        raise UserError(f"device {dev.type!r} is not supported; use cpu, cuda, cuda:N or auto")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(
                "--device cuda requested but no CUDA device is available; use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(
                f"--device {dev} but only {torch.cuda.device_count()} CUDA devices exist"
            )
    return dev


@cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def native_bf16(dev: torch.device) -> bool:
    """Whether bf16 autocast speeds training up on ``dev``: a CUDA GPU with bfloat16, or a
    CPU with AMX-BF16 tiles. AVX512-BF16 alone is not enough: on such a Xeon (no AMX)
    benchmarks/precision_speed.py measured bf16 steps at 0.70x (M2) and 0.75x (GM-DGM)
    the speed of fp32; on an AVX2-only EPYC an M2 epoch took 7.6x as long."""
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return "amx_bf16" in _cpu_flags()


def resolve_precision(precision: str, dev: torch.device) -> str:
    """``"fp32"`` or ``"bf16"`` for ``precision`` on ``dev``; an explicit bf16 where it is
    emulated warns (``PrecisionWarning``) with what it was measured to cost."""
    if precision not in PRECISION_CHOICES:
        raise UserError(
            f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}"
        )
    if precision == "auto":
        return "bf16" if native_bf16(dev) else "fp32"
    if precision == "bf16" and not native_bf16(dev):
        if dev.type == "cuda":
            raise UserError(
                "precision='bf16' needs a GPU with bfloat16 support; use precision='fp32'"
            )
        warnings.warn(
            f"bf16 on a CPU without AMX (capability {torch.backends.cpu.get_cpu_capability()}) "
            f"is slower than fp32: {EMULATED_BF16}; use --precision auto or fp32",
            PrecisionWarning,
            stacklevel=3,
        )
    return precision


def environment() -> dict[str, Any]:
    """Versions, CPU capability and git commit recorded with every run."""
    import numpy
    import sklearn

    commit, edited = git_state(Path(__file__).resolve().parent)
    return {
        "ppl_ssvae": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "numpy": numpy.__version__,
        "sklearn": sklearn.__version__,
        "threads": torch.get_num_threads(),
        "git_commit": commit,
        "git_dirty": None if commit is None else bool(edited),
        # which tracked files had edits, so a reader can tell code edits from results ones
        "git_edited_files": edited,
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": native_bf16(torch.device("cpu")),
        **({"cuda": _cuda_environment()} if torch.cuda.is_available() else {}),
    }


def git_state(directory: Path, most: int = 50) -> tuple[str | None, list[str] | None]:
    """The commit checked out at ``directory`` and the tracked files with edits it does not
    hold (at most ``most``; untracked files are not counted); (None, None) outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=directory,
        ).stdout.strip() or None  # fmt: skip
        if commit is None:
            return None, None
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
            text=True, timeout=5, cwd=directory,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, [line[3:] for line in status.splitlines() if line.strip()][:most]


def _cuda_environment() -> dict[str, Any]:
    """The GPU and the float32 settings that change its numbers. The library leaves
    torch's defaults: TF32 off for matrix products (float32 means float32; bf16 is asked
    for with precision), cuDNN's TF32 on for convolutions, no cuDNN autotuning (the
    pi-VAE's CNN would otherwise pick kernels per run, and resumes would not repeat)."""
    return {
        "device": torch.cuda.get_device_name(),
        "cuda": torch.version.cuda,
        "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_tf32": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "bf16": torch.cuda.is_bf16_supported(),
    }


def precision_context(dev: torch.device, precision: str) -> torch.autocast:
    """The autocast context a training step of ``precision`` (``"fp32"`` or ``"bf16"``)
    runs in on ``dev`` (a disabled one for ``"fp32"``); reusable across steps."""
    dtype = PRECISIONS[precision]
    if dtype is torch.bfloat16 and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("precision='bf16' needs a GPU with bfloat16 support; use precision='fp32'")
    return torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def flushes_denormals() -> bool:
    """Whether this thread flushes subnormal floats to zero (``torch.set_flush_denormal``
    has no getter; a subnormal float32 reads back as 0 exactly when it does)."""
    return torch.tensor([1e-40]).item() == 0.0


@contextlib.contextmanager
def denormal_mode(flush: bool) -> Iterator[None]:
    """Flush subnormal floats to zero (x86 FTZ/DAZ) on this thread and torch's intra-op
    threads while the block runs, then restore this thread's mode on them all. x86 CPUs
    take a microcode assist for every subnormal operand (~10x slower matrix products),
    and enumerating classes makes them: once the classifier is sure, q(y|x) of the other
    classes falls below 1.2e-38 (3% of a trained M2's entries) and every gradient it
    weights is subnormal. The mode is per thread, and a run whose threads disagreed would
    compute bits that depend on which thread took which rows, so all are set alike; where
    torch's threads are not GNU OpenMP's (Windows, macOS) and there are several, none is
    changed, and asking to flush warns."""
    if not _every_thread_reachable():
        if flush:
            warnings.warn(f"torch runs {torch.get_num_threads()} threads outside GNU OpenMP here, "
                          "so the denormal mode cannot be set on each; this run keeps "
                          "subnormal floats (slower late epochs, the same on every thread); "
                          "torch.set_num_threads(1) lets it flush them", stacklevel=3)  # fmt: skip
        yield
        return
    before = flushes_denormals()
    on_every_thread(lambda: torch.set_flush_denormal(flush))
    try:
        yield
    finally:
        on_every_thread(lambda: torch.set_flush_denormal(before))


def on_every_thread(action: Callable[[], Any]) -> list[Any]:
    """``action()`` on this thread and on each of torch's intra-op threads (an OpenMP
    parallel region of as many threads; torch's pool is libgomp's); what each returned."""
    threads = torch.get_num_threads()
    if threads == 1:
        return [action()]
    if not _every_thread_reachable():
        raise RuntimeError(f"torch runs {threads} threads outside GNU OpenMP here")
    results: list[Any] = []
    body = _GOMP_BODY(lambda _: results.append(action()))
    _libgomp().GOMP_parallel(body, None, threads, 0)
    return results


def _every_thread_reachable() -> bool:
    return torch.get_num_threads() == 1 or _libgomp() is not None


_GOMP_BODY = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@cache
def _libgomp() -> Any:
    """The GNU OpenMP runtime torch loaded (None where torch's threads are not its)."""
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        with open("/proc/self/maps") as maps:
            path = next((line.split()[-1] for line in maps if "libgomp" in line), None)
    except OSError:
        return None
    if path is None:
        return None
    gomp = ctypes.CDLL(path)
    gomp.GOMP_parallel.argtypes = [_GOMP_BODY, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    return gomp

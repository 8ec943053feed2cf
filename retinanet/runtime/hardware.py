"""The machine a run lands on: its cores, its bfloat16 support, the precision and threads to use.

bfloat16 is fast only where the hardware computes it: CPUs with AMX or AVX512-BF16 (oneDNN's
kernels), GPUs of compute capability 8.0 and newer. Elsewhere TensorFlow emulates it, about 9x
slower than float32 on an AVX2-only CPU. `runtime.mixed_precision: auto` picks accordingly.
"""

from __future__ import annotations

import math
import os
import platform
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
# Shown in the device line: the instruction sets that decide which kernels run.
NOTABLE_CPU_FLAGS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")


@dataclass(frozen=True)
class Device:
    """What decides the speed of a run: [CPU model, cores, flags] and the GPUs' capabilities."""

    cpu_model: str
    cpu_flags: frozenset[str]
    cores: int
    gpus: tuple[tuple[str, tuple[int, int]], ...] = ()  # (name, compute capability)


@dataclass(frozen=True)
class Precision:
    policy: str  # a Keras dtype policy: float32, mixed_bfloat16 or mixed_float16
    reason: str
    warning: str = ""  # set when an explicit choice will run slowly here


def read_cpu(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first processor in a /proc/cpuinfo-style file; elsewhere
    (macOS, Windows) the platform's name and no flags."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return platform.processor() or platform.machine(), frozenset()
    model, flags = platform.machine(), frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == platform.machine():
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model, flags


def available_cores(*, affinity: int | None = None, cgroup_root: str | Path = "/sys/fs/cgroup") -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (containers)."""
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    root = Path(cgroup_root)
    quota = period = None
    try:
        fields = (root / "cpu.max").read_text().split()  # cgroup v2: "<quota|max> <period>"
        if fields[0] != "max":
            quota, period = int(fields[0]), int(fields[1])
    except (OSError, IndexError, ValueError):
        try:  # cgroup v1
            quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
            period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            pass
    if quota is not None and period and quota > 0:
        return max(1, min(affinity, math.ceil(quota / period)))
    return max(1, affinity)


def workers(configured: int) -> int:
    """A configured worker count, 0 meaning one per available core."""
    return configured or available_cores()


def gpu_capabilities() -> tuple[tuple[str, tuple[int, int]], ...]:
    """(name, compute capability) of each visible GPU."""
    import tensorflow as tf

    found = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        found.append((details.get("device_name", gpu.name), tuple(details.get("compute_capability", (0, 0)))))
    return tuple(found)


def detect_device() -> Device:
    model, flags = read_cpu()
    return Device(model, flags, available_cores(), gpu_capabilities())


def choose_precision(requested: str, device: Device) -> Precision:
    """Resolve `runtime.mixed_precision` (auto or an explicit policy) for `device`."""
    if device.gpus:
        capability = min(capability for _, capability in device.gpus)
        where = f"GPU compute capability {capability[0]}.{capability[1]}"
        native_bf16, native_fp16 = capability >= (8, 0), capability >= (7, 0)
        if requested == "auto":
            if native_bf16:
                return Precision("mixed_bfloat16", f"auto: {where} computes bfloat16 natively")
            if native_fp16:
                return Precision("mixed_float16", f"auto: {where} has float16 tensor cores (loss scaling on)")
            return Precision("float32", f"auto: {where} has no fast half precision")
        slow = (requested == "mixed_bfloat16" and not native_bf16) or (requested == "mixed_float16" and not native_fp16)
        return Precision(requested, "set in the config",
                         f"{requested} is not native on {where}; it will run slower than float32" if slow else "")
    native = sorted(flag for flag in BF16_CPU_FLAGS if flag in device.cpu_flags)
    if requested == "auto":
        if native:
            return Precision("mixed_bfloat16", f"auto: the CPU computes bfloat16 in hardware ({', '.join(native)})")
        return Precision("float32", "auto: the CPU has no bfloat16 instructions (amx_bf16, avx512_bf16), "
                                    "so bfloat16 would be emulated, several times slower")
    warning = ""
    if requested == "mixed_bfloat16" and not native:
        warning = ("mixed_bfloat16 on a CPU without amx_bf16 or avx512_bf16 is emulated: expect it to run about "
                   "9x slower than float32 (set runtime.mixed_precision: auto or float32)")
    elif requested == "mixed_float16":
        warning = "mixed_float16 on a CPU is emulated and slower than float32 (set runtime.mixed_precision: auto)"
    return Precision(requested, "set in the config", warning)


def inference_precision(policy: str) -> str:
    """The policy to predict with here: a run's own policy when this device runs it natively (a
    bfloat16 run trained on AMX predicts in float32 on an AVX2 laptop; the weights are float32)."""
    device = detect_device()
    chosen = choose_precision(policy, device)
    return choose_precision("auto", device).policy if chosen.warning else chosen.policy


def describe(device: Device, precision: Precision, threads: tuple[int, int] | None = None) -> str:
    """One line: device, cores, the instruction sets that matter, precision and why."""
    if device.gpus:
        where = ", ".join(f"GPU {name} (compute {major}.{minor})" for name, (major, minor) in device.gpus)
    else:
        flags = [flag for flag in NOTABLE_CPU_FLAGS if flag in device.cpu_flags]
        where = f"CPU {device.cpu_model}, {', '.join(flags) or 'no AVX2'}"
    line = f"Device: {where}; {device.cores} cores available"
    if threads is not None:
        intra, inter = (count or "default" for count in threads)
        line += f" (threads: {intra} intra-op, {inter} inter-op)"
    return f"{line}; precision {precision.policy} ({precision.reason})"


def prepare_runtime(requested_precision: str, intra_op_threads: int = 0,
                    inter_op_threads: int = 0) -> tuple[Precision, str]:
    """Set the thread pools for the cores available, then choose the precision for this device:
    (precision, the one-line description of device, threads and precision)."""
    cores = available_cores()
    threads = configure_threads(*resolve_threads(intra_op_threads, inter_op_threads, cores))
    model, flags = read_cpu()
    device = Device(model, flags, cores, gpu_capabilities())
    precision = choose_precision(requested_precision, device)
    return precision, describe(device, precision, threads)


def resolve_threads(intra_op: int, inter_op: int, cores: int) -> tuple[int, int]:
    """Config values (0 = auto) -> (intra-op, inter-op) thread counts for `cores` cores.

    Auto gives every core to the kernels (intra-op) and 2 ops at a time (inter-op): a
    RetinaNet step is a chain of large convolutions with little to run beside them.
    """
    return (intra_op or cores), (inter_op or min(2, cores))


def configure_threads(intra_op: int, inter_op: int) -> tuple[int, int]:
    """Set TensorFlow's thread pools; returns the counts in force (0: TensorFlow's default, one
    thread per core). Once TensorFlow has run an op its pools are fixed and stay as they are."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:
        pass
    return (tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads())


@contextmanager
def dtype_policy(name: str):
    """Build layers under a Keras dtype policy, then restore the previous one."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)

"""Device detection, the precision `auto` picks, and thread settings (CPU flags and GPUs faked)."""

import subprocess
import sys
import textwrap

import pytest

from retinanet.runtime.hardware import (Device, available_cores, choose_precision, describe, read_cpu, resolve_threads)

AMX_XEON = Device("Intel(R) Xeon(R) Platinum 8488C", frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}), 2)
ZEN4 = Device("AMD EPYC 9R14", frozenset({"avx2", "avx512f", "avx512_bf16"}), 2)
AVX2_EPYC = Device("AMD EPYC 7R13 Processor", frozenset({"avx2", "fma"}), 2)


def gpu(capability):
    return Device("any CPU", frozenset({"avx2"}), 8, (("NVIDIA test GPU", capability),))


@pytest.mark.parametrize("device, policy", [
    (AMX_XEON, "mixed_bfloat16"), (ZEN4, "mixed_bfloat16"), (AVX2_EPYC, "float32"),
    (gpu((9, 0)), "mixed_bfloat16"), (gpu((8, 0)), "mixed_bfloat16"), (gpu((7, 5)), "mixed_float16"),
    (gpu((7, 0)), "mixed_float16"), (gpu((6, 1)), "float32")])
def test_auto_picks_the_fastest_native_precision(device, policy):
    chosen = choose_precision("auto", device)
    assert chosen.policy == policy and chosen.reason.startswith("auto: ") and chosen.warning == ""


def test_auto_on_a_gpu_machine_follows_the_weakest_gpu():
    device = Device("cpu", frozenset({"amx_bf16"}), 8, (("A100", (8, 0)), ("V100", (7, 0))))
    assert choose_precision("auto", device).policy == "mixed_float16"


@pytest.mark.parametrize("requested, device, warned", [
    ("mixed_bfloat16", AVX2_EPYC, True), ("mixed_bfloat16", AMX_XEON, False), ("mixed_float16", AMX_XEON, True),
    ("float32", AVX2_EPYC, False), ("mixed_bfloat16", gpu((7, 5)), True), ("mixed_float16", gpu((7, 5)), False),
    ("mixed_float16", gpu((6, 1)), True), ("mixed_bfloat16", gpu((8, 6)), False)])
def test_an_explicit_precision_is_kept_and_warned_about_where_it_is_emulated(requested, device, warned):
    chosen = choose_precision(requested, device)
    assert chosen.policy == requested
    assert bool(chosen.warning) == warned
    if warned:
        assert requested in chosen.warning and "slower" in chosen.warning


def test_the_device_line_names_cpu_cores_instruction_sets_threads_and_precision():
    line = describe(AMX_XEON, choose_precision("auto", AMX_XEON), (2, 1))
    for fragment in ("Intel(R) Xeon(R) Platinum 8488C", "amx_bf16", "avx512_bf16", "2 cores", "2 intra-op",
                     "1 inter-op", "precision mixed_bfloat16", "amx_bf16"):
        assert fragment in line
    assert "no bfloat16 instructions" in describe(AVX2_EPYC, choose_precision("auto", AVX2_EPYC))
    assert "GPU NVIDIA test GPU (compute 7.5)" in describe(gpu((7, 5)), choose_precision("auto", gpu((7, 5))))


def test_cpu_model_and_flags_come_from_the_first_processor(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7R13 Processor\nflags\t\t: fpu avx2 fma\n\n"
                       "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
    model, flags = read_cpu(cpuinfo)
    assert model == "AMD EPYC 7R13 Processor" and flags == {"fpu", "avx2", "fma"}
    model, flags = read_cpu(tmp_path / "missing")
    assert model and flags == frozenset()


@pytest.mark.parametrize("files, affinity, expected", [
    ({"cpu.max": "150000 100000\n"}, 8, 2),  # 1.5 CPUs of quota: 2 threads' worth
    ({"cpu.max": "400000 100000\n"}, 2, 2),  # the affinity is the tighter limit
    ({"cpu.max": "max 100000\n"}, 6, 6),
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4, 1),  # cgroup v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4, 4),
    ({}, 3, 3),
])
def test_available_cores_honour_affinity_and_cgroup_quota(tmp_path, files, affinity, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert available_cores(affinity=affinity, cgroup_root=tmp_path) == expected


@pytest.mark.parametrize("configured, cores, expected", [
    ((0, 0), 2, (2, 2)), ((0, 0), 1, (1, 1)), ((0, 0), 16, (16, 2)), ((3, 1), 16, (3, 1))])
def test_thread_counts_default_to_the_available_cores(configured, cores, expected):
    assert resolve_threads(*configured, cores) == expected


def test_thread_pools_are_set_before_tensorflow_starts_and_kept_after():
    script = textwrap.dedent("""
        import tensorflow as tf
        from retinanet.runtime.hardware import configure_threads
        print(configure_threads(1, 1))
        tf.constant(1.0) + 1.0  # starts the runtime: the pools are fixed from here on
        print(configure_threads(2, 2))
        print(tf.config.threading.get_intra_op_parallelism_threads(),
              tf.config.threading.get_inter_op_parallelism_threads())
    """)
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.split("\n")[:3] == ["(1, 1)", "(1, 1)", "1 1"]

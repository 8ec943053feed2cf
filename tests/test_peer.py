"""The benchmark's peer (the keras-io RetinaNet example): the same network as the project's,
its loss against a loop, and its training step."""

import keras
import numpy as np
import pytest

from helpers import run_benchmark
from peer import build_peer_model, peer_loss, peer_train_step
from retinanet.detection.anchors import num_anchors
from retinanet.model.retinanet import build_retinanet


def test_the_peer_network_has_the_projects_size_and_outputs():
    peer = build_peer_model(keras, (64, 64, 3))
    ours = build_retinanet((64, 64, 3), fpn_channels=256, head_convs=4, image_head=False)
    assert peer.count_params() == ours.count_params()
    outputs = peer(np.zeros((2, 64, 64, 3), np.float32))
    assert outputs.shape == (2, num_anchors((64, 64)), 5)
    # The classification bias starts every anchor at the 0.01 prior.
    assert np.allclose(1 / (1 + np.exp(-outputs.numpy()[..., 4].mean())), 0.01, atol=0.005)


def test_the_peer_loss_matches_a_loop_over_anchors():
    rng = np.random.default_rng(0)
    states = np.array([[0, -1, -2, -1, 0, -1], [-1, -1, -2, -1, -1, -1]], np.float32)
    y_true = np.concatenate([rng.normal(size=(2, 6, 4)), states[..., None]], -1).astype(np.float32)
    y_pred = rng.normal(size=(2, 6, 5)).astype(np.float32) * 2
    expected = []
    for image in range(2):
        classification = box = 0.0
        positives = 0
        for anchor in range(6):
            state, logit = states[image, anchor], y_pred[image, anchor, 4]
            if state == -2:
                continue
            label = 1.0 if state >= 0 else 0.0
            p = 1 / (1 + np.exp(-logit))
            p_t = p if label else 1 - p
            classification += (0.25 if label else 0.75) * (1 - p_t) ** 2 * -np.log(p_t)
            if state >= 0:
                positives += 1
                for d in np.abs(y_true[image, anchor, :4] - y_pred[image, anchor, :4]):
                    box += 0.5 * d * d if d < 1 else d - 0.5
        expected.append((classification + box) / positives if positives else 0.0)
    np.testing.assert_allclose(peer_loss()(y_true, y_pred).numpy(), expected, rtol=1e-5)


def test_the_peer_training_step_learns_a_fixed_batch():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(2, 64, 64, 3)).astype(np.float32)
    states = np.where(rng.random((2, num_anchors((64, 64)))) < 0.02, 0.0, -1.0).astype(np.float32)
    targets = np.concatenate([rng.normal(size=(*states.shape, 4)) * 0.1, states[..., None]], -1).astype(np.float32)
    step = peer_train_step(keras, (64, 64, 3))
    losses = [float(np.asarray(step(images, targets))) for _ in range(4)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.parametrize("precision", ["mixed_bfloat16"])
def test_the_peer_builds_under_mixed_precision_and_restores_the_policy(precision):
    peer = build_peer_model(keras, (64, 64, 3), precision=precision)
    assert peer.get_layer("conv1_conv").compute_dtype == "bfloat16"
    assert keras.config.dtype_policy().name == "float32"


def test_implementations_take_turns_and_report_their_median_step():
    import training as benchmark_training

    calls = []
    runners = {"fast": lambda: calls.append("fast"), "slow": lambda: calls.append("slow")}
    seconds = benchmark_training.time_in_turns(runners, rounds=2, steps=3, warmup=1)
    # One warm-up call each, then turns of three steps: fast, slow, fast, slow.
    assert calls == ["fast", "slow"] + ["fast"] * 3 + ["slow"] * 3 + ["fast"] * 3 + ["slow"] * 3
    assert set(seconds) == {"fast", "slow"} and all(value >= 0 for value in seconds.values())


@pytest.mark.slow
def test_benchmark_script_prints_the_project_beside_the_peer():
    completed = run_benchmark("train_step.py", "--size", "64", "--batch", "2", "--rounds", "1", "--steps", "1",
                              "--precisions", "float32")
    assert completed.returncode == 0, completed.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in completed.stdout.splitlines() if line.startswith("| float32 |")]
    by_name = {cells[1].strip(): cells for cells in rows}
    assert {"project", "keras-io example, Keras 3"} <= set(by_name)
    seconds = {name: float(cells[2]) for name, cells in by_name.items()}
    best_peer = min(value for name, value in seconds.items() if name != "project")
    ratio = float(by_name["project"][4].strip().rstrip("x"))
    assert ratio == pytest.approx(best_peer / seconds["project"], rel=0.02)
    assert "Device: CPU" in completed.stdout

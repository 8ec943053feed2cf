"""Model shapes, learning on a fixed batch, schedules, and short end-to-end runs
(resume, two-replica MirroredStrategy, TensorBoard contents)."""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from helpers import tiny_config
from retinanet.config import AnchorConfig, config_from_dict
from retinanet.data.rsna import Record
from retinanet.synthetic.rsna_layout import generate_synthetic_rsna
from retinanet.detection.anchors import num_anchors
from retinanet.detection.losses import RetinaNetLoss
from retinanet.model.heads import prior_bias
from retinanet.model.retinanet import build_retinanet
from retinanet.train.schedule import WarmupDecay
from retinanet.train.optimizers import FusedAdamW
from retinanet.train.trainer import build_trainer, train
from retinanet.train.validation import overlays_first

REPO = Path(__file__).resolve().parent.parent
SMALL_ANCHORS = AnchorConfig(sizes=(8.0, 16.0, 32.0, 64.0, 128.0))


@pytest.mark.parametrize("height, width, channels", [(64, 64, 3), (96, 160, 1), (128, 64, 3)])
def test_model_output_matches_anchor_count(height, width, channels):
    model = build_retinanet((height, width, channels), num_classes=2, fpn_channels=16, head_convs=1)
    outputs = model(np.zeros((2, height, width, channels), np.float32))
    assert outputs["predictions"].shape == (2, num_anchors((height, width)), 4 + 2)
    assert outputs["image_logits"].shape == (2, 1)


def test_classification_starts_at_the_prior():
    model = build_retinanet((64, 64, 3), fpn_channels=16, head_convs=1, prior_probability=0.01, image_head=False)
    logits = model(np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype(np.float32))["predictions"][..., 4:]
    assert prior_bias(0.01) == pytest.approx(-np.log(99))
    # Kernels N(0, 0.01) keep the logits near the bias.
    np.testing.assert_allclose(tf.sigmoid(logits).numpy().mean(), 0.01, atol=0.005)


def test_frozen_stages_and_batch_norm_are_not_trainable():
    model = build_retinanet((64, 64, 3), fpn_channels=16, head_convs=1, freeze_backbone_stages=2,
                            freeze_batch_norm=True)
    backbone = model.get_layer("resnet50")
    frozen = {layer.name for layer in backbone.layers if not layer.trainable}
    assert "conv1_conv" in frozen and "conv2_block1_1_conv" in frozen
    assert "conv3_block1_1_conv" not in frozen and "conv3_block1_1_bn" in frozen


def test_missing_weights_file_is_a_clear_error(tmp_path):
    from retinanet.model.backbone import WeightsError

    with pytest.raises(WeightsError, match="file not found"):
        build_retinanet((64, 64, 3), weights=str(tmp_path / "nope.h5"))


def test_warmup_then_cosine_and_step_schedules():
    cosine = WarmupDecay(0.1, total_steps=110, warmup_steps=10, kind="cosine")
    assert float(cosine(0)) == pytest.approx(0.01)
    assert float(cosine(9)) == pytest.approx(0.1)
    assert float(cosine(60)) == pytest.approx(0.05, abs=1e-6)  # half way through the decay
    assert float(cosine(110)) == pytest.approx(0.0, abs=1e-7)
    step = WarmupDecay(1.0, total_steps=100, warmup_steps=0, kind="step", boundaries=(0.5, 0.8), factor=0.1)
    assert [round(float(step(s)), 6) for s in (0, 49, 50, 79, 80)] == [1.0, 1.0, 0.1, 0.1, 0.01]


def test_overlays_show_positives_and_negatives_and_keep_every_record():
    records = [Record(f"p{i}", "", np.zeros((0, 4)), int(i in (5, 7, 8, 9))) for i in range(10)]
    ordered = overlays_first(records, 4)
    assert [r.patient_id for r in ordered[:4]] == ["p5", "p7", "p0", "p1"]
    assert sorted(r.patient_id for r in ordered) == sorted(r.patient_id for r in records)
    few_negatives = overlays_first(records[5:], 4)  # one negative: the rest of the first four are positive
    assert [r.patient_id for r in few_negatives[:4]] == ["p5", "p7", "p8", "p6"]
    assert [r.patient_id for r in overlays_first(records[:3], 6)] == ["p0", "p1", "p2"]


def test_a_few_steps_on_one_fixed_batch_drive_the_loss_down():
    tf.keras.utils.set_random_seed(0)
    model = build_retinanet((64, 64, 3), fpn_channels=32, head_convs=1, image_head=False)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 64, 64, 3)).astype(np.float32)
    images[0, 10:40, 20:44] += 3.0  # the object
    from retinanet.builders import anchor_set_for
    from retinanet.detection.targets import LabelEncoder

    encoder = LabelEncoder(anchor_set_for(SMALL_ANCHORS, (64, 64)).boxes)
    targets = tf.stack([encoder(np.array([[20.0, 10.0, 44.0, 40.0]]), [0]), encoder(np.zeros((0, 4)), [])])
    loss = RetinaNetLoss(1)
    # The trainer's optimizer, built before the step as the trainer builds it (Keras' Adam created
    # its moments inside the trace, and traced its update in a dozen ops per weight: 13 s of trace).
    optimizer = FusedAdamW(1e-3)
    optimizer.build(model.trainable_variables)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            value = loss(targets, model(images, training=True)["predictions"])
        optimizer.apply_gradients(zip(tape.gradient(value, model.trainable_variables), model.trainable_variables))
        return value

    losses = [float(step()) for _ in range(25)]
    assert losses[-1] < 0.5 * losses[0]


# --- end-to-end runs on a tiny synthetic set ----------------------------------------------------


def training_config(root, cache, mixed_precision="float32", **training):
    return tiny_config(root, cache, training=training, runtime={"mixed_precision": mixed_precision})


def event_tags(directory: Path) -> tuple[set, set]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={"tensors": 0, "images": 0})
    accumulator.Reload()
    return set(accumulator.Tags()["tensors"]), set(accumulator.Tags()["images"]) | {
        tag for tag in accumulator.Tags()["tensors"] if tag == "predictions"}


@pytest.mark.slow
def test_run_writes_checkpoints_logs_and_tensorboard(small_rsna, tmp_path):
    run_dir = tmp_path / "run"
    results = train(training_config(small_rsna, tmp_path / "cache"), run_dir, progress=False)
    for name in ("config.yaml", "split.csv", "best.weights.h5", "final.weights.h5", "best.json",
                 "validation_predictions.png"):
        assert (run_dir / name).is_file(), name
    assert "rsna_metric" in results["scalars"]
    train_tags, _ = event_tags(run_dir / "tensorboard" / "train")
    assert {"loss/total", "loss/classification", "loss/box", "loss/image", "learning_rate", "gradient_norm",
            "images_per_second"} <= train_tags
    validation_tags, image_tags = event_tags(run_dir / "tensorboard" / "validation")
    assert {"rsna_metric", "best_rsna_metric", "best_threshold", "ap50", "loss/classification", "loss/box",
            "image_auc"} <= validation_tags
    assert "predictions" in image_tags
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if line["split"] == "train"] == [2, 4, 6]
    assert [line["step"] for line in lines if line["split"] == "validation"] == [3, 6]
    elapsed = [line["elapsed_seconds"] for line in lines]  # time to quality reads these
    assert elapsed == sorted(elapsed) and 0 < elapsed[0]


@pytest.mark.slow
def test_train_script_reports_held_out_metrics_and_where_the_outputs_are(tiny_run):
    stdout, run_dir = tiny_run.train_stdout, tiny_run.run_dir
    best = json.loads((run_dir / "best.json").read_text())
    assert best["step"] == 4 and "Held-out validation at step 4:" in stdout
    assert f"rsna_metric            {best['rsna_metric']:.4f}" in stdout
    assert (f"{run_dir / 'best.weights.h5'} (step 4: RSNA metric {best['best_rsna_metric']:.4f} at the score "
            f"threshold chosen on validation, {best['best_threshold']:.2f}; {best['rsna_metric']:.4f} at the "
            "configured one)") in stdout
    for path in (run_dir / "validation_predictions.png", run_dir / "tensorboard"):
        assert path.exists() and str(path) in stdout
    # The threshold chosen on the validation that kept the best weights is the run's.
    chosen = json.loads(tiny_run.training_threshold)
    assert chosen == {"score_threshold": best["best_threshold"], "rsna_metric": best["best_rsna_metric"],
                      "chosen_on": "validation", "step": 4}
    assert (f"Score threshold:  {best['best_threshold']:g} (chosen on validation at step 4, "
            f"{run_dir / 'threshold.json'}); infer, evaluate and export use it") in stdout
    assert (f"{run_dir / 'validation_predictions.png'} (weights of step 4, score threshold "
            f"{best['best_threshold']:g}, chosen on this validation)") in stdout
    assert (f"(rsna_metric at score threshold {tiny_run.config.evaluation.score_threshold:g} "
            "(config evaluation.score_threshold); best_rsna_metric at best_threshold") in stdout


@pytest.mark.slow
def test_unscorable_validation_still_keeps_best_weights(small_rsna, tmp_path, monkeypatch):
    import retinanet.train.validation

    # No image scored (no positives held out, no boxes predicted): the RSNA metric is NaN.
    monkeypatch.setattr(retinanet.train.validation, "rsna_metric", lambda truth, predictions: {"score": float("nan")})
    monkeypatch.setattr(retinanet.train.validation, "best_of_sweep", lambda *arguments: (float("nan"), float("nan")))
    run_dir = tmp_path / "run"
    results = train(training_config(small_rsna, tmp_path / "cache", steps=3, validate_every=3), run_dir, progress=False)
    assert results["step"] == 3 and np.isnan(results["scalars"]["rsna_metric"])
    assert (run_dir / "best.weights.h5").is_file()
    assert json.loads((run_dir / "best.json").read_text())["step"] == 3
    # Nothing chose a threshold: none is written, the config's applies.
    assert not (run_dir / "threshold.json").exists()
    assert results["overlay_threshold"] == 0.3 and results["overlay_threshold_origin"].startswith("config ")


def assert_threshold_of_best_weights(run_dir: Path) -> None:
    """threshold.json holds the threshold chosen on the validation of the best weights."""
    best = json.loads((run_dir / "best.json").read_text())
    chosen = json.loads((run_dir / "threshold.json").read_text())
    assert (chosen["chosen_on"], chosen["step"]) == ("validation", best["step"])
    assert (chosen["score_threshold"], chosen["rsna_metric"]) == (best["best_threshold"], best["best_rsna_metric"])


@pytest.mark.slow
def test_two_replica_mirrored_strategy_trains(small_rsna, tmp_path):
    from retinanet.config import save_config

    save_config(training_config(small_rsna, tmp_path / "cache", strategy="mirrored", steps=2, validate_every=2),
                tmp_path / "config.yaml")
    script = textwrap.dedent("""
        import sys, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from retinanet.config import load_config
        from retinanet.train.trainer import build_trainer
        trainer = build_trainer(load_config(sys.argv[1]), sys.argv[2], progress=False)
        assert trainer.run.strategy.num_replicas_in_sync == 2, trainer.run.strategy.num_replicas_in_sync
        trainer.fit()
        print("STEP", trainer.step)
    """)
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "config.yaml"), str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "STEP 2" in result.stdout


def test_replica_split_keeps_the_global_normaliser():
    """Two replicas with the global positive count give the single-device loss and gradient."""
    rng = np.random.default_rng(0)
    predictions = tf.constant(rng.normal(size=(4, 30, 5)).astype(np.float32))
    states = rng.choice([-2.0, -1.0, 0.0], size=(4, 30), p=[0.1, 0.7, 0.2]).astype(np.float32)
    states[2:] = np.where(states[2:] == 0.0, -1.0, states[2:])  # second half: no positives
    targets = tf.constant(np.concatenate([rng.normal(size=(4, 30, 4)), states[..., None]], -1).astype(np.float32))
    loss = RetinaNetLoss(1)
    whole = float(loss(targets, predictions))
    halves = [loss.components(targets[i:i + 2], predictions[i:i + 2]) for i in (0, 2)]
    num_positive = sum(h["num_positive"] for h in halves)
    split = sum(float(loss.normalize(h, num_positive)["total"]) for h in halves)
    assert split == pytest.approx(whole, rel=1e-5)


def test_pretrained_weights_file_is_loaded_and_folded_for_one_channel(tmp_path):
    import keras

    source = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3))
    path = tmp_path / "resnet50_notop.weights.h5"
    source.save_weights(path)
    grey = build_retinanet((64, 64, 1), weights=str(path), fpn_channels=16, head_convs=1).get_layer("resnet50")
    kernel = source.get_layer("conv1_conv").get_weights()[0]
    np.testing.assert_allclose(grey.get_layer("conv1_conv").get_weights()[0], kernel.sum(axis=2, keepdims=True),
                               rtol=1e-6)
    np.testing.assert_array_equal(grey.get_layer("conv5_block3_3_conv").get_weights()[0],
                                  source.get_layer("conv5_block3_3_conv").get_weights()[0])


def stored_tensors_are_finite(prefix) -> bool:
    """Every floating-point tensor of a tf.train checkpoint is finite, read straight from its files."""
    reader = tf.train.load_checkpoint(str(prefix))
    return all(np.isfinite(reader.get_tensor(name)).all()
               for name, dtype in reader.get_variable_to_dtype_map().items() if dtype.is_floating)


def named_checkpoint(message: str) -> str:
    """The checkpoint a training error names as the latest good one."""
    match = re.search(r"the latest good checkpoint is (\S+?)\.? ", message)
    assert match, message
    return match.group(1)


@pytest.mark.slow
def test_non_finite_loss_stops_naming_a_checkpoint_that_is_finite(small_rsna, tmp_path):
    from retinanet.train.trainer import TrainingError

    config = training_config(small_rsna, tmp_path / "cache", optimizer="sgd", learning_rate=1e30,
                         gradient_clip_norm=0.0, steps=6, checkpoint_every=1)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingError, match="non-finite (loss|weights)") as error:
        train(config, run_dir, progress=False)
    assert stored_tensors_are_finite(named_checkpoint(str(error.value)))
    assert not (run_dir / "final.weights.h5").exists()


@pytest.mark.slow
def test_time_budget_fits_the_schedule_and_a_resumed_run_keeps_it(small_rsna, tmp_path):
    from retinanet.config import load_config, save_config

    config = training_config(small_rsna, tmp_path / "cache", steps=40, warmup_steps=4, validate_every=20,
                         checkpoint_every=8, time_budget_minutes=5.0)
    save_config(config, tmp_path / "config.yaml")
    run_dir = tmp_path / "run"
    # The budget fits 20 of the 40 steps: 1 s a step, 9 s left after the 11 calibration steps.
    script = textwrap.dedent("""
        import os, sys
        import retinanet.train.loop as loop
        from retinanet.train.budget import Timing, fit_schedule
        from retinanet.train.trainer import build_trainer
        from retinanet.config import load_config
        loop.fit_schedule = lambda config, done, timing, budget: fit_schedule(
            config, done, Timing(elapsed=0.0, step=1.0, validation=0.0, checkpoint=0.0), 9.0)
        trainer = build_trainer(load_config(sys.argv[1]), sys.argv[2], progress=False)
        original = trainer._save_latest
        def save_then_die(**options):
            original(**options)
            if trainer.step == 16:
                os._exit(17)
        trainer._save_latest = save_then_die
        trainer.fit()
    """)
    killed = subprocess.run([sys.executable, "-c", script, str(tmp_path / "config.yaml"), str(run_dir)],
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == 17, killed.stderr[-2000:]
    assert "Time budget 5 min: 20 of 40 steps fit" in killed.stdout
    assert "Device: " in killed.stdout
    saved = load_config(run_dir / "config.yaml").training
    assert (saved.steps, saved.warmup_steps, saved.validate_every, saved.checkpoint_every) == (20, 2, 10, 4)
    assert saved.time_budget_minutes == 0
    budget = json.loads((run_dir / "budget.json").read_text())
    assert (budget["configured_steps"], budget["fitted_steps"], budget["fitted_at_step"]) == (40, 20, 11)

    trainer = build_trainer(config, run_dir, resume=True, progress=False)
    assert trainer.step == 16 and trainer.config.training.steps == 20
    fitted_schedule = WarmupDecay(config.training.learning_rate, total_steps=20, warmup_steps=2, kind="cosine")
    assert float(trainer.task.optimizer.learning_rate) == pytest.approx(float(fitted_schedule(16)))
    trainer.fit()
    assert trainer.step == 20
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if line["split"] == "validation"] == [11, 20]
    last = [line for line in lines if line["split"] == "train"][-1]
    assert last["step"] == 20 and last["learning_rate"] == pytest.approx(0.0, abs=1e-9)
    assert (run_dir / "final.weights.h5").is_file()
    assert_threshold_of_best_weights(run_dir)


@pytest.mark.slow
def test_explicit_bfloat16_on_a_cpu_without_it_warns_and_auto_picks_float32(small_rsna, tmp_path, monkeypatch,
                                                                             capsys):
    import retinanet.runtime.hardware

    monkeypatch.setattr(retinanet.runtime.hardware, "read_cpu",
                        lambda: ("AMD EPYC 7R13 Processor", frozenset({"avx2"})))
    monkeypatch.setattr(retinanet.runtime.hardware, "gpu_capabilities", lambda: ())
    explicit = build_trainer(training_config(small_rsna, tmp_path / "cache", mixed_precision="mixed_bfloat16"),
                             tmp_path / "explicit", progress=False)
    captured = capsys.readouterr()
    assert "warning: mixed_bfloat16 on a CPU without amx_bf16 or avx512_bf16 is emulated" in captured.err
    assert "Device: CPU AMD EPYC 7R13 Processor, avx2" in captured.out
    assert explicit.config.runtime.mixed_precision == "mixed_bfloat16"
    automatic = build_trainer(training_config(small_rsna, tmp_path / "cache", mixed_precision="auto"),
                              tmp_path / "auto", progress=False)
    assert "precision float32 (auto: the CPU has no bfloat16 instructions" in capsys.readouterr().out
    assert automatic.config.runtime.mixed_precision == "float32"
    assert "mixed_precision: float32" in (tmp_path / "auto" / "config.yaml").read_text()


@pytest.mark.slow
def test_a_non_finite_weight_is_never_checkpointed(small_rsna, tmp_path, monkeypatch):
    """A NaN in a batch-norm statistic leaves the training loss finite (training mode normalises
    with the batch's statistics) but poisons every checkpoint and inference after it."""
    import retinanet.train.loop
    from retinanet.train.trainer import TrainingError

    original = retinanet.train.loop.build_train_step

    def poisoning_build_train_step(config, strategy, model, optimizer, loss):
        step_function = original(config, strategy, model, optimizer, loss)
        statistic = next(v for v in model.non_trainable_weights if "moving_variance" in v.path)

        def step(batch):
            scalars = step_function(batch)
            if int(optimizer.iterations.numpy()) == 3:
                statistic.assign(np.full(statistic.shape, np.nan, np.float32))
            return scalars

        return step

    monkeypatch.setattr(retinanet.train.loop, "build_train_step", poisoning_build_train_step)
    run_dir = tmp_path / "run"
    config = training_config(small_rsna, tmp_path / "cache", steps=6, checkpoint_every=2, validate_every=6)
    with pytest.raises(TrainingError) as error:
        train(config, run_dir, progress=False)
    message = str(error.value)
    assert "non-finite weights at step 4" in message and "moving_variance" in message
    assert named_checkpoint(message) == str(run_dir / "checkpoints" / "ckpt-2")
    assert stored_tensors_are_finite(run_dir / "checkpoints" / "ckpt-2")
    assert tf.train.get_checkpoint_state(str(run_dir / "checkpoints")).all_model_checkpoint_paths == [
        str(run_dir / "checkpoints" / "ckpt-2")]
    assert not (run_dir / "best.weights.h5").exists() and not (run_dir / "final.weights.h5").exists()


@pytest.mark.slow
def test_best_weights_are_not_written_when_a_weight_is_non_finite(small_rsna, tmp_path):
    from retinanet.train.trainer import TrainingError

    trainer = build_trainer(training_config(small_rsna, tmp_path / "cache"), tmp_path / "run", progress=False)
    # An optimizer slot: the model's outputs (and so the validation metric) stay finite.
    slot = next(v for v in trainer.task.optimizer.variables if len(v.shape) == 4)
    slot.assign(np.full(slot.shape, np.inf, np.float32))
    with pytest.raises(TrainingError, match="non-finite weights at step 0 .* before writing best.weights.h5"):
        trainer.validate()
    assert not (tmp_path / "run" / "best.weights.h5").exists() and not (tmp_path / "run" / "best.json").exists()


class Killed(BaseException):
    """Stands for a kill: not an Exception, so that nothing on the way catches it."""


def validation_steps(run_dir: Path) -> list[int]:
    return [entry["step"] for entry in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())
            if entry["split"] == "validation"]


@pytest.mark.slow
def test_a_validation_stopped_by_a_kill_is_run_on_resume_exactly_once(small_rsna, tmp_path):
    config = training_config(small_rsna, tmp_path / "cache", checkpoint_every=3, validate_every=3)
    run_dir = tmp_path / "run"
    first = build_trainer(config, run_dir, progress=False)
    run_validation = first.task.validator.run

    def killed_at_step_3():
        if first.step == 3:
            raise Killed
        return run_validation()

    first.task.validator.run = killed_at_step_3
    with pytest.raises(Killed):
        first.fit()
    assert tf.train.latest_checkpoint(str(run_dir / "checkpoints")).endswith("ckpt-3")
    assert not (run_dir / "threshold.json").exists()  # no validation completed
    # What a kill during a checkpoint write and during a best-weights write leave behind.
    (run_dir / "checkpoints" / "ckpt-4_temp").mkdir()
    (run_dir / "checkpoints" / "ckpt-4_temp" / "part-00000-of-00001.index").write_bytes(b"\0" * 64)
    (run_dir / "best.tmp.weights.h5").write_bytes(b"half a file")

    resumed = build_trainer(config, run_dir, resume=True, progress=False)
    assert not (run_dir / "checkpoints" / "ckpt-4_temp").exists() and not (run_dir / "best.tmp.weights.h5").exists()
    validated_at = []
    run_again = resumed.task.validator.run
    resumed.task.validator.run = lambda: validated_at.append(resumed.step) or run_again()
    resumed.fit()
    assert validated_at == [3, 6]
    assert validation_steps(run_dir) == [3, 6]
    # The best weights are chosen by the RSNA metric at the best threshold of each validation.
    logged = {entry["step"]: entry["best_rsna_metric"] for entry in map(json.loads, (run_dir / "log.jsonl")
                                                                        .read_text().splitlines())
              if entry["split"] == "validation"}
    best = json.loads((run_dir / "best.json").read_text())
    ranked = {step: (metric if np.isfinite(metric) else -1.0) for step, metric in logged.items()}
    assert best["step"] == max(ranked, key=lambda step: (ranked[step], -step))
    assert_threshold_of_best_weights(run_dir)
    written = (run_dir / "threshold.json").read_text()

    # Resuming the finished run validates for its report but records nothing twice, and adds no event file.
    event_files = sorted((run_dir / "tensorboard").rglob("*tfevents*"))
    finished = build_trainer(config, run_dir, resume=True, progress=False)
    results = finished.fit()
    assert results["step"] == 6 and validation_steps(run_dir) == [3, 6]
    assert sorted((run_dir / "tensorboard").rglob("*tfevents*")) == event_files
    assert (run_dir / "threshold.json").read_text() == written


def test_a_new_run_into_a_run_directory_is_refused_before_any_work(small_rsna, tmp_path):
    from retinanet.train.trainer import TrainingError

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "best.json").write_text(json.dumps({"step": 40, "rsna_metric": 0.9}))
    with pytest.raises(TrainingError, match="already holds a run .*--resume.*--run-dir.*--overwrite"):
        build_trainer(training_config(small_rsna, tmp_path / "cache"), run_dir, progress=False)
    assert sorted(path.name for path in run_dir.iterdir()) == ["best.json"]
    with pytest.raises(TrainingError, match="give one of them"):
        build_trainer(training_config(small_rsna, tmp_path / "cache"), run_dir, resume=True, overwrite=True,
                      progress=False)


@pytest.mark.slow
def test_overwrite_starts_the_run_clean(small_rsna, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "tensorboard" / "train").mkdir(parents=True)
    (run_dir / "tensorboard" / "train" / "events.out.tfevents.old").write_bytes(b"old")
    (run_dir / "best.json").write_text(json.dumps({"step": 40, "rsna_metric": 0.9}))
    (run_dir / "best.weights.h5").write_bytes(b"old")
    (run_dir / "log.jsonl").write_text('{"split": "validation", "step": 40, "rsna_metric": 0.9}\n')
    (run_dir / "threshold.json").write_text('{"score_threshold": 0.4}')
    (run_dir / "README.txt").write_text("the user's own notes")
    trainer = build_trainer(training_config(small_rsna, tmp_path / "cache"), run_dir, overwrite=True, progress=False)
    assert trainer.best_metric == -np.inf
    for name in ("best.json", "best.weights.h5", "log.jsonl", "threshold.json"):
        assert not (run_dir / name).exists(), name
    assert not (run_dir / "tensorboard" / "train" / "events.out.tfevents.old").exists()
    assert (run_dir / "README.txt").read_text() == "the user's own notes"


@pytest.mark.slow
def test_train_script_refuses_a_second_run_into_the_same_directory(tiny_run, script, clean_error, tmp_path):
    from retinanet.config import save_config

    save_config(tiny_run.config, tmp_path / "same.yaml")  # the run's own settings: it would mix silently
    before = (tiny_run.run_dir / "best.json").read_text()
    completed = script("train.py", "--config", tmp_path / "same.yaml", "--run-dir", tiny_run.run_dir,
                       "--no-progress")
    clean_error(completed, f"{tiny_run.run_dir} already holds a run", "--resume", "--overwrite")
    assert (tiny_run.run_dir / "best.json").read_text() == before
    both = script("train.py", "--run-dir", tiny_run.run_dir, "--resume", "--overwrite")
    assert both.returncode == 2 and "give one of them" in both.stderr


@pytest.mark.slow
def test_train_script_names_a_data_set_without_a_readable_image(script, clean_error, tmp_path):
    from helpers import TINY_OVERRIDES

    data_dir = generate_synthetic_rsna(tmp_path / "data", num_train=8, num_test=0, size=128, seed=2, progress=False)
    for image in (data_dir / "stage_2_train_images").iterdir():
        image.write_bytes(image.read_bytes()[:300])  # truncated: no decoder can read it
    overrides = [f"data.root={data_dir}", f"data.cache_dir={tmp_path / 'cache'}", "data.synthetic=null",
                 "data.original_size=128", "data.num_folds=4", "data.bad_file_policy=skip", *TINY_OVERRIDES]
    completed = script("train.py", "--config", REPO / "configs" / "demo.yaml", *(f"--set={o}" for o in overrides),
                       "--run-dir", tmp_path / "run", "--no-progress")
    clean_error(completed, "none of the 6 train image(s) could be read", "data.bad_file_policy",
                str(tmp_path / "cache" / "skipped_images_train.csv"))


@pytest.mark.slow
def test_resume_of_a_run_stopped_before_its_first_checkpoint_says_how_to_start_again(small_rsna, tmp_path, script,
                                                                                     clean_error):
    run_dir = tmp_path / "run"
    config = training_config(small_rsna, tmp_path / "cache", steps=2, validate_every=2, checkpoint_every=2)
    build_trainer(config, run_dir, progress=False)  # set up, then stopped before step 1
    (run_dir / "checkpoints" / "ckpt-2_temp").mkdir(parents=True)  # and during the first checkpoint write
    completed = script("train.py", "--resume", "--run-dir", run_dir, "--no-progress")
    clean_error(completed, f"the run in {run_dir} was stopped before its first checkpoint", "nothing to resume")
    advice = completed.stderr.strip().splitlines()[-1].split("start it again from step 0 with: ")[1]
    assert advice == f"retinanet train --config {run_dir / 'config.yaml'} --run-dir {run_dir} --overwrite"
    # The advice works.
    arguments = advice.split()[2:]
    started_again = script("train.py", *arguments, "--no-progress")
    assert started_again.returncode == 0, started_again.stderr[-2000:]
    assert (run_dir / "final.weights.h5").is_file() and tf.train.latest_checkpoint(str(run_dir / "checkpoints"))


@pytest.mark.slow
def test_a_checkpoint_that_cannot_be_written_stops_the_run_and_keeps_the_previous_one(small_rsna, tmp_path):
    from retinanet.runtime.safe_writes import FileWriteError

    run_dir = tmp_path / "run"
    config = training_config(small_rsna, tmp_path / "cache", steps=4, validate_every=4, checkpoint_every=2)
    trainer = build_trainer(config, run_dir, progress=False)
    # The step-4 checkpoint cannot be written (TensorFlow cannot make its temporary directory).
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    (run_dir / "checkpoints" / "ckpt-4_temp").write_text("in the way")
    with pytest.raises(FileWriteError, match="cannot write .*ckpt-4: .*latest complete checkpoint "
                                             "is still .*ckpt-2.*--resume"):
        trainer.fit()
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    assert latest.endswith("ckpt-2") and trainer.step == 4
    # What --resume does with it: the step-2 state comes back whole.
    trainer.task.checkpoint.restore(latest).assert_existing_objects_matched()
    assert trainer.step == 2


@pytest.mark.parametrize("clip_fraction", [0.25, 4.0])
def test_the_train_step_clips_the_gradient_as_clip_by_global_norm(clip_fraction):
    """Plain SGD (lr 0.1, no momentum or decay): the unclipped step moves each weight by -0.1 g;
    with gradient_clip_norm c = clip_fraction |g| (|g| the global norm the step reports) the
    step moves it by -0.1 g min(1, c / |g|)."""
    from test_mixed_precision import one_batch

    from retinanet.builders import build_anchor_set, build_loss, build_model, build_optimizer
    from retinanet.train.step import build_train_step

    def config(clip):
        return config_from_dict({
            "preprocessing": {"image_size": [64, 64]}, "anchors": {"sizes": [8.0, 16.0, 32.0, 64.0, 128.0]},
            "model": {"fpn_channels": 16, "head_convs": 1},
            "training": {"batch_size": 2, "steps": 3, "warmup_steps": 0, "optimizer": "sgd", "momentum": 0.0,
                         "weight_decay": 0.0, "learning_rate": 0.1, "gradient_clip_norm": clip},
            "runtime": {"mixed_precision": "float32"}})

    tf.keras.utils.set_random_seed(0)
    model = build_model(config(0.0))
    start = [variable.numpy() for variable in model.trainable_variables]

    def moves(clip):
        """The step's change of every weight from `start`, and the gradient norm it reports."""
        for variable, value in zip(model.trainable_variables, start):
            variable.assign(value)
        settings = config(clip)
        step = build_train_step(settings, tf.distribute.get_strategy(), model, build_optimizer(settings.training),
                                build_loss(settings, build_anchor_set(settings)))
        scalars = step.python_function(one_batch(settings))
        return [variable.numpy() - value for variable, value in zip(model.trainable_variables, start)], \
            float(scalars["gradient_norm"])

    unclipped, norm = moves(0.0)
    gradient = [-move / 0.1 for move in unclipped]
    assert norm == pytest.approx(np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in gradient)), rel=1e-3)
    clipped, _ = moves(clip_fraction * norm)
    for move, g, weight in zip(clipped, gradient, start):
        expected = -0.1 * min(1.0, clip_fraction) * g
        rounding = 4 * np.finfo(np.float32).eps * np.abs(weight).max()  # of a difference of float32 weights
        np.testing.assert_allclose(move, expected, rtol=1e-3, atol=max(rounding, 1e-3 * np.abs(expected).max()))

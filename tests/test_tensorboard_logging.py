"""TensorBoard records: config text, HParams, PR curves (counts checked by hand), histograms."""

from __future__ import annotations

import time

import numpy as np
import pytest

from retinanet.config import Config, config_from_dict
from retinanet.train.tensorboard_logging import (BOX_PR_CURVE, HPARAM_METRICS, IMAGE_PR_CURVE, counts_at_thresholds,
                                                 flatten_config)


def test_flattened_config_has_every_key_as_a_plain_value():
    config = config_from_dict({"data": {"synthetic": {"num_train": 12}}, "preprocessing": {"image_size": [64, 96]}})
    flat = flatten_config(config)
    assert flat["training.learning_rate"] == config.training.learning_rate
    assert flat["preprocessing.image_size"] == "[64, 96]"
    assert flat["data.synthetic.num_train"] == 12
    assert flat["model.image_head"] is True
    assert all(isinstance(value, (bool, int, float, str)) for value in flat.values())
    assert flatten_config(Config())["data.synthetic"] == "null"


def test_detection_counts_at_thresholds_by_hand():
    # Three ground-truth boxes; detections 0.9 (hit), 0.6 (miss), 0.3 (hit).
    counts = counts_at_thresholds([0.9, 0.6, 0.3], [True, False, True], num_positive=3, num_thresholds=11)
    true_positives, false_positives, true_negatives, false_negatives, precision, recall = counts
    at = {0.0: 0, 0.3: 3, 0.5: 5, 0.7: 7, 1.0: 10}
    assert [true_positives[at[t]] for t in at] == [2, 2, 1, 1, 0]
    assert [false_positives[at[t]] for t in at] == [1, 1, 1, 0, 0]
    assert [false_negatives[at[t]] for t in at] == [1, 1, 2, 2, 3]
    assert not true_negatives.any()
    np.testing.assert_allclose([precision[at[t]] for t in at], [2 / 3, 2 / 3, 1 / 2, 1, 0])
    np.testing.assert_allclose([recall[at[t]] for t in at], [2 / 3, 2 / 3, 1 / 3, 1 / 3, 0])


def test_image_counts_have_true_negatives():
    counts = counts_at_thresholds([0.8, 0.4, 0.2, 0.1], [True, False, True, False], num_positive=2, num_negative=2,
                                  num_thresholds=3)  # thresholds 0, 0.5, 1
    np.testing.assert_array_equal(counts[:4], [[2, 1, 0], [2, 0, 0], [0, 2, 2], [0, 1, 2]])


# --- a trained run's event files ---------------------------------------------------------------


def tags_with_plugins(directory) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={"tensors": 0})
    accumulator.Reload()
    return {tag: accumulator.SummaryMetadata(tag).plugin_data.plugin_name for tag in accumulator.Tags()["tensors"]}


@pytest.mark.slow
def test_run_has_config_text_hparams_and_pr_curves(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    root = tiny_run.run_dir / "tensorboard"
    tags = tags_with_plugins(root)
    assert tags["config"] == "text"
    assert tags["_hparams_/experiment"] == tags["_hparams_/session_start_info"] == "hparams"
    accumulator = EventAccumulator(str(root), size_guidance={"tensors": 0})
    accumulator.Reload()
    text = accumulator.Tensors("config")[0].tensor_proto.string_val[0].decode()
    assert "    training:" in text and f"    steps: {tiny_run.config.training.steps}" in text
    content = accumulator.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    session = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert session.hparams["training.steps"].number_value == tiny_run.config.training.steps
    assert session.hparams["preprocessing.image_size"].string_value == "[64, 64]"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        accumulator.SummaryMetadata("_hparams_/experiment").plugin_data.content).experiment
    assert [(m.name.group, m.name.tag) for m in experiment.metric_infos] == [
        ("validation", tag) for tag, _ in HPARAM_METRICS]

    validation = tags_with_plugins(root / "validation")
    assert validation[BOX_PR_CURVE] == validation[IMAGE_PR_CURVE] == "pr_curves"
    assert {tag for tag, _ in HPARAM_METRICS} <= set(validation)  # the HParams metrics exist as scalars
    assert {f"localization/hit_rate_iou_{iou:.2f}" for iou in (0.4, 0.5, 0.75)} <= set(validation)
    assert not any(tag.startswith("weights/") for tag in validation)  # histograms are off by default


@pytest.mark.slow
def test_weight_histograms_when_asked(tiny_run, tmp_path):
    import shutil
    import tensorflow as tf

    from retinanet.serve.inference import build_inference_model
    from retinanet.train.tensorboard_logging import log_validation_details

    model = build_inference_model(tiny_run.config, tiny_run.run_dir / "final.weights.h5")
    writer = tf.summary.create_file_writer(str(tmp_path / "events"))
    record = type("Record", (), {"patient_id": "p", "boxes": np.zeros((0, 4)), "target": 0})()
    log_validation_details(writer, 3, [record], {"detections": {"p": (np.zeros((0, 4)), np.zeros(0))},
                                                 "probabilities": None}, model)
    tags = tags_with_plugins(tmp_path / "events")
    assert tags[f"weights/{model.weights[0].path}"] == "histograms"
    assert sum(1 for tag in tags if tag.startswith("weights/")) == len(model.weights)
    assert IMAGE_PR_CURVE not in tags  # no image head output given
    shutil.rmtree(tmp_path / "events")


# --- resume: each step once, no empty event files ------------------------------------------------


def logged_steps(directory, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a scalar as TensorBoard's own reader shows it, every event file of `directory` read."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    accumulator = EventAccumulator(str(directory), size_guidance={"tensors": 0})
    accumulator.Reload()
    return [(event.step, round(float(tensor_util.make_ndarray(event.tensor_proto)), 6))
            for event in accumulator.Tensors(tag)]


def log_scalars(writers, name: str, steps, value: float) -> None:
    import tensorflow as tf

    for step in steps:
        with writers[name].as_default(step=step):
            tf.summary.scalar("loss", value + step)
    writers.flush()


@pytest.mark.parametrize("validated_step, validation_logged_again", [(4, []), (2, [4])])
def test_a_resumed_run_shows_each_step_once(tmp_path, validated_step, validation_logged_again):
    from retinanet.train.tensorboard_logging import SummaryWriters, trim_events

    # The first run logged train steps 1-6 and validated at 2 and 4, then was killed; its last
    # checkpoint is step 4, and validated_step tells whether step 4's validation was complete.
    before = SummaryWriters(tmp_path)
    log_scalars(before, "train", range(1, 7), 0.0)
    log_scalars(before, "validation", (2, 4), 0.0)
    dropped = trim_events(tmp_path, step=4, validated_step=validated_step)
    assert dropped == 2 + len(validation_logged_again)
    # The resumed run logs steps 5-6 again (different values: another process), and re-runs a
    # validation of step 4 that was not complete. A resumed process starts in a later second, and
    # event files are read in name order: <seconds>.<host>.<pid>.<writer count>, whose count may
    # sort lower when it gains a digit within one process.
    time.sleep(1.0 - time.time() % 1.0 + 0.01)
    after = SummaryWriters(tmp_path)
    log_scalars(after, "validation", validation_logged_again, 10.0)
    log_scalars(after, "train", (5, 6), 10.0)
    log_scalars(after, "validation", (6,), 10.0)
    assert logged_steps(tmp_path / "train", "loss") == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 15), (6, 16)]
    expected = [(2, 2), (4, 4 + 10 * bool(validation_logged_again)), (6, 16)]
    assert logged_steps(tmp_path / "validation", "loss") == expected
    assert trim_events(tmp_path, step=6, validated_step=6) == 0  # nothing after the last step


@pytest.mark.parametrize("cut, kept_steps", [("in the length of a next record", [(1, 1), (2, 2)]),
                                             ("in the data of the last record", [(1, 1)])])
def test_an_event_record_cut_short_by_a_kill_is_dropped(tmp_path, cut, kept_steps):
    import tensorflow as tf

    from retinanet.train.tensorboard_logging import SummaryWriters, event_files, trim_events

    log_scalars(SummaryWriters(tmp_path), "train", (1, 2), 0.0)
    (path,) = event_files(tmp_path / "train")
    data = path.read_bytes()
    path.write_bytes(data + b"\x20\x00\x00" if cut.endswith("next record") else data[:-5])
    assert trim_events(tmp_path, step=2, validated_step=2) == 1
    # The file version record and the kept steps, readable to the end.
    assert len(list(tf.data.TFRecordDataset(str(path)))) == 1 + len(kept_steps)
    assert logged_steps(tmp_path / "train", "loss") == kept_steps
    assert not list(tmp_path.glob("train/*.tmp*"))


def test_nothing_logged_leaves_no_event_file(tmp_path):
    from retinanet.train.tensorboard_logging import SummaryWriters, event_files, log_run_start

    writers = SummaryWriters(tmp_path)
    writers.flush()
    assert not list(tmp_path.rglob("*tfevents*"))
    log_run_start(tmp_path, Config(), "run")
    assert len(event_files(tmp_path)) == 1
    log_run_start(tmp_path, Config(), "run")  # a resumed run: its start is recorded already
    assert len(event_files(tmp_path)) == 1
    log_scalars(writers, "validation", (3,), 0.0)
    assert [path.parent.name for path in tmp_path.rglob("*tfevents*") if path.parent != tmp_path] == ["validation"]

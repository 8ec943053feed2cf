"""Tests for the constraints declared beside the config fields (retinanet.config.rules), the
cross-field rules, the retired keys, and the choice lists shared with the modules that act on them."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import typing

import pytest
import yaml

from helpers import REPOSITORY_ROOT as REPOSITORY
from retinanet.config import schema as config_module
from retinanet.config import (CROSS_FIELD_RULES, RENAMED_KEYS, RETIRED_KEYS, Config, ConfigError, load_config,
                              save_config)
from retinanet.config.rules import (CrossFieldRule, Rule, at_least, each, increasing, one_of, ordered_pair, positive,
                                    setting, violations, within)


def _write(tmp_path, mapping, name="experiment.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(mapping))
    return path


# --- the rule helpers -------------------------------------------------------------------------


@pytest.mark.parametrize("rule, accepted, refused, requirement", [
    (at_least(1), [1, 5], [0, -3], "must be at least 1"),
    (positive(), [1e-9, 2], [0, -1], "must be positive"),
    (within(0, 1), [0, 0.5, 1], [-0.01, 1.01], "must be in [0, 1]"),
    (within(0, 1, high_open=True), [0, 0.99], [1, 1.5], "must be in [0, 1)"),
    (within(0, 1, low_open=True), [1, 1e-6], [0, -1], "must be in (0, 1]"),
    (one_of(("a", "b")), ["a", "b"], ["c", ""], "must be one of a, b"),
    (each(positive()), [(1, 2), ()], [(1, 0), (-1,)], "every value must be positive"),
    (increasing(), [(3, 4, 7), (5,)], [(3, 3), (4, 3)], "must be strictly increasing"),
    (ordered_pair(), [(0.5, 0.5), (0.9, 1.1)], [(1.2, 0.8), (0, 1)], "needs 0 < low <= high"),
])
def test_rule_helpers_accept_and_refuse_the_boundaries(rule, accepted, refused, requirement):
    assert [rule.holds(value) for value in accepted] == [True] * len(accepted)
    assert [rule.holds(value) for value in refused] == [False] * len(refused)
    assert rule.requirement == requirement


def test_violations_name_the_nested_key_and_the_value_and_check_fields_before_cross_rules():
    @dataclasses.dataclass(frozen=True)
    class Inner:
        size: int = setting(4, at_least(1))

    @dataclasses.dataclass(frozen=True)
    class Outer:
        inner: Inner = dataclasses.field(default_factory=Inner)
        rate: float = setting(0.5, within(0, 1), Rule(lambda value: value != 0.25, "must not be a quarter"))

    never = (CrossFieldRule(("rate", "inner.size"), lambda config: False, "never holds"),)
    assert violations(Outer()) == []
    assert violations(Outer(inner=Inner(size=0), rate=0.25), never) == [
        "inner.size: must be at least 1, got 0", "rate: must not be a quarter, got 0.25"]
    assert violations(Outer(), never) == ["rate: never holds (got rate=0.5, inner.size=4)"]


# --- every key is declared with its constraints -------------------------------------------------


def _is_number(annotation) -> bool:
    if annotation in (int, float):
        return True
    return typing.get_origin(annotation) is tuple and all(
        argument in (int, float, Ellipsis) for argument in typing.get_args(annotation))


def _sections(cls=Config, prefix=""):
    for field in dataclasses.fields(cls):
        annotation = typing.get_type_hints(cls)[field.name]
        inner = [option for option in typing.get_args(annotation) if dataclasses.is_dataclass(option)]
        if dataclasses.is_dataclass(annotation) or inner:
            yield from _sections(inner[0] if inner else annotation, f"{prefix}{field.name}.")
        else:
            yield f"{prefix}{field.name}", annotation, field


def test_every_number_key_declares_its_range():
    """A new number key must come with its allowed range, declared beside it."""
    unchecked = [key for key, annotation, field in _sections() if _is_number(annotation) and not field.metadata]
    assert unchecked == []


def test_the_defaults_meet_every_rule():
    defaults = Config(data=dataclasses.replace(Config().data, synthetic=config_module.SyntheticConfig()))
    assert violations(defaults, CROSS_FIELD_RULES) == []


@pytest.mark.parametrize("key, value, requirement", [
    ("evaluation.batch_size", 0, "must be at least 1"),
    ("evaluation.num_overlays", -1, "must be at least 0"),
    ("postprocessing.image_gate_threshold", 1.5, "must be in [0, 1]"),
    ("training.momentum", 1.0, "must be in [0, 1)"),
    ("training.weight_decay", -1e-4, "must be at least 0"),
    ("training.step_factor", 0.0, "must be in (0, 1]"),
    ("training.step_factor", 2.0, "must be in (0, 1]"),
    ("training.num_summary_images", -1, "must be at least 0"),
    ("training.seed", -1, "must be at least 0"),
    ("data.split_seed", -1, "must be at least 0"),
    ("data.validation_fold", -1, "must be at least 0"),
    ("data.labels_csv", "", "must not be empty"),
    ("training.step_boundaries", [0.9, 0.5], "must be strictly increasing"),
    ("anchors.levels", [3, 8], "every value must be in [3, 7]"),
    ("training.schedule", "linear", "must be one of cosine, step, constant"),
])
def test_out_of_range_value_is_refused_at_load_naming_key_and_value(tmp_path, key, value, requirement):
    section, name = key.split(".")
    path = _write(tmp_path, {section: {name: value}})
    with pytest.raises(ConfigError) as error:
        load_config(path)
    shown = tuple(value) if isinstance(value, list) else value
    assert str(error.value) == f"{path}: {key}: {requirement}, got {shown!r}"


# --- cross-field rules --------------------------------------------------------------------------


@pytest.mark.parametrize("gating", ["gate", "multiply"])
def test_image_gating_without_image_head_is_refused_naming_both_keys(tmp_path, gating):
    path = _write(tmp_path, {"postprocessing": {"image_gating": gating}, "model": {"image_head": False}})
    with pytest.raises(ConfigError, match=r"postprocessing\.image_gating: .*model\.image_head"):
        load_config(path)
    assert load_config(path, ["model.image_head=true"]).postprocessing.image_gating == gating
    assert not load_config(path, ["postprocessing.image_gating=none"]).model.image_head


def test_train_script_refuses_gating_without_image_head_within_seconds():
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "scripts/train.py", "--config", "configs/demo.yaml",
         "--set", "postprocessing.image_gating=gate", "--set", "model.image_head=false"],
        capture_output=True, text=True, cwd=REPOSITORY, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    elapsed = time.monotonic() - started
    assert completed.returncode == 2, completed.stderr
    error_lines = [line for line in completed.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and "Traceback" not in completed.stderr
    assert "postprocessing.image_gating" in error_lines[0] and "model.image_head" in error_lines[0]
    assert elapsed < 30  # the config is checked before TensorFlow is loaded


@pytest.mark.parametrize("mapping, key", [
    ({"data": {"num_folds": 3, "validation_fold": 3}}, "data.validation_fold"),
    ({"anchors": {"positive_iou": 0.4, "negative_iou": 0.5}}, "anchors.negative_iou"),
    ({"training": {"strategy": "multi_worker", "time_budget_minutes": 5}}, "training.time_budget_minutes"),
])
def test_cross_field_rules_name_the_key_to_change(tmp_path, mapping, key):
    with pytest.raises(ConfigError, match=rf": {key}: "):
        load_config(_write(tmp_path, mapping))


# --- retired keys -------------------------------------------------------------------------------


def test_an_older_runs_config_with_retired_keys_loads_with_a_note(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(load_config(REPOSITORY / "configs" / "demo.yaml"), run_dir / "config.yaml")
    capsys.readouterr()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert "shuffle_buffer" not in saved["training"] and "test_images" not in saved["data"]
    saved["training"]["shuffle_buffer"] = 512  # as runs written before the keys were retired have them
    saved["data"]["test_images"] = "stage_2_test_images"
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))

    config = load_config(run_dir / "config.yaml")

    assert config == load_config(REPOSITORY / "configs" / "demo.yaml")
    notes = capsys.readouterr().err.splitlines()
    assert [note.split(": ")[2] for note in notes] == ["data.test_images is retired and ignored",
                                                       "training.shuffle_buffer is retired and ignored"]
    assert all(note.startswith(f"note: {run_dir / 'config.yaml'}: ") for note in notes)


def test_retired_keys_are_not_keys_of_the_schema():
    for key in RETIRED_KEYS:
        section, name = key.split(".")
        assert name not in {field.name for field in dataclasses.fields(getattr(Config(), section))}, key


# --- renamed keys -------------------------------------------------------------------------------

OLD_STYLE_SECTIONS = """\
training:
  steps: 40
  warmup_steps: 4
  mixed_precision: mixed_bfloat16
  intra_op_threads: 3
  inter_op_threads: 1
postprocessing:
  score_threshold: 0.02
  nms_iou: 0.45
evaluation:
  score_threshold: 0.35
"""


def test_an_older_runs_config_with_renamed_keys_loads_with_their_values(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(OLD_STYLE_SECTIONS)  # as the previous version saved them

    config = load_config(run_dir / "config.yaml")

    assert (config.runtime.mixed_precision, config.runtime.intra_op_threads, config.runtime.inter_op_threads) == \
        ("mixed_bfloat16", 3, 1)
    assert config.postprocessing.candidate_score_threshold == 0.02 and config.postprocessing.nms_iou == 0.45
    assert config.evaluation.score_threshold == 0.35  # the decision threshold keeps its name
    notes = capsys.readouterr().err.splitlines()
    assert [note.split(": ")[2] for note in notes] == [
        "postprocessing.score_threshold is now postprocessing.candidate_score_threshold",
        "training.mixed_precision is now runtime.mixed_precision",
        "training.intra_op_threads is now runtime.intra_op_threads",
        "training.inter_op_threads is now runtime.inter_op_threads"]
    save_config(config, run_dir / "config.yaml")  # saved again: the new names only
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["runtime"]["mixed_precision"] == "mixed_bfloat16" and "mixed_precision" not in saved["training"]
    assert load_config(run_dir / "config.yaml") == config


def test_an_old_name_in_an_override_sets_the_new_key(tmp_path, capsys):
    path = _write(tmp_path, {"runtime": {"mixed_precision": "auto"}})
    config = load_config(path, ["training.mixed_precision=float32", "postprocessing.score_threshold=0.0"])
    assert config.runtime.mixed_precision == "float32" and config.postprocessing.candidate_score_threshold == 0.0
    assert "training.mixed_precision is now runtime.mixed_precision" in capsys.readouterr().err


def test_a_new_name_in_an_override_wins_over_the_old_name_in_the_file(tmp_path):
    (tmp_path / "old.yaml").write_text(OLD_STYLE_SECTIONS)
    config = load_config(tmp_path / "old.yaml", ["runtime.mixed_precision=float32"])
    assert config.runtime.mixed_precision == "float32" and config.runtime.intra_op_threads == 3


def test_both_names_of_a_key_in_one_file_are_refused(tmp_path):
    path = _write(tmp_path, {"training": {"mixed_precision": "float32"}, "runtime": {"mixed_precision": "auto"}})
    with pytest.raises(ConfigError, match="training.mixed_precision and runtime.mixed_precision are both set"):
        load_config(path)


def test_renamed_keys_point_from_no_key_to_a_key_of_the_schema():
    def keys_of(section):
        return {field.name for field in dataclasses.fields(getattr(Config(), section))}

    for old, new in RENAMED_KEYS.items():
        (section, name), (new_section, new_name) = old.split("."), new.split(".")
        assert name not in keys_of(section) and new_name in keys_of(new_section), old


# --- one list of choices ------------------------------------------------------------------------


def test_every_choice_the_config_allows_is_accepted_by_the_code_that_acts_on_it(tmp_path):
    import numpy as np

    from retinanet.data.rsna import read_labels
    from retinanet.detection.losses import RetinaNetLoss
    from retinanet.detection.postprocess import Postprocessor

    anchors = np.array([[0, 0, 32, 32]], np.float32)
    assert config_module.IMAGE_GATINGS.choices() == ("none", "gate", "multiply")
    for gating in config_module.IMAGE_GATINGS.choices():
        assert Postprocessor(anchors, [1], (32, 32), image_gating=gating).image_gating == gating
    assert config_module.BOX_LOSSES.choices() == ("smooth_l1", "giou", "ciou")
    for box_loss in config_module.BOX_LOSSES.choices():
        assert RetinaNetLoss(box_loss=box_loss, anchors=anchors).box_loss == box_loss
    labels = tmp_path / "labels.csv"
    labels.write_text("patientId,x,y,width,height,Target\np1,,,,,0\n")
    for policy in config_module.BAD_FILE_POLICIES:
        records, _ = read_labels(labels, policy=policy)
        assert [record.patient_id for record in records] == ["p1"]
    with pytest.raises(ValueError, match="image_gating must be one of none, gate, multiply"):
        Postprocessor(anchors, [1], (32, 32), image_gating="sometimes")


def test_a_name_added_to_a_component_table_is_a_config_choice(monkeypatch):
    from retinanet.config import config_from_dict
    from retinanet.detection import losses

    with pytest.raises(ConfigError, match="loss.box_loss: must be one of smooth_l1, giou, ciou, got 'l1'"):
        config_from_dict({"loss": {"box_loss": "l1"}})
    monkeypatch.setitem(losses.BOX_LOSSES, "l1", losses.smooth_l1_box_loss)
    assert config_from_dict({"loss": {"box_loss": "l1"}}).loss.box_loss == "l1"


def test_importing_the_config_loads_no_tensorflow():
    """The components' tables are read when a value is checked, and the defaults the schema shares
    with the components live in modules without TensorFlow (`retinanet.detection.defaults`,
    `retinanet.detection.anchors`): `retinanet score` and the data readers import the config
    without paying for TensorFlow."""
    probe = ("import sys, retinanet.config, retinanet.data.rsna; "
             "print('tensorflow' in sys.modules, 'retinanet.detection.defaults' in sys.modules)")
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                               cwd=REPOSITORY, env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    assert completed.stdout.strip() == "False True", completed.stderr

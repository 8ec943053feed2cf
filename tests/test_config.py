"""Tests for retinanet.config: every shipped config loads; strict keys, types and values; overrides."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import yaml

from retinanet.config import (
                              AnchorConfig,
                              Config,
                              ConfigError,
                              LossConfig,
                              ModelConfig,
                              PostprocessingConfig,
                              config_from_dict,
                              load_config,
                              save_config,
                              to_dict,
                              )

REPOSITORY = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted((REPOSITORY / "configs").glob("*.yaml"))


def _write(tmp_path, mapping, name="experiment.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(mapping))
    return path


def _error_for(tmp_path, mapping) -> str:
    path = _write(tmp_path, mapping)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message, f"error does not name the file: {message}"
    return message


# --- the shipped configs ----------------------------------------------------------------------


def test_there_are_shipped_configs():
    names = {path.name for path in CONFIG_FILES}
    assert {"demo.yaml", "rsna.yaml"} <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda path: path.name)
def test_shipped_config_loads(path):
    config = load_config(path)
    assert isinstance(config, Config)
    assert all(isinstance(side, int) for side in config.preprocessing.image_size)
    assert all(side % 32 == 0 for side in config.preprocessing.image_size)
    # Every hyperparameter is spelled out in the shipped configs.
    mapping = yaml.safe_load(path.read_text())
    for section, values in to_dict(config).items():
        assert section in mapping, f"{path.name} does not spell out section {section}"
        assert set(mapping[section]) == set(values), f"{path.name}: {section} keys differ from the schema"


# --- unknown keys -----------------------------------------------------------------------------


def test_unknown_top_level_key_names_key_and_file(tmp_path):
    message = _error_for(tmp_path, {"trainig": {"steps": 5}})
    assert "trainig" in message


def test_unknown_nested_key_names_dotted_key(tmp_path):
    message = _error_for(tmp_path, {"training": {"stepz": 5}})
    assert "training.stepz" in message


def test_unknown_key_two_levels_deep(tmp_path):
    message = _error_for(tmp_path, {"data": {"synthetic": {"num_train": 20, "colour": "red"}}})
    assert "data.synthetic.colour" in message


# --- wrong types ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mapping, key",
    [
        ({"training": {"steps": "many"}}, "training.steps"),  # string for int
        ({"training": {"steps": True}}, "training.steps"),  # bool for int
        ({"training": {"steps": 7.5}}, "training.steps"),  # float for int
        ({"training": {"learning_rate": "fast"}}, "training.learning_rate"),  # string for float
        ({"augmentation": {"enabled": 1}}, "augmentation.enabled"),  # int for bool
        ({"preprocessing": {"image_size": [256]}}, "preprocessing.image_size"),  # list too short
        ({"preprocessing": {"image_size": [256, 256, 256]}}, "preprocessing.image_size"),  # too long
        ({"preprocessing": {"image_size": 256}}, "preprocessing.image_size"),  # scalar for list
        ({"preprocessing": {"image_size": [256, "x"]}}, "preprocessing.image_size[1]"),  # bad item
        ({"model": {"weights": 3}}, "model.weights"),  # int for string
        ({"training": 5}, "training"),  # scalar for a section
    ],
)
def test_wrong_type_names_key(tmp_path, mapping, key):
    message = _error_for(tmp_path, mapping)
    assert key in message


def test_int_is_accepted_for_float_and_becomes_float(tmp_path):
    config = load_config(_write(tmp_path, {"training": {"learning_rate": 1}}))
    assert isinstance(config.training.learning_rate, float)
    assert config.training.learning_rate == 1.0


@pytest.mark.parametrize("text, expected", [("1e-3", 0.001), ("1e6", 1e6), ("2E+2", 200.0), ("+5e-1", 0.5),
                                            ("1.5e-4", 1.5e-4)])
def test_exponents_without_a_dot_are_numbers_in_files_and_overrides(tmp_path, text, expected):
    # YAML 1.1 (PyYAML's default) reads `1e-3` as the string '1e-3'.
    path = tmp_path / "experiment.yaml"
    path.write_text(f"loss:\n  box_weight: {text}\n")
    assert load_config(path).loss.box_weight == expected
    overridden = load_config(_write(tmp_path, {}, "other.yaml"), [f"loss.box_weight={text}"])
    assert overridden.loss.box_weight == expected and type(overridden.loss.box_weight) is float


def test_exponent_for_an_integer_key_is_still_a_type_error(tmp_path):
    with pytest.raises(ConfigError, match="training.steps: expected an integer"):
        load_config(_write(tmp_path, {}), ["training.steps=1e6"])


@pytest.mark.parametrize("key, text", [("training.learning_rate", ".inf"), ("training.learning_rate", ".nan"),
                                       ("loss.gamma", ".inf"), ("training.gradient_clip_norm", ".inf"),
                                       ("augmentation.scale_range", "[0.9, .inf]")])
def test_non_finite_numbers_are_refused(tmp_path, key, text):
    section, name = key.split(".")
    path = tmp_path / "experiment.yaml"
    path.write_text(f"{section}:\n  {name}: {text}\n")
    with pytest.raises(ConfigError, match=rf"{key}(\[1\])?: expected a finite number") as error:
        load_config(path)
    assert str(path) in str(error.value)
    with pytest.raises(ConfigError, match="expected a finite number"):
        load_config(_write(tmp_path, {}, "other.yaml"), [f"{key}={text}"])


# --- impossible values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mapping, key",
    [
        ({"anchors": {"positive_iou": 0.4, "negative_iou": 0.5}}, "anchors.negative_iou"),
        ({"preprocessing": {"image_size": [500, 512]}}, "preprocessing.image_size"),
        ({"preprocessing": {"image_size": [512, 100]}}, "preprocessing.image_size"),
        ({"data": {"num_folds": 5, "validation_fold": 5}}, "data.validation_fold"),
        ({"data": {"validation_fold": -1}}, "data.validation_fold"),
        ({"training": {"batch_size": -8}}, "training.batch_size"),
        ({"training": {"batch_size": 0}}, "training.batch_size"),
        ({"training": {"optimizer": "rmsprop"}}, "training.optimizer"),
        ({"loss": {"box_loss": "l2"}}, "loss.box_loss"),
        ({"postprocessing": {"image_gating": "sometimes"}}, "postprocessing.image_gating"),
        ({"augmentation": {"horizontal_flip": 1.5}}, "augmentation.horizontal_flip"),
        ({"augmentation": {"scale_range": [1.2, 0.8]}}, "augmentation.scale_range"),
        ({"model": {"prior_probability": 0.0}}, "model.prior_probability"),
        ({"loss": {"gamma": -1.0}}, "loss.gamma"),
        ({"postprocessing": {"box_shrink": 1.5}}, "postprocessing.box_shrink"),
        ({"training": {"warmup_steps": -1}}, "training.warmup_steps"),
        ({"anchors": {"levels": [3, 4], "sizes": [32.0, 64.0, 128.0]}}, "anchors.sizes"),
    ],
)
def test_impossible_value_names_key(tmp_path, mapping, key):
    message = _error_for(tmp_path, mapping)
    assert key in message


def test_negative_noise_std_names_noise_std(tmp_path):
    message = _error_for(tmp_path, {"augmentation": {"noise_std": -0.1}})
    assert "augmentation.noise_std" in message


def test_zero_pre_nms_top_k_names_pre_nms_top_k(tmp_path):
    message = _error_for(tmp_path, {"postprocessing": {"pre_nms_top_k": 0}})
    assert "postprocessing.pre_nms_top_k" in message


def test_config_from_dict_names_source():
    with pytest.raises(ConfigError, match="my-source"):
        config_from_dict({"training": {"optimizer": "rmsprop"}}, source="my-source")


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_a_directory_is_named_as_one(tmp_path):
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path))} is a directory, not a config file$"):
        load_config(tmp_path)


def test_a_file_that_is_not_utf8_is_a_config_error_naming_it(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("data:\n  root: donn\xe9es\n".encode("latin-1"))  # é is byte 0xe9 at offset 18
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: not UTF-8 text \(byte 0xe9 at offset 18\)"):
        load_config(path)


def test_yaml_nested_too_deeply_is_a_config_error_in_a_file_and_in_an_override(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 100_000)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(deep))}: not valid YAML: nested too deeply"):
        load_config(deep)
    with pytest.raises(ConfigError) as error:
        load_config(_write(tmp_path, {}), ["training.steps=" + "[" * 100_000])
    assert str(error.value).startswith("--set training.steps=[[[")
    assert "the value is not valid YAML: nested too deeply" in str(error.value)
    assert len(str(error.value)) < 500  # the override is not echoed in full


def test_empty_file_gives_defaults_with_paths_beside_the_file(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    defaults = Config()
    expected = dataclasses.replace(
        defaults, data=dataclasses.replace(defaults.data, root=str(tmp_path / "data" / "rsna"),
                                           cache_dir=str(tmp_path / "data" / "cache")),
        training=dataclasses.replace(defaults.training, run_root=str(tmp_path / "runs")))
    assert load_config(path) == expected


# --- overrides --------------------------------------------------------------------------------


def test_overrides_are_typed_by_the_schema(tmp_path):
    path = _write(tmp_path, {"training": {"steps": 100, "warmup_steps": 0}})
    config = load_config(path, ["training.steps=7", "preprocessing.image_size=[64,96]"])
    assert config.training.steps == 7
    assert isinstance(config.training.steps, int)
    assert config.preprocessing.image_size == (64, 96)
    assert isinstance(config.preprocessing.image_size, tuple)
    assert all(type(side) is int for side in config.preprocessing.image_size)


def test_override_of_float_tuple_and_string(tmp_path):
    path = _write(tmp_path, {})
    config = load_config(path, ["augmentation.scale_range=[1, 2]", "training.optimizer=adamw"])
    assert config.augmentation.scale_range == (1.0, 2.0)
    assert all(type(value) is float for value in config.augmentation.scale_range)
    assert config.training.optimizer == "adamw"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda path: path.name)
def test_override_on_shipped_config(path):
    # warmup_steps must stay below steps, so a short smoke run overrides both.
    config = load_config(path, ["training.steps=7", "training.warmup_steps=2"])
    assert config.training.steps == 7 and config.training.warmup_steps == 2
    original = load_config(path)
    expected = dataclasses.replace(original, training=dataclasses.replace(original.training, steps=7, warmup_steps=2))
    assert config == expected


def test_smoke_run_override_clamps_the_warmup_with_a_note(tmp_path, capsys):
    path = _write(tmp_path, {"training": {"warmup_steps": 50}})
    assert load_config(path, ["training.steps=7"]).training.warmup_steps == 6
    assert load_config(path, ["training.steps=1"]).training.warmup_steps == 0
    notes = capsys.readouterr().err.splitlines()
    assert notes[0] == (f"note: {path}: training.warmup_steps 50 >= training.steps 7; warm-up clamped to 6 step(s)")
    assert len(notes) == 2
    assert load_config(path, ["training.steps=51"]).training.warmup_steps == 50
    assert capsys.readouterr().err == ""


# --- paths ------------------------------------------------------------------------------------


def test_file_paths_are_relative_to_the_file_and_override_paths_to_the_working_directory(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    path = _write(folder, {"data": {"root": "../data/x", "cache_dir": "/abs/cache", "split_file": "folds.csv"},
                           "model": {"weights": "imagenet"}, "training": {"run_root": "runs"}})
    monkeypatch.chdir(tmp_path / "configs")  # neither the repository nor the config's directory matters
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(path, ["model.weights=weights/resnet.h5"])
    assert config.data.root == str(tmp_path / "data" / "x")
    assert config.data.cache_dir == "/abs/cache"
    assert config.data.split_file == str(folder / "folds.csv")
    assert config.training.run_root == str(folder / "runs")
    assert config.model.weights == str(elsewhere / "weights" / "resnet.h5")
    assert load_config(path).model.weights == "imagenet"  # a word, not a path


def test_saved_config_keeps_paths_inside_its_directory_relative(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.chdir(tmp_path)
    config = config_from_dict({"data": {"root": "data", "split_file": str(run_dir / "split.csv")}})
    save_config(config, run_dir / "config.yaml")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["split_file"] == "split.csv"
    assert saved["data"]["root"] == str(tmp_path / "data")  # relative to the working directory when made
    moved = tmp_path / "moved" / "run"
    moved.parent.mkdir()
    run_dir.rename(moved)
    monkeypatch.chdir(moved.parent)
    reloaded = load_config(moved / "config.yaml")
    assert reloaded.data.split_file == str(moved / "split.csv")
    assert reloaded.data.root == str(tmp_path / "data")


@pytest.mark.parametrize("override, message", [
    ("training.steps=abc", "training.steps: expected an integer, got 'abc'"),
    ("training.steps=[1, 2]", "training.steps: expected an integer"),
    ("training.stepz=7", "unknown key training.stepz"),
    ("trainig.steps=7", "unknown key trainig"),
    ("training.optimizer=rmsprop", "training.optimizer: must be one of sgd, adamw"),
    ("training=5", "training: expected a mapping"),
    ("training.steps", "must look like section.key=value"),
    ("training.steps=[1", "the value is not valid YAML"),
])
def test_a_bad_override_names_the_set_argument_not_the_file(tmp_path, override, message):
    path = _write(tmp_path, {"training": {"steps": 100, "warmup_steps": 0}})
    with pytest.raises(ConfigError) as error:
        load_config(path, ["training.warmup_steps=2", override])
    assert str(error.value).startswith(f"--set {override}: ")
    assert message in str(error.value)
    assert str(path) not in str(error.value)


def test_an_error_in_the_file_names_the_file_not_the_overrides(tmp_path):
    path = _write(tmp_path, {"training": {"steps": "abc"}})
    with pytest.raises(ConfigError) as error:
        load_config(path, ["training.optimizer=adamw"])
    assert str(error.value) == f"{path}: training.steps: expected an integer, got 'abc'"


def test_a_rule_broken_by_file_and_override_together_names_both(tmp_path):
    path = _write(tmp_path, {"model": {"image_head": False}})
    with pytest.raises(ConfigError) as error:
        load_config(path, ["training.steps=50", "postprocessing.image_gating=gate"])
    assert str(error.value).startswith(f"{path} with --set postprocessing.image_gating=gate: "
                                       "postprocessing.image_gating: needs model.image_head: true")
    assert "training.steps=50" not in str(error.value)


# --- save / load round trip --------------------------------------------------------------------


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda path: path.name)
def test_save_load_round_trip(tmp_path, path):
    config = load_config(path, ["preprocessing.image_size=[64,96]"])
    saved = tmp_path / "resolved.yaml"
    save_config(config, saved)
    assert load_config(saved) == config


def test_round_trip_of_defaults_with_synthetic_section(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = config_from_dict({"data": {"synthetic": {"num_train": 12, "seed": 3}}})
    saved = tmp_path / "resolved.yaml"
    save_config(config, saved)
    reloaded = load_config(saved)
    # The relative default paths meant the working directory: they come back absolute.
    assert reloaded == dataclasses.replace(
        config, data=dataclasses.replace(config.data, root=str(tmp_path / "data" / "rsna"),
                                         cache_dir=str(tmp_path / "data" / "cache")),
        training=dataclasses.replace(config.training, run_root=str(tmp_path / "runs")))
    assert reloaded.data.synthetic.num_train == 12


def test_config_is_frozen():
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.training.steps = 3  # type: ignore[misc]


# --- documented defaults (docs/architecture.md: the paper's values) --------------------------------------------------


def test_anchor_defaults_match_design():
    anchors = AnchorConfig()
    assert anchors.positive_iou == 0.5
    assert anchors.negative_iou == 0.4
    assert anchors.levels == (3, 4, 5, 6, 7)
    assert anchors.sizes == (32.0, 64.0, 128.0, 256.0, 512.0)
    assert anchors.aspect_ratios == (0.5, 1.0, 2.0)
    expected_scales = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    assert len(anchors.scales) == 3
    for value, expected in zip(anchors.scales, expected_scales):
        assert math.isclose(value, expected, rel_tol=1e-9)


def test_loss_and_model_defaults_match_design():
    loss = LossConfig()
    assert loss.alpha == 0.25
    assert loss.gamma == 2.0
    assert loss.image_weight == 0.1
    assert loss.box_loss == "smooth_l1"
    model = ModelConfig()
    assert model.prior_probability == 0.01


def test_postprocessing_defaults_match_design():
    post = PostprocessingConfig()
    assert post.candidate_score_threshold == 0.05
    assert post.nms_iou == 0.5
    assert post.max_detections == 100


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda path: path.name)
def test_shipped_anchor_and_loss_settings_match_design(path):
    config = load_config(path)
    assert config.anchors.positive_iou == 0.5
    assert config.anchors.negative_iou == 0.4
    # rsna.yaml keeps the paper's 32..512 px; the 128 px demo halves them for its smaller boxes.
    # Either way the sizes double from level to level, like the strides.
    paper = (32.0, 64.0, 128.0, 256.0, 512.0)
    expected = paper if path.name != "demo.yaml" else tuple(size / 2 for size in paper)
    assert config.anchors.sizes == expected
    assert config.loss.alpha == 0.25 and config.loss.gamma == 2.0
    assert config.model.prior_probability == 0.01
    # The demo keeps the paper's ratios and scales; rsna.yaml's are fitted to the real boxes (docs/data.md).
    if path.name == "demo.yaml":
        ratios, scales = (0.5, 1.0, 2.0), (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    else:
        ratios, scales = (0.9054, 1.4384, 2.0941), (1.0716, 1.3456, 1.6805)
    assert config.anchors.aspect_ratios == ratios
    for value, expected in zip(config.anchors.scales, scales, strict=True):
        assert math.isclose(value, expected, rel_tol=1e-4)

"""The backbone's weights: each way of failing to get them is told apart and names the path."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format
from keras.src.utils import file_utils

from retinanet.model.backbone import KERAS_WEIGHTS_FILE, WeightsError, build_backbone

INPUT_SHAPE = (64, 64, 3)


def _other_network() -> keras.Model:
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="dense")])


def _save_legacy_h5(model: keras.Model, path) -> None:
    """The format of Keras' published ResNet50 file (`*_notop.h5`)."""
    import h5py

    with h5py.File(path, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, model)


def _error(weights) -> str:
    with pytest.raises(WeightsError) as caught:
        build_backbone(INPUT_SHAPE, weights=str(weights))
    return str(caught.value)


def test_missing_file_is_named(tmp_path):
    assert _error(tmp_path / "absent.h5") == f"model.weights: file not found: {tmp_path / 'absent.h5'}"


def test_a_file_of_another_format_is_named(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"\x80\x02 a pickle")
    message = _error(path)
    assert message.startswith(f"model.weights: {path} is not a Keras weights file (.h5)")
    assert KERAS_WEIGHTS_FILE in message


@pytest.mark.parametrize("content", [b"<html>a proxy's error page</html>", b""], ids=["not-hdf5", "empty"])
def test_a_corrupt_file_is_named_as_unreadable(tmp_path, content):
    path = tmp_path / KERAS_WEIGHTS_FILE
    path.write_bytes(content)
    message = _error(path)
    assert message.startswith(f"model.weights: cannot read {path}: corrupt, truncated or not readable")
    assert "download it again" in message and "another network" not in message


def test_a_truncated_weights_file_is_named_as_unreadable(tmp_path):
    whole = tmp_path / "whole.h5"
    _save_legacy_h5(_other_network(), whole)
    path = tmp_path / KERAS_WEIGHTS_FILE
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert _error(path).startswith(f"model.weights: cannot read {path}: corrupt, truncated or not readable")


@pytest.mark.filterwarnings("ignore:Skipping nested container")  # Keras, before it raises
@pytest.mark.parametrize("name", ["other.h5", "other.weights.h5"])
def test_weights_of_another_network_are_named_as_a_mismatch(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".weights.h5"):
        _other_network().save_weights(path)
    else:
        _save_legacy_h5(_other_network(), path)
    message = _error(path)
    assert message.startswith(f"model.weights: {path} holds weights of another network, not a ResNet50")
    assert KERAS_WEIGHTS_FILE in message and "cannot read" not in message


def test_a_failed_download_is_named_as_one(monkeypatch):
    def offline(*arguments, **keywords):  # what Keras' get_file raises without a network
        raise Exception("URL fetch failure on https://storage.googleapis.com/x.h5: None -- [Errno -3] "
                        "Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "get_file", offline)
    message = _error("imagenet")
    assert message.startswith("model.weights: imagenet: could not download the ImageNet weights")
    assert "Temporary failure in name resolution" in message and KERAS_WEIGHTS_FILE in message


@pytest.mark.slow
def test_a_resnet50_weights_file_loads_for_three_and_one_channels(tmp_path):
    """A file in the format of Keras' notop file (100 MB) loads; one channel sums conv1 over RGB."""
    source = keras.applications.ResNet50(include_top=False, weights=None, input_shape=INPUT_SHAPE)
    path = tmp_path / KERAS_WEIGHTS_FILE
    _save_legacy_h5(source, path)
    expected = source.get_layer("conv1_conv").get_weights()[0]

    colour = build_backbone(INPUT_SHAPE, weights=str(path))
    grey = build_backbone((*INPUT_SHAPE[:2], 1), weights=str(path))

    np.testing.assert_array_equal(colour.get_layer("conv1_conv").get_weights()[0], expected)
    np.testing.assert_allclose(grey.get_layer("conv1_conv").get_weights()[0], expected.sum(axis=2, keepdims=True),
                               rtol=1e-6)
    deepest = "conv5_block3_3_conv"
    np.testing.assert_array_equal(grey.get_layer(deepest).get_weights()[0], source.get_layer(deepest).get_weights()[0])

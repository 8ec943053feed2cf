"""A write that fails (full disk, read-only directory) keeps the previous file and names the one it could not write."""

from __future__ import annotations

import errno
import json
import os

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from retinanet.runtime import safe_writes
from retinanet.runtime.safe_writes import (FileWriteError, append_line, replace_atomically, save_checkpoint,
                                           save_weights_atomically, temporary_path, write_text_atomically)


class FullDiskFile:
    """What `open(path, "wb")` returns on a disk that fills up: half the bytes land, then ENOSPC."""

    def __init__(self, path, mode="r", *args, **kwargs):
        self.file = open(path, mode, *args, **kwargs)

    def write(self, data):
        self.file.write(data[: len(data) // 2])
        self.file.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        self.file.close()


@pytest.fixture
def full_disk(monkeypatch):
    """Every file written through retinanet.runtime.safe_writes hits a full disk."""
    monkeypatch.setattr(safe_writes, "open", FullDiskFile, raising=False)


def test_lines_are_appended_and_a_full_disk_leaves_no_half_line(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    append_line(path, '{"step": 1}')
    append_line(path, '{"step": 2}')
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    monkeypatch.setattr(safe_writes, "open", FullDiskFile, raising=False)
    with pytest.raises(FileWriteError, match=f"cannot write {path}: No space left on device; its earlier "
                                             "lines are kept"):
        append_line(path, json.dumps({"step": 3, "padding": "x" * 1000}))
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_a_durable_append_reaches_the_disk_before_it_returns(tmp_path, monkeypatch):
    path = tmp_path / "detections.jsonl"
    synced = []
    monkeypatch.setattr(safe_writes.os, "fsync", lambda descriptor: synced.append(path.read_text()))
    append_line(path, "a")
    assert synced == []
    append_line(path, "b\nc", durable=True)
    assert synced == ["a\nb\nc\n"]  # flushed first: the synced file holds the whole append


def test_temporaries_sit_beside_the_file_and_keep_its_suffixes(tmp_path):
    assert temporary_path(tmp_path / "best.weights.h5") == tmp_path / "best.tmp.weights.h5"
    assert temporary_path(tmp_path / "index.json") == tmp_path / "index.tmp.json"
    assert temporary_path(tmp_path / "ckpt") == tmp_path / "ckpt.tmp"


def test_a_full_disk_keeps_the_previous_file_and_names_the_path(tmp_path, full_disk):
    path = tmp_path / "best.json"
    path.write_text('{"step": 3}')
    with pytest.raises(FileWriteError, match=f"cannot write {path}: No space left on device; the previous "
                                             "best.json is unchanged"):
        write_text_atomically(path, json.dumps({"step": 6, "padding": "x" * 1000}))
    assert path.read_text() == '{"step": 3}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json"]  # no temporary left behind


def test_a_full_disk_on_a_first_write_leaves_nothing(tmp_path, full_disk):
    with pytest.raises(FileWriteError, match="nothing was written there"):
        write_text_atomically(tmp_path / "new.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_directory_is_a_named_error(tmp_path):
    # Below a regular file no file can be created, whoever runs the test (root ignores chmod).
    (tmp_path / "plain").write_text("")
    with pytest.raises(FileWriteError, match=f"cannot write {tmp_path / 'plain' / 'x.json'}: Not a directory"):
        write_text_atomically(tmp_path / "plain" / "x.json", "{}")


def test_an_interrupted_write_removes_its_temporary_and_passes_the_error_on(tmp_path):
    path = tmp_path / "index.json"
    path.write_text("old")

    def interrupted(temporary):
        temporary.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        replace_atomically(path, interrupted)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]


def tiny_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(5)(inputs)))


def test_weights_survive_a_disk_that_fills_during_the_hdf5_write(tmp_path, monkeypatch):
    path = tmp_path / "best.weights.h5"
    good = tiny_model(0)
    save_weights_atomically(good, path)
    written = []
    store = h5py.Group.__setitem__

    def fills_up(group, name, value):  # the second tensor no longer fits
        if written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(name)
        store(group, name, value)

    monkeypatch.setattr(h5py.Group, "__setitem__", fills_up)
    with pytest.raises(FileWriteError, match=f"cannot write {path}: No space left.*previous best.weights.h5 "
                                             "is unchanged"):
        save_weights_atomically(tiny_model(1), path)
    monkeypatch.undo()
    assert written  # the write had begun
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.weights.h5"]
    restored = tiny_model(2)
    restored.load_weights(path)
    for expected, found in zip(good.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(found, expected)


def test_a_failed_checkpoint_keeps_the_previous_one_restorable(tmp_path):
    variable = tf.Variable([1.0, 2.0])
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(variable=variable), tmp_path / "checkpoints",
                                         max_to_keep=1)
    first = save_checkpoint(manager, 2)
    variable.assign([3.0, 4.0])
    # TensorFlow's own writer fails: its temporary directory cannot be made (as on a read-only disk).
    (tmp_path / "checkpoints" / "ckpt-4_temp").write_text("in the way")
    with pytest.raises(FileWriteError, match=f"cannot write {tmp_path / 'checkpoints' / 'ckpt-4'}"
                                             f": .*Not a directory.*latest complete checkpoint is still {first}"):
        save_checkpoint(manager, 4)
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")) == first
    restored = tf.Variable([0.0, 0.0])
    tf.train.Checkpoint(variable=restored).restore(first).assert_existing_objects_matched()
    np.testing.assert_array_equal(restored.numpy(), [1.0, 2.0])
    # Once the disk is writable again the next checkpoint is written, and max_to_keep applies.
    (tmp_path / "checkpoints" / "ckpt-4_temp").unlink()
    assert save_checkpoint(manager, 4).endswith("ckpt-4")
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-4")
    assert not list((tmp_path / "checkpoints").glob("ckpt-2.*"))

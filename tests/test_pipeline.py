"""The tf.data pipeline and the preprocessed-image cache on a tiny synthetic set."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from retinanet.builders import anchor_set_for
from retinanet.config import config_from_dict
from retinanet.data.cache import build_cache, settings_key
from retinanet.data.dicom import DicomReadError
from retinanet.builders import build_dataset, build_dataset_and_records
from retinanet.data.split import prepare_split
from retinanet.synthetic.rsna_layout import generate_synthetic_rsna

SIZE = 64


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsna")
    generate_synthetic_rsna(root, num_train=24, num_test=0, size=256, seed=3, progress=False)
    return root


def make_config(root, cache_dir, **data):
    return config_from_dict({
        "data": {"root": str(root), "cache_dir": str(cache_dir), "original_size": 256, "num_folds": 4, **data},
        "preprocessing": {"image_size": [SIZE, SIZE]},
        # Boxes of a 256 px image shrink to 10-40 px at 64 px: anchors scaled down to match.
        "anchors": {"sizes": [8.0, 16.0, 32.0, 64.0, 128.0]},
        "training": {"batch_size": 4, "steps": 10, "warmup_steps": 1, "deterministic": True},
        "evaluation": {"batch_size": 5},
    })


def numpy_iou(anchors, box):
    top_left = np.maximum(anchors[:, :2], box[:2])
    bottom_right = np.minimum(anchors[:, 2:], box[2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
    areas = np.prod(anchors[:, 2:] - anchors[:, :2], axis=1)
    return intersection / (areas + np.prod(box[2:] - box[:2]) - intersection)


def test_validation_batches_have_documented_shapes_and_targets(data_root, tmp_path):
    config = make_config(data_root, tmp_path / "cache")
    prepared = prepare_split(config, progress=False)
    assert len(prepared.train) == 18 and len(prepared.validation) == 6
    dataset, records = build_dataset_and_records(config, "validation", progress=False)
    batches = list(dataset)
    assert [b["images"].shape[0] for b in batches] == [5, 1]
    anchors = anchor_set_for(config.anchors, (SIZE, SIZE)).boxes
    first = batches[0]
    assert first["images"].shape == (5, SIZE, SIZE, 3) and first["images"].dtype.name == "float32"
    assert first["targets"].shape == (5, len(anchors), 5)
    for i, record in enumerate(records[:5]):
        scale = float(first["scales"][i])
        assert scale == pytest.approx(SIZE / 256)
        states = first["targets"][i, :, 4].numpy()
        assert first["image_labels"][i] == float(len(record.boxes) > 0)
        if len(record.boxes) == 0:
            assert np.all(states == -1)
            continue
        best = np.max([numpy_iou(anchors, box * scale) for box in record.boxes], axis=0)
        np.testing.assert_array_equal(states >= 0, best >= 0.5)
        np.testing.assert_array_equal(states == -2, (best >= 0.4) & (best < 0.5))


def test_training_dataset_repeats_shuffles_and_is_reproducible(data_root, tmp_path):
    config = make_config(data_root, tmp_path / "cache")
    first = [b["images"].numpy() for b in build_dataset(config, "train", progress=False).take(6)]
    again = [b["images"].numpy() for b in build_dataset(config, "train", progress=False).take(6)]
    assert len(first) == 6  # 18 images, batch 4: repeats past one epoch
    assert all(b.shape == (4, SIZE, SIZE, 3) for b in first)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_positive_anchors_follow_augmented_boxes(data_root, tmp_path):
    config = make_config(data_root, tmp_path / "cache")
    positives = 0
    for batch in build_dataset(config, "train", progress=False).take(5):
        counts = (batch["targets"][..., 4].numpy() >= 0).sum(axis=1)
        labels = batch["image_labels"].numpy()
        assert np.all((counts > 0) <= (labels == 1))  # no positive anchor on an image without boxes
        positives += counts.sum()
    assert positives > 0


def test_training_from_dicoms_without_cache_matches_the_cached_stream(data_root, tmp_path):
    cached = build_dataset(make_config(data_root, tmp_path / "cache"), "train", progress=False).take(2)
    direct = build_dataset(make_config(data_root, tmp_path / "cache", use_cache=False), "train",
                           progress=False).take(2)
    for a, b in zip(cached, direct):
        np.testing.assert_allclose(a["images"].numpy(), b["images"].numpy(), atol=1e-3)
        np.testing.assert_array_equal(a["targets"].numpy(), b["targets"].numpy())


def test_cache_matches_direct_reading(data_root, tmp_path):
    cached = build_dataset(make_config(data_root, tmp_path / "cache"), "validation", progress=False)
    direct = build_dataset(make_config(data_root, tmp_path / "cache", use_cache=False), "validation",
                           progress=False)
    for a, b in zip(cached, direct):
        np.testing.assert_array_equal(a["images"].numpy(), b["images"].numpy())
        np.testing.assert_array_equal(a["targets"].numpy(), b["targets"].numpy())


def test_cache_is_reused_and_rebuilt_when_inputs_or_settings_change(data_root, tmp_path):
    config = make_config(data_root, tmp_path / "cache")
    records = prepare_split(config, progress=False).train[:4]
    cached, _ = build_cache(records, config.preprocessing, tmp_path / "cache", progress=False)
    stamps = {pid: os.stat(item.path).st_mtime_ns for pid, item in cached.items()}
    again, _ = build_cache(records, config.preprocessing, tmp_path / "cache", progress=False)
    assert {pid: os.stat(item.path).st_mtime_ns for pid, item in again.items()} == stamps

    # A changed source file is re-read; the others are reused.
    changed = records[0]
    os.utime(changed.image_path, ns=(1, 1))
    third, _ = build_cache(records, config.preprocessing, tmp_path / "cache", progress=False)
    assert os.stat(third[changed.patient_id].path).st_mtime_ns != stamps[changed.patient_id]
    assert all(os.stat(third[r.patient_id].path).st_mtime_ns == stamps[r.patient_id] for r in records[1:])

    # Other preprocessing settings live in another cache directory.
    other = make_config(data_root, tmp_path / "cache").preprocessing.__class__(image_size=(96, 96))
    assert settings_key(other) != settings_key(config.preprocessing)
    fourth, _ = build_cache(records, other, tmp_path / "cache", progress=False)
    assert all(settings_key(other) in item.path for item in fourth.values())


@pytest.fixture
def root_with_bad_file(data_root, tmp_path):
    root = tmp_path / "rsna"
    shutil.copytree(data_root, root, ignore=shutil.ignore_patterns("splits"))
    images = sorted((root / "stage_2_train_images").iterdir())
    images[0].write_bytes(images[0].read_bytes()[:300])  # truncated DICOM
    return root, images[0]


def test_unreadable_image_is_an_error_naming_the_file(root_with_bad_file, tmp_path):
    root, bad = root_with_bad_file
    config = make_config(root, tmp_path / "cache")
    records = prepare_split(config, progress=False)
    with pytest.raises(DicomReadError, match=bad.name):
        build_dataset(config, "train", records=records.train + records.validation, progress=False)


@pytest.mark.parametrize("use_cache", [True, False])
def test_skip_policy_leaves_unreadable_images_out_and_lists_them(root_with_bad_file, tmp_path, use_cache, capsys):
    root, bad = root_with_bad_file
    config = make_config(root, tmp_path / "cache", bad_file_policy="skip", use_cache=use_cache)
    prepared = prepare_split(config, progress=False)
    everything = prepared.train + prepared.validation
    _, used = build_dataset_and_records(config, "validation", records=everything, progress=False)
    assert len(used) == len(everything) - 1
    assert bad.stem not in {r.patient_id for r in used}
    listing = tmp_path / "cache" / "skipped_images_validation.csv"
    printed = capsys.readouterr().out
    assert "Skipped 1 unreadable image" in printed and str(listing) in printed and bad.name in printed
    assert bad.name in listing.read_text()
    build_dataset_and_records(config, "validation", records=[r for r in everything if r.patient_id != bad.stem],
                              progress=False)
    assert not listing.exists()  # the list describes the last build only


def test_an_error_keeps_the_images_cached_before_it(root_with_bad_file, tmp_path):
    root, bad = root_with_bad_file
    config = make_config(root, tmp_path / "cache")
    prepared = prepare_split(config, progress=False)
    good = [r for r in prepared.train + prepared.validation if r.patient_id != bad.stem]
    bad_last = good + [r for r in prepared.train + prepared.validation if r.patient_id == bad.stem]
    with pytest.raises(DicomReadError, match=bad.name):
        build_cache(bad_last, config.preprocessing, tmp_path / "cache", progress=False)
    index = json.loads((tmp_path / "cache" / settings_key(config.preprocessing) / "index.json").read_text())
    assert set(index) == {r.patient_id for r in good}


def test_skipped_label_rows_are_listed_with_their_reason(data_root, tmp_path, capsys):
    root = tmp_path / "rsna"
    shutil.copytree(data_root, root, ignore=shutil.ignore_patterns("splits"))
    labels = root / "stage_2_train_labels.csv"
    lines = labels.read_text().splitlines()
    patient = lines[1].split(",")[0]
    lines[1] = f"{patient},10.0,10.0,-5.0,20.0,1"  # a negative width
    labels.write_text("\n".join(lines) + "\n")
    config = make_config(root, tmp_path / "cache", bad_file_policy="skip")
    prepared = prepare_split(config, progress=False)
    assert patient not in {r.patient_id for r in prepared.train + prepared.validation}
    listing = tmp_path / "cache" / "skipped_labels.csv"
    assert str(listing) in capsys.readouterr().out
    listed = listing.read_text()
    assert f"{labels}:2," in listed and "width -5.0" in listed  # file:line, then the reason


@pytest.mark.parametrize("fraction, expected", [(0.0, 0.1), (0.5, 0.5), (0.25, 0.25)])
def test_positive_fraction_sets_the_share_of_images_with_boxes(fraction, expected):
    from retinanet.data.pipeline import ImageSource, training_stream

    counts = np.array([1, 2] + [0] * 18, np.int32)
    sources = tf.constant([f"image{i}" for i in range(20)])
    elements = tf.data.Dataset.from_tensor_slices((sources, np.zeros((20, 2, 4), np.float32), counts,
                                                   np.ones(20, np.float32)))
    records = [None] * 20  # the stream reads only the elements' box counts
    stream = training_stream(ImageSource(records, elements, load=None), seed=3, positive_fraction=fraction)
    drawn = [(source.numpy().decode(), int(count)) for (source, _, count, _), _ in stream.take(4000)]
    share = np.mean([count > 0 for _, count in drawn])
    assert share == pytest.approx(expected, abs=0.03)
    assert {source for source, _ in drawn} == {f"image{i}" for i in range(20)}  # nothing left out


def test_low_quality_matches_reach_the_targets_of_the_pipeline(data_root, tmp_path):
    """With anchors four times as tall as wide few boxes reach IoU 0.5; the option gives every box its best anchor."""
    config = make_config(data_root, tmp_path / "cache")
    tall = dataclasses.replace(config.anchors, aspect_ratios=(4.0,), scales=(1.0,))
    anchors = anchor_set_for(tall, (SIZE, SIZE)).boxes
    boxes_without_positive = {}
    for allow in (False, True):
        anchor_config = dataclasses.replace(tall, allow_low_quality_matches=allow)
        dataset, records = build_dataset_and_records(dataclasses.replace(config, anchors=anchor_config), "validation",
                                                     progress=False)
        states = np.concatenate([batch["targets"][..., 4].numpy() for batch in dataset])
        missing = 0
        for record, record_states in zip(records, states):
            for box in record.boxes * (SIZE / 256):
                missing += not (record_states[numpy_iou(anchors, box).argmax()] >= 0)
        boxes_without_positive[allow] = missing
    assert boxes_without_positive[False] > 0 and boxes_without_positive[True] == 0


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_split_without_a_readable_image_is_a_named_error(data_root, tmp_path, use_cache, capsys):
    from retinanet.data.pipeline import NoReadableImageError

    root = tmp_path / "rsna"
    shutil.copytree(data_root, root, ignore=shutil.ignore_patterns("splits"))
    for image in (root / "stage_2_train_images").iterdir():
        image.write_bytes(image.read_bytes()[:300])  # truncated DICOM
    config = make_config(root, tmp_path / "cache", bad_file_policy="skip", use_cache=use_cache)
    validation = prepare_split(config, progress=False).validation
    listing = tmp_path / "cache" / "skipped_images_validation.csv"
    with pytest.raises(NoReadableImageError, match=f"none of the {len(validation)} validation image") as raised:
        build_dataset(config, "validation", progress=False)
    assert "data.bad_file_policy" in str(raised.value) and str(listing) in str(raised.value)
    assert isinstance(raised.value, DicomReadError)  # what every command reports as `error: ...`
    assert len(listing.read_text().splitlines()) == len(validation) + 1  # header + every image


def cache_directory(config, cache_dir):
    return cache_dir / settings_key(config.preprocessing)


def test_a_full_disk_while_caching_keeps_the_earlier_images_and_index(data_root, tmp_path, monkeypatch):
    from test_safe_writes import FullDiskFile

    from retinanet.runtime import safe_writes
    from retinanet.runtime.safe_writes import FileWriteError

    config = make_config(data_root, tmp_path / "cache")
    records = prepare_split(config, progress=False).train[:4]
    build_cache(records, config.preprocessing, tmp_path / "cache", progress=False)
    directory = cache_directory(config, tmp_path / "cache")
    before = {path.name: path.read_bytes() for path in directory.iterdir()}
    for record in records:  # every source changed: each image is written again
        os.utime(record.image_path, ns=(1, 1))
    monkeypatch.setattr(safe_writes, "open", FullDiskFile, raising=False)
    with pytest.raises(FileWriteError, match=f"cannot write {directory}.*No space left on device; the previous"):
        build_cache(records, config.preprocessing, tmp_path / "cache", progress=False)
    monkeypatch.undo()
    assert {path.name: path.read_bytes() for path in directory.iterdir()} == before  # nothing half-written
    # With space again, the images are rebuilt from the intact index.
    cached, _ = build_cache(records, config.preprocessing, tmp_path / "cache", progress=False)
    assert set(cached) == {r.patient_id for r in records}
    assert set(json.loads((directory / "index.json").read_text())) == set(cached)


@pytest.mark.parametrize("corrupt, warning", [
    ('{"patient": {"source": ["x", 1', "is not valid JSON"),  # cut short
    ("[1, 2, 3]", "is not a JSON object"),
    (None, "1 of 4 entries of the cache index"),  # one entry of the wrong form
])
def test_a_corrupt_cache_index_is_reported_and_rebuilt(data_root, tmp_path, corrupt, warning, capsys):
    config = make_config(data_root, tmp_path / "cache")
    records = prepare_split(config, progress=False).train[:4]
    first, _ = build_cache(records, config.preprocessing, tmp_path / "cache", progress=False)
    expected = {pid: np.fromfile(item.path, np.uint8) for pid, item in first.items()}
    index_path = cache_directory(config, tmp_path / "cache") / "index.json"
    original = json.loads(index_path.read_text())
    index = json.loads(index_path.read_text())
    if corrupt is None:
        index[records[0].patient_id] = {"source": "not a signature"}
        corrupt = json.dumps(index)
    index_path.write_text(corrupt)
    rebuilt, _ = build_cache(records, config.preprocessing, tmp_path / "cache", progress=False)
    printed = capsys.readouterr().err
    assert "warning: " in printed and warning in printed and str(index_path) in printed
    assert set(rebuilt) == set(expected)
    for pid, item in rebuilt.items():
        np.testing.assert_array_equal(np.fromfile(item.path, np.uint8), expected[pid])
    assert json.loads(index_path.read_text()) == original


def test_a_cached_image_of_the_wrong_size_is_rebuilt(data_root, tmp_path):
    config = make_config(data_root, tmp_path / "cache")
    records = prepare_split(config, progress=False).train[:2]
    first, _ = build_cache(records, config.preprocessing, tmp_path / "cache", progress=False)
    path = first[records[0].patient_id].path
    good = open(path, "rb").read()
    with open(path, "wb") as file:  # as a write cut short by a crash before writes were atomic
        file.write(good[:100])
    build_cache(records, config.preprocessing, tmp_path / "cache", progress=False)
    assert open(path, "rb").read() == good


@pytest.mark.parametrize("module, constant", [("retinanet.data.dicom", "READER_VERSION"),
                                              ("retinanet.data.preprocess", "PREPROCESSING_VERSION")])
def test_a_new_reader_or_preprocessing_version_starts_a_new_cache(data_root, tmp_path, monkeypatch, module, constant):
    import importlib

    config = make_config(data_root, tmp_path / "cache")
    records = prepare_split(config, progress=False).train[:2]
    old_key = settings_key(config.preprocessing)
    old, _ = build_cache(records, config.preprocessing, tmp_path / "cache", progress=False)
    imported = importlib.import_module(module)
    monkeypatch.setattr(imported, constant, getattr(imported, constant) + 1)
    new_key = settings_key(config.preprocessing)
    assert new_key != old_key
    new, _ = build_cache(records, config.preprocessing, tmp_path / "cache", progress=False)
    for record in records:  # every image read again by the new code, none reused from the old cache
        assert new_key in new[record.patient_id].path and old_key in old[record.patient_id].path
        assert os.path.isfile(new[record.patient_id].path)

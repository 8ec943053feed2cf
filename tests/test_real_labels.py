"""The challenge's real label table, read by the package's reader; the folds made from it.

The tables are found in $RSNA_LABELS_DIR or in `shared/data/rsna` beside the repository (or beside
a folder holding it): `stage_2_train_labels.csv` as Kaggle gives it, or compressed, and the DICOM
header table `stage_2_train_images_dicom_headers.csv.gz` (either may carry a `kaggle_` prefix). No
image is needed. The counts are those of the competition's stage 2 training set.
"""

import os
from pathlib import Path

import pandas as pd
import pytest

from retinanet.data.rsna import read_labels

LABEL_NAMES = ("stage_2_train_labels.csv", "stage_2_train_labels.csv.zip", "stage_2_train_labels.csv.gz")
HEADER_NAMES = ("stage_2_train_images_dicom_headers.csv.gz", "stage_2_train_images_dicom_headers.csv")


def _candidates() -> list[Path]:
    if os.environ.get("RSNA_LABELS_DIR"):
        return [Path(os.environ["RSNA_LABELS_DIR"])]
    return [folder / "shared" / "data" / "rsna" for folder in Path(__file__).resolve().parents[1].parents]


def _find(names: tuple[str, ...]) -> Path | None:
    for folder in _candidates():
        for name in names:
            for prefix in ("", "kaggle_"):
                if (folder / f"{prefix}{name}").is_file():
                    return folder / f"{prefix}{name}"
    return None


@pytest.fixture(scope="module")
def labels_csv() -> Path:
    path = _find(LABEL_NAMES)
    if path is None:
        pytest.skip(f"the real stage_2_train_labels.csv is not in $RSNA_LABELS_DIR or any of "
                    f"{', '.join(map(str, _candidates()))}")
    return path


@pytest.fixture(scope="module")
def headers_csv(labels_csv) -> Path:
    path = _find(HEADER_NAMES)
    if path is None:
        pytest.skip(f"stage_2_train_images_dicom_headers.csv(.gz) is not beside {labels_csv}")
    return path


def test_real_labels_count_patients_positives_and_boxes(labels_csv):
    records, report = read_labels(labels_csv, labels_csv.parent / "stage_2_train_images", require_images=False)
    assert len(report) == 0
    assert len(records) == 26_684
    assert sum(record.target for record in records) == 6_012
    assert sum(len(record.boxes) for record in records) == 9_555
    # Without the class CSV: the positives' class is known, the negatives' is not.
    assert {record.class_name for record in records if record.target} == {"Lung Opacity"}
    assert {record.class_name for record in records if not record.target} == {""}


def test_real_folds_match_the_whole_in_positive_rate_and_ap_share(labels_csv, headers_csv, tmp_path):
    from retinanet.config import config_from_dict
    from retinanet.data.split import prepare_split

    config = config_from_dict({"data": {
        "root": str(labels_csv.parent), "labels_csv": labels_csv.name, "class_info_csv": "",
        "headers_csv": headers_csv.name, "num_folds": 5, "split_seed": 42,
        "split_file": str(tmp_path / "split.csv"), "cache_dir": str(tmp_path / "cache")}})
    prepared = prepare_split(config, progress=False, require_images=False)
    assert prepared.by_view_position
    assert len(prepared.train) + len(prepared.validation) == 26_684
    folds = pd.read_csv(tmp_path / "split.csv")
    assert len(folds) == 26_684 and folds["patientId"].is_unique
    folds["AP"] = folds["ViewPosition"] == "AP"
    whole_positive, whole_ap = folds["Target"].mean(), folds["AP"].mean()
    assert 0.22 < whole_positive < 0.23 and 0.45 < whole_ap < 0.46  # 6,012 and 12,173 of 26,684
    per_fold = folds.groupby("fold").agg(positive=("Target", "mean"), ap=("AP", "mean"))
    assert list(per_fold.index) == [0, 1, 2, 3, 4]
    assert (abs(per_fold["positive"] - whole_positive) <= 0.01).all(), per_fold
    assert (abs(per_fold["ap"] - whole_ap) <= 0.01).all(), per_fold

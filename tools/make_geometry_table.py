"""Derive the synthetic generator's geometry table from the challenge's real tables.

    python tools/make_geometry_table.py --labels stage_2_train_labels.csv \
        --headers stage_2_train_images_dicom_headers.csv.gz

Writes retinanet/synthetic/rsna_geometry.csv.gz: one row per real patient, shuffled, without ids:
view (AP/PA), age, sex, pixel spacing (mm) and the patient's boxes as `x y width height` groups
(1024 px pixels; empty for negatives). Numbers only; the generator samples whole rows, so the
joint geometry (count, sizes, positions, the pair's arrangement, view, age) is the real one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path(__file__).resolve().parents[1] / "retinanet" / "data" / "rsna_geometry.csv.gz"


def geometry_table(labels: pd.DataFrame, headers: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Real labels (patientId,x,y,width,height,Target) + DICOM headers -> the id-free table."""
    headers = headers.set_index("PatientID")
    missing = set(labels["patientId"]) - set(headers.index)
    if missing:
        raise SystemExit(f"error: {len(missing)} patients of the labels have no header row (e.g. {min(missing)})")
    boxes = labels.dropna(subset=["x"])
    groups = {patient: " ".join(f"{value:g}" for value in rows[["x", "y", "width", "height"]].to_numpy().ravel())
              for patient, rows in boxes.groupby("patientId", sort=False)}
    patients = labels["patientId"].drop_duplicates().to_numpy()
    patients = patients[np.random.default_rng(seed).permutation(len(patients))]
    rows = headers.loc[patients]
    return pd.DataFrame({
        "view": rows["ViewPosition"].to_numpy(),
        "age": rows["PatientAge"].astype(int).to_numpy(),
        "sex": rows["PatientSex"].to_numpy(),
        "spacing": rows["PixelSpacing"].round(4).to_numpy(),
        "boxes": [groups.get(patient, "") for patient in patients],
    })


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", required=True, help="the real stage_2_train_labels.csv (.zip/.gz too)")
    parser.add_argument("--headers", required=True, help="the real DICOM header table (PatientID, ViewPosition, ...)")
    parser.add_argument("--out", default=str(OUT), help=f"output (default {OUT})")
    args = parser.parse_args(argv)
    table = geometry_table(pd.read_csv(args.labels), pd.read_csv(args.headers))
    table.to_csv(args.out, index=False, compression={"method": "gzip", "mtime": 0})
    positives = int((table["boxes"] != "").sum())
    print(f"Wrote {len(table)} patients ({positives} positive) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

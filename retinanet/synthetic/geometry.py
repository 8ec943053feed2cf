"""The real RSNA patients' geometry, for the synthetic generator.

`rsna_geometry.csv.gz` (made by tools/make_geometry_table.py from the challenge's real label
file and DICOM-header table) holds one row per real training patient, without ids: view
position, age, sex, pixel spacing and the patient's boxes (x y width height at 1024 px). The
generator samples whole rows, so every synthetic patient carries a real patient's box set
(count, sizes, positions, the pair's arrangement) with that patient's view and age.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pandas as pd

TABLE = Path(__file__).with_name("rsna_geometry.csv.gz")
REAL_SIZE = 1024  # the real films' side; the table's boxes are in its pixels


@dataclasses.dataclass(frozen=True)
class RealPatient:
    """One row of the table: boxes float [N, 4] `x, y, width, height` at 1024 px (N = 0: negative)."""

    view: str
    age: int
    sex: str
    spacing: float
    boxes: np.ndarray


@functools.lru_cache(maxsize=1)
def geometry_table() -> pd.DataFrame:
    table = pd.read_csv(TABLE, keep_default_na=False, dtype={"boxes": str})
    table["positive"] = table["boxes"] != ""
    return table


def _patient(row) -> RealPatient:
    values = np.array(row.boxes.split(), np.float64) if row.boxes else np.zeros(0)
    return RealPatient(view=row.view, age=int(row.age), sex=row.sex, spacing=float(row.spacing),
                       boxes=values.reshape(-1, 4))


def sample_patients(rng: np.random.Generator, count: int, *, positive: bool) -> list[RealPatient]:
    """`count` real patients with (positive=True) or without boxes, drawn without replacement
    while the table has enough of them (with replacement beyond)."""
    table = geometry_table()
    pool = table[table["positive"] == positive]
    indices = rng.choice(len(pool), size=count, replace=count > len(pool))
    return [_patient(row) for row in pool.iloc[indices].itertuples()]

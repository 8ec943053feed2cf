"""How visible the synthetic opacities are, per difficulty level: the figures docs/data.md reports.

Two measures per box, on real patients' box sets drawn as positives:
- contrast: the box's mean rise over its lung part / the standard deviation of the lung without
  the opacity (at 512 px, before pixel noise; the phantom measures it as it draws);
- pixel AUC: the ROC AUC of a grey-level threshold separating the box's lung part from the rest of
  the lung (at `size` px after a 1-pixel blur): 0.5 is invisible to a threshold, 1 a clean cut.
"""

from __future__ import annotations

import cv2
import numpy as np

from retinanet.synthetic.geometry import sample_patients
from retinanet.synthetic.phantom import LUNG_OPACITY, SyntheticRadiograph, render_chest_radiograph

PERCENTILES = (10, 50, 90)


def lung_rise_and_auc(radiograph: SyntheticRadiograph, probe_boxes: np.ndarray) -> tuple[float, float]:
    """(mean rise of the probe boxes' lung part over the rest of the lung, in lung standard
    deviations; ROC AUC of a pixel threshold separating the two). `probe_boxes`: float [N, 4]
    `x, y, width, height` in 1024 px pixels."""
    size = radiograph.image.shape[0]
    in_box = np.zeros((size, size), bool)
    for x, y, width, height in np.round(np.asarray(probe_boxes) * size / 1024).astype(int):
        in_box[y:y + height, x:x + width] = True
    image = cv2.GaussianBlur(radiograph.image.astype(np.float32), (0, 0), 1.0)  # the pixel noise aside
    inside, outside = image[in_box & radiograph.lung_mask], image[~in_box & radiograph.lung_mask]
    rise = (inside.mean() - outside.mean()) / image[radiograph.lung_mask].std()
    ranks = np.argsort(np.argsort(np.concatenate([inside, outside]))) + 1.0
    auc = (ranks[:len(inside)].sum() - len(inside) * (len(inside) + 1) / 2) / (len(inside) * len(outside))
    return float(rise), float(auc)


def measure_visibility(difficulty: str, *, patients: int = 150, size: int = 256, seed: int = 0) -> dict:
    """{"contrast": its PERCENTILES over the boxes, "pixel_auc": its PERCENTILES over the patients,
    "boxes", "patients"} for `patients` real box sets drawn at `difficulty`. The same patients and
    films (but for the opacities) at every level for the same seed."""
    contrasts, aucs = [], []
    for index, patient in enumerate(sample_patients(np.random.default_rng(seed), patients, positive=True)):
        radiograph = render_chest_radiograph(np.random.default_rng(index), size=size, class_name=LUNG_OPACITY,
                                             boxes=patient.boxes, view=patient.view, age=patient.age,
                                             difficulty=difficulty)
        contrasts.extend(radiograph.contrast)
        aucs.append(lung_rise_and_auc(radiograph, patient.boxes)[1])
    return {"contrast": tuple(float(value) for value in np.percentile(contrasts, PERCENTILES)),
            "pixel_auc": tuple(float(value) for value in np.percentile(aucs, PERCENTILES)),
            "boxes": len(contrasts), "patients": patients}

"""The synthetic opacities' visibility at each difficulty level, and the films side by side.

    python tools/measure_difficulty.py [--patients 150] [--picture docs/images/difficulty_levels.jpg]

Prints, per level, the percentiles of the box contrast and of the pixel AUC that docs/data.md
reports (retinanet/synthetic/visibility.py), and draws the same patients' films at every level,
one row per level, the true boxes in green.
"""

from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np

from retinanet.synthetic.geometry import sample_patients
from retinanet.synthetic.phantom import DIFFICULTIES, LUNG_OPACITY, render_chest_radiograph
from retinanet.synthetic.visibility import PERCENTILES, measure_visibility
from retinanet.visualize import draw_boxes, grid, save_rgb

SHOWN = 4  # films per row of the picture


def picture(path: str, size: int = 384) -> None:
    """The first SHOWN patients of seed 7's positives at every level: a row per level."""
    patients = sample_patients(np.random.default_rng(7), SHOWN, positive=True)
    tiles = []
    for level in DIFFICULTIES:
        for index, patient in enumerate(patients):
            film = render_chest_radiograph(np.random.default_rng(index), size=size, class_name=LUNG_OPACITY,
                                           boxes=patient.boxes, view=patient.view, age=patient.age,
                                           difficulty=level)
            boxes = film.boxes.copy()
            boxes[:, 2:] += boxes[:, :2]
            tile = draw_boxes(cv2.cvtColor(film.image, cv2.COLOR_GRAY2RGB), boxes, None, legend=False)
            cv2.putText(tile, f"{level}, {patient.view}", (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 0), 2)
            tiles.append(tile)
    save_rgb(path, grid(tiles, columns=SHOWN))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=150, help="positive patients measured per level")
    parser.add_argument("--picture", help="write the films side by side here (.png or .jpg)")
    args = parser.parse_args(argv)
    names = "/".join(f"p{value}" for value in PERCENTILES)
    print(f"| level | contrast {names} | pixel AUC {names} | boxes |")
    print("|---|---|---|---|")
    for level in DIFFICULTIES:
        measured = measure_visibility(level, patients=args.patients)
        contrast = " / ".join(f"{value:.2f}" for value in measured["contrast"])
        auc = " / ".join(f"{value:.2f}" for value in measured["pixel_auc"])
        print(f"| {level} | {contrast} | {auc} | {measured['boxes']} |")
    if args.picture:
        picture(args.picture)
        print(f"picture: {args.picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

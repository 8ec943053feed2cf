"""Draw the regions of a DICOM Structured Report of `retinanet infer --dicom-sr` over its film.

    python tools/draw_report.py --report out/reports/RG1_UNCR.sr.dcm --film RG1_UNCR.dcm \
        --output docs/images/rg1_report.png [--width 512]

The boxes, scores and film-level probability come from the report alone (read back with highdicom
by `retinanet.serve.reports.read_report`), the picture from the film, read as `infer` reads it; a
report that does not refer to that film is an error. The README's picture of a report is drawn so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import pydicom


def draw_report(report_path: Path, film_path: Path, output: Path, width: int | None = None) -> None:
    from retinanet.data.dicom import read_image, read_source_header
    from retinanet.serve.reports import ReportError, read_report
    from retinanet.visualize import draw_boxes, save_rgb

    try:
        report = pydicom.dcmread(report_path)
    except Exception as error:  # pydicom raises many types for a file that is not DICOM
        raise ReportError(f"{report_path}: not a DICOM file: {error}") from None
    contents = read_report(report, str(report_path))
    film = read_source_header(film_path)
    if film.SOPInstanceUID != contents.source_sop_instance_uid:
        raise ReportError(f"{report_path} reports on the film {contents.source_sop_instance_uid}, not on {film_path} "
                          f"({film.SOPInstanceUID})")
    image, boxes = read_image(film_path), contents.boxes
    if width is not None and width < image.shape[1]:
        scale = width / image.shape[1]
        image = cv2.resize(image, (width, round(image.shape[0] * scale)), interpolation=cv2.INTER_AREA)
        boxes = boxes * scale
    threshold = next((float(item.split(": ", 1)[1]) for item in contents.algorithm_parameters
                      if item.startswith("score threshold: ")), None)
    picture = draw_boxes(image, None, boxes, contents.scores, title=f"{report_path.name} (regions of the SR)",
                         threshold=threshold, image_probability=contents.image_probability)
    save_rgb(output, picture)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", type=Path, required=True, help="a report of `retinanet infer --dicom-sr`")
    parser.add_argument("--film", type=Path, required=True, help="the DICOM film it reports on")
    parser.add_argument("--output", type=Path, required=True, help="the picture to write (.png)")
    parser.add_argument("--width", type=int, help="scale the picture down to this width (pixels)")
    args = parser.parse_args(argv)
    from retinanet.commands.common import report_error
    from retinanet.errors import UserError

    try:
        draw_report(args.report, args.film, args.output, args.width)
    except UserError as error:
        return report_error(error)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Score a Kaggle submission CSV against RSNA labels with the competition metric.

    python scripts/score.py --labels stage_2_train_labels.csv --submission submission.csv

Every labelled patient must have exactly one row. Exit code 2 on a malformed file.
"""

from __future__ import annotations

import argparse
import sys

from retinanet.data.rsna import LabelError
from retinanet.submission import SubmissionError, format_score_report, score_submission


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", required=True, help="labels CSV: patientId,x,y,width,height,Target")
    parser.add_argument("--submission", required=True, help="submission CSV: patientId,PredictionString")
    parser.add_argument("--image-size", type=float, default=1024,
                        help="image side in pixels (default 1024); every box must lie inside it")
    arguments = parser.parse_args(argv)
    try:
        result = score_submission(arguments.labels, arguments.submission, image_size=arguments.image_size)
    except (LabelError, SubmissionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_score_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

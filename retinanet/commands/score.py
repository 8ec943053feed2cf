"""Score a Kaggle submission CSV against RSNA labels with the competition metric.

    retinanet score --labels stage_2_train_labels.csv --submission submission.csv

Every labelled patient must have exactly one row. Predicted boxes reaching past the image edge
are scored as they are (the competition does not clip them) and counted in the report. Exit code
2 on a malformed file.
"""

from __future__ import annotations



def add_arguments(parser) -> None:
    parser.add_argument("--labels", required=True, help="labels CSV: patientId,x,y,width,height,Target")
    parser.add_argument("--submission", required=True, help="submission CSV: patientId,PredictionString")
    parser.add_argument("--image-size", type=float, default=1024,
                        help="image side in pixels (default 1024); label boxes must lie inside it, "
                             "predicted boxes past its edge are counted")


def run(args, parser) -> int:
    from retinanet.data.submission import format_score_report, score_submission

    print(format_score_report(score_submission(args.labels, args.submission, image_size=args.image_size)))
    return 0

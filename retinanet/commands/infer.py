"""Detect pneumonia boxes with a trained run.

    retinanet infer --run-dir runs/demo-... --input image.dcm [--output DIR] [--threshold T]
    retinanet infer --checkpoint runs/x/best.weights.h5 --input dicom_dir/ --output out/
    retinanet infer --run-dir runs/a --run-dir runs/b --input dicom_dir/ --output out/  # an ensemble
    retinanet infer --run-dir runs/cv-demo --input dicom_dir/ --output out/  # every fold of a cross-validation

A single DICOM, PNG or JPEG gives <output>/<name>.json (boxes as x, y, width, height in the
original pixels with their scores, and the image-level probability when the model has one)
and <output>/<name>.png with the boxes drawn; a directory of DICOMs gives
<output>/submission.csv in the Kaggle format, read lazily in batches of --batch-size (default: the
run's evaluation.batch_size) under a progress bar, with the images per second at the end.
The detections are journaled batch by batch in <output>/detections.jsonl: run the same command
again after an interruption and it continues after the last whole batch, its submission
byte-identical to an uninterrupted run's (see retinanet/serve/journal.py); a journal of other
weights, config, batch size or files is an error. An unreadable file in the directory stops the run,
unless --skip-unreadable (or the run's data.bad_file_policy: skip): then its row has no boxes
and it is listed in <output>/skipped_images.csv. The threshold defaults to the run's
threshold.json (chosen on validation by training for its best weights, or by `retinanet evaluate
--write-threshold`), else its evaluation.score_threshold; the command prints which it used.

Several --run-dir make an ensemble (a cross-validation directory stands for every fold's best
weights): the models' boxes, flip TTA passes included, are fused by weighted box fusion and
their image probabilities averaged; the runs must share preprocessing, anchors and classes.
Its threshold: a cross-validation directory's threshold.json (out-of-fold), else the first
run's evaluation.score_threshold for several directories.
"""

from __future__ import annotations

from retinanet.commands.common import add_progress_argument, add_source_arguments, check_source_arguments


def add_arguments(parser) -> None:
    add_source_arguments(parser)
    parser.add_argument("--input", required=True, help="a DICOM/PNG/JPEG file or a directory of DICOMs")
    parser.add_argument("--output", help="output directory (default: the current directory)")
    parser.add_argument("--threshold", type=float, help="score threshold (default: the run's chosen one)")
    parser.add_argument("--skip-unreadable", action="store_true", default=None,
                        help="directory input: write the submission without unreadable files (empty rows), "
                             "listed in skipped_images.csv (default: the run's data.bad_file_policy)")
    parser.add_argument("--batch-size", type=int,
                        help="directory input: images per network batch (default: the run's evaluation.batch_size)")
    add_progress_argument(parser)


def run(args, parser) -> int:
    check_source_arguments(parser, args)
    import json

    from retinanet.serve.infer import run_inference
    from retinanet.run_directory import threshold_line

    summary = run_inference(input_path=args.input, output_dir=args.output, checkpoint=args.checkpoint,
                            run_dir=args.run_dir, config_path=args.config, threshold=args.threshold,
                            progress=not args.no_progress, skip_unreadable=args.skip_unreadable,
                            batch_size=args.batch_size)
    outputs = summary.pop("outputs")
    source = summary.pop("score_threshold_source")
    print(json.dumps(summary, indent=2))
    print(threshold_line(summary["score_threshold"], source))
    if "num_detected" in summary:
        print(speed_line(summary))
    for path in outputs:
        print(f"wrote {path}")
    return 0


def speed_line(summary: dict) -> str:
    """The directory summary's speed and what was resumed, in one sentence."""
    line = f"detected {summary['num_detected']} image(s) in {summary['seconds']:.1f} s"
    if summary["images_per_second"] is not None:
        line += f" ({summary['images_per_second']:.2f} images/s, model warm-up included)"
    if summary["num_resumed"]:
        line += f"; {summary['num_resumed']} taken from the journal of an earlier run"
    if summary["journal_lines_dropped"]:
        line += f"; {summary['journal_lines_dropped']} line(s) of an unfinished batch dropped from the journal"
    return line

"""Detect pneumonia boxes with a trained run.

    retinanet infer --run-dir runs/demo-... --input image.dcm [--output DIR] [--threshold T]
    retinanet infer --checkpoint runs/x/best.weights.h5 --input dicom_dir/ --output out/
    retinanet infer --run-dir runs/a --run-dir runs/b --input dicom_dir/ --output out/  # an ensemble
    retinanet infer --run-dir runs/cv-demo --input dicom_dir/ --output out/  # every fold of a cross-validation
    retinanet infer --run-dir runs/demo-... --input dicom_dir/ --output out/ --dicom-sr  # and a DICOM SR per film
    retinanet infer --run-dir runs/demo-... --dicomweb https://pacs.example.org/dicom-web --output out/ [--study UID]

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

--dicom-sr also writes a DICOM Structured Report (TID 1500) per DICOM film to
<output>/reports/<name>.sr.dcm: a planar region per box, in the film's pixels, with its score, the
film-level probability, and references to the film; --secondary-capture adds <name>.sc.dcm, the
film with the boxes burned in, for viewers without SR support. A PNG or JPEG has no patient, study
or instance to report on: --dicom-sr with one is an error.

--dicomweb URL (instead of --input) takes the CR and DX films of a DICOMweb server (of the studies
given by --study, or all), detects them in batches and stores a report per film back on the server
(STOW-RS); <output>/dicomweb_reports.jsonl journals what was stored, so that the same command run
again reports only the films not yet reported by these weights at this threshold. Credentials come
from RETINANET_DICOMWEB_USER and RETINANET_DICOMWEB_PASSWORD, or RETINANET_DICOMWEB_TOKEN, or a netrc
file (NETRC, default ~/.netrc), never from the command line; TLS certificates are always verified
(REQUESTS_CA_BUNDLE names a private authority's). Unreadable films stop the run unless
--skip-unreadable: then they are listed in <output>/skipped_instances.csv.

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
    films = parser.add_mutually_exclusive_group(required=True)
    films.add_argument("--input", help="a DICOM/PNG/JPEG file or a directory of DICOMs")
    films.add_argument("--dicomweb", metavar="URL",
                       help="a DICOMweb server's root: its CR and DX films in, a DICOM SR per film stored back "
                            "(credentials from the environment or a netrc file, see above)")
    parser.add_argument("--study", action="append", metavar="UID",
                        help="with --dicomweb: only this study's films (repeat it for several)")
    parser.add_argument("--output", help="output directory (default: the current directory)")
    parser.add_argument("--threshold", type=float, help="score threshold (default: the run's chosen one)")
    parser.add_argument("--skip-unreadable", action="store_true", default=None,
                        help="directory input: write the submission without unreadable files (empty rows), "
                             "listed in skipped_images.csv; --dicomweb: report the readable films, the others "
                             "listed in skipped_instances.csv (default: the run's data.bad_file_policy)")
    parser.add_argument("--batch-size", type=int,
                        help="directory or --dicomweb input: images per network batch (default: the run's "
                             "evaluation.batch_size)")
    parser.add_argument("--dicom-sr", action="store_true",
                        help="also a DICOM Structured Report per DICOM film, in <output>/reports/")
    parser.add_argument("--secondary-capture", action="store_true",
                        help="with --dicom-sr or --dicomweb: also the film with the boxes burned in (a secondary "
                             "capture), for viewers without SR support")
    add_progress_argument(parser)


def run(args, parser) -> int:
    check_source_arguments(parser, args)
    import json

    if args.study and not args.dicomweb:
        parser.error("--study goes with --dicomweb")
    if args.dicomweb and args.dicom_sr:
        parser.error("--dicomweb always makes DICOM SRs: --dicom-sr goes with --input")
    from retinanet.run_directory import threshold_line

    if args.dicomweb:
        summary = run_dicomweb(args)
    else:
        summary = run_files(args)
    outputs = summary.pop("outputs")
    source = summary.pop("score_threshold_source")
    print(json.dumps(summary, indent=2))
    print(threshold_line(summary["score_threshold"], source))
    if "num_detected" in summary:
        print(speed_line(summary))
    if args.dicomweb:
        print(f"stored {summary['num_reports_stored']} report(s) on {summary['server']}")
    for path in outputs:
        print(f"wrote {path}")
    return 0


def run_files(args) -> dict:
    from retinanet.serve.infer import run_inference

    return run_inference(input_path=args.input, output_dir=args.output, checkpoint=args.checkpoint,
                         run_dir=args.run_dir, config_path=args.config, threshold=args.threshold,
                         progress=not args.no_progress, skip_unreadable=args.skip_unreadable,
                         batch_size=args.batch_size, dicom_sr=args.dicom_sr,
                         secondary_capture=args.secondary_capture)


def run_dicomweb(args) -> dict:
    from retinanet.serve.infer_dicomweb import run_dicomweb_inference

    return run_dicomweb_inference(url=args.dicomweb, studies=args.study, output_dir=args.output,
                                  checkpoint=args.checkpoint, run_dir=args.run_dir, config_path=args.config,
                                  threshold=args.threshold, progress=not args.no_progress,
                                  skip_unreadable=args.skip_unreadable, batch_size=args.batch_size,
                                  secondary_capture=args.secondary_capture)


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

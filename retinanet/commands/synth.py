"""Write a synthetic data set in the RSNA Kaggle layout (CSVs + JPEG Baseline DICOMs).

    retinanet synth --out data/rsna_synthetic --num-train 400 --num-test 40 --size 1024
    retinanet synth --out /data/rsna_phantom --from-labels stage_2_train_labels.csv.zip \
        --headers stage_2_train_images_dicom_headers.csv.gz [--limit 2000]

The second form draws a 1024 px film for each of the first --limit patients (default: all) of the
real label file, with their real ids, label rows, view, age, sex and pixel spacing; run again in
the same directory, it completes an interrupted set.
"""

from __future__ import annotations

from retinanet.commands.common import add_progress_argument

def _defaults() -> dict:
    """The config's `data.synthetic` defaults: one place for both."""
    from retinanet.config import SyntheticConfig

    defaults = SyntheticConfig()
    return {"num_train": defaults.num_train, "num_test": defaults.num_test, "size": defaults.size}


def add_arguments(parser) -> None:
    # The defaults are the config's data.synthetic ones, read when the command runs (importing the
    # config here would slow every command's --help).
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--num-train", type=int, help="training images (default: data.synthetic's num_train, 400)")
    parser.add_argument("--num-test", type=int, help="test images (default: data.synthetic's num_test, 40)")
    parser.add_argument("--size", type=int, help="image side in pixels (default: data.synthetic's size, 1024)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    parser.add_argument("--difficulty", default="default",
                        help="how faint and vague the opacities are: default, faint, very_faint or varied (default: "
                             "default; docs/data.md); the same patients, boxes and anatomy at every level")
    parser.add_argument("--from-labels", help="the real stage_2_train_labels.csv (.zip/.gz too): one film per patient")
    parser.add_argument("--headers", help="with --from-labels: the real DICOM header table (.csv/.csv.gz)")
    parser.add_argument("--limit", type=int, default=0, help="with --from-labels: the first N patients (default all)")
    add_progress_argument(parser)


def run(args, parser) -> int:
    if args.from_labels is not None:
        return _run_from_labels(args, parser)
    if args.headers is not None or args.limit:
        parser.error("--headers and --limit go with --from-labels")
    from retinanet.synthetic.rsna_layout import generate_synthetic_rsna

    defaults = _defaults()
    num_train, num_test, size = (defaults[name] if getattr(args, name) is None else getattr(args, name)
                                 for name in ("num_train", "num_test", "size"))
    out_dir = generate_synthetic_rsna(args.out, num_train=num_train, num_test=num_test, size=size,
                                      seed=args.seed, difficulty=args.difficulty, progress=not args.no_progress)
    print(f"Wrote {num_train} training and {num_test} test images ({size} px) to {out_dir}")
    return 0


def _run_from_labels(args, parser) -> int:
    given = [flag for flag, name in (("--num-train", "num_train"), ("--num-test", "num_test"), ("--size", "size"))
             if getattr(args, name) is not None]
    if given:
        parser.error(f"{', '.join(given)} cannot go with --from-labels (one 1024 px film per patient of the file)")
    if args.headers is None:
        parser.error("--from-labels needs --headers (the DICOM header table: view, age, sex, pixel spacing)")
    from retinanet.synthetic.from_labels import generate_from_real_labels

    out_dir, patients, written = generate_from_real_labels(
        args.out, labels_csv=args.from_labels, headers_csv=args.headers, limit=args.limit, seed=args.seed,
        difficulty=args.difficulty, progress=not args.no_progress)
    print(f"Wrote {written} of {patients} patients' images (1024 px; {patients - written} were already there) "
          f"and their labels to {out_dir}")
    return 0

"""Write a synthetic data set in the RSNA Kaggle layout (CSVs + JPEG Baseline DICOMs).

    retinanet synth --out data/rsna_synthetic --num-train 400 --num-test 40 --size 1024
"""

from __future__ import annotations

from retinanet.commands.common import add_progress_argument


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--num-train", type=int, default=400, help="training images (default 400)")
    parser.add_argument("--num-test", type=int, default=40, help="test images (default 40)")
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (default 1024)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    add_progress_argument(parser)


def run(args, parser) -> int:
    from retinanet.data.synthetic import generate_synthetic_rsna

    out_dir = generate_synthetic_rsna(args.out, num_train=args.num_train, num_test=args.num_test, size=args.size,
                                      seed=args.seed, progress=not args.no_progress)
    print(f"Wrote {args.num_train} training and {args.num_test} test images ({args.size} px) to {out_dir}")
    return 0

"""Write a synthetic data set in the RSNA Kaggle layout (CSVs + JPEG Baseline DICOMs).

    python scripts/make_synthetic.py --out data/synthetic --num-train 400 --num-test 40 --size 1024
"""

import argparse

from retinanet.data.synthetic import generate_synthetic_rsna


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument("--num-train", type=int, default=400, help="training images (default 400)")
    parser.add_argument("--num-test", type=int, default=40, help="test images (default 40)")
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels (default 1024)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    out_dir = generate_synthetic_rsna(args.out, num_train=args.num_train, num_test=args.num_test, size=args.size,
                                      seed=args.seed, progress=not args.no_progress)
    print(f"Wrote {args.num_train} training and {args.num_test} test images ({args.size} px) to {out_dir}")


if __name__ == "__main__":
    main()

"""Minutes to reach each validation metric target, per run, as a Markdown table.

    python scripts/time_to_quality.py runs/demo-a runs/demo-b [--evaluation holdout] [--targets 0.2 0.3]
"""

import argparse
import sys

from retinanet.bench.time_to_quality import TARGETS, format_table, summarize
from retinanet.errors import UserError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="run directories written by `retinanet train`")
    parser.add_argument("--targets", type=float, nargs="+", default=list(TARGETS), help="metric targets")
    parser.add_argument("--evaluation", help="a folder in each run holding `retinanet evaluate`'s metrics.json, "
                                             "shown as the held-out column")
    args = parser.parse_args(argv)
    try:
        summaries = [summarize(run_dir, args.targets, args.evaluation) for run_dir in args.run_dirs]
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(summaries, args.targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())

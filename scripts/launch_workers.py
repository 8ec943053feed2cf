"""Run a multi-worker training on this machine:
python scripts/launch_workers.py --workers 2 -- python scripts/train.py --config C --run-dir R \
    --set training.strategy=multi_worker"""

from __future__ import annotations

import argparse
import sys

from retinanet.train.launcher import launch
from retinanet.runtime.safe_writes import FileWriteError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="worker processes to start (default 2)")
    parser.add_argument("--log-dir", default="runs/worker-logs",
                        help="where worker-<i>.log go (default runs/worker-logs)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command every worker runs")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the workers' command after --")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    try:
        return launch(command, args.workers, args.log_dir)
    except FileWriteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; the workers were stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The `retinanet` command: `retinanet <job> [arguments]`, one job per module of retinanet.commands.

    retinanet synth | prepare | fit-anchors | train | cross-validate | evaluate | infer | score | export  [--help]

Also reachable as `python -m retinanet`; `scripts/<name>.py` run the same code.
"""

from __future__ import annotations

import argparse
import sys

from retinanet.commands import cross_validate, evaluate, export, fit_anchors, infer, prepare, score, synth, train
from retinanet.commands.common import run_command

# In the order of a project's life.
COMMANDS = {"synth": synth, "prepare": prepare, "fit-anchors": fit_anchors, "train": train,
            "cross-validate": cross_validate, "evaluate": evaluate, "infer": infer, "score": score, "export": export}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retinanet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    jobs = parser.add_subparsers(title="jobs", dest="job", required=True, metavar="JOB")
    for name, module in COMMANDS.items():
        job = jobs.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(job)
        job.set_defaults(module=module, parser=job)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.module, args, args.parser)


if __name__ == "__main__":
    sys.exit(main())

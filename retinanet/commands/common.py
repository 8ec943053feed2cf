"""What the command modules share: the parser of one job, the model-source arguments, errors."""

from __future__ import annotations

import argparse
import sys

from retinanet.safe_writes import FileWriteError  # without TensorFlow: --help stays quick


def build_parser(module, prog: str | None = None) -> argparse.ArgumentParser:
    """The parser of one command module (its docstring is the help text)."""
    parser = argparse.ArgumentParser(prog=prog, description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    return parser


def run_module(module, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Parse `argv` for `module` and run it: what `scripts/<name>.py` do."""
    parser = build_parser(module, prog)
    return run_command(module, parser.parse_args(argv), parser)


def run_command(module, args, parser) -> int:
    """`module.run(args, parser)`; a file it cannot write (a read-only or full disk, no permission),
    wherever the command writes it, is `error: cannot write <path>: <reason>`, exit status 2."""
    try:
        return module.run(args, parser)
    except FileWriteError as error:
        return report_error(error)


def report_error(error: Exception) -> int:
    """A user-fixable error: `error: ...` on stderr, exit status 2, no traceback."""
    print(f"error: {error}", file=sys.stderr)
    return 2


def add_config_arguments(parser, required: bool = True) -> None:
    """`--config CFG [--set section.key=value ...]`."""
    parser.add_argument("--config", required=required, metavar="CFG",
                        help="YAML experiment config, e.g. configs/demo.yaml; relative paths inside it are "
                             "relative to the file's directory")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set training.steps=100 (repeatable; a relative "
                             "path given here is relative to the working directory)")


def add_progress_argument(parser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (for logs and CI)")


def add_source_arguments(parser) -> None:
    """The `--run-dir DIR [--run-dir DIR ...] | --checkpoint [--config]` arguments shared by the
    model-using commands; `args.run_dir` is a list of directories (or None)."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-dir", action="append",
                        help="run directory written by `retinanet train`; repeat it for an ensemble of runs, or "
                             "give a `retinanet cross-validate` directory for its folds (their boxes fused by WBF)")
    source.add_argument("--checkpoint", help="a .weights.h5 file (or tf.train.Checkpoint prefix) of a run")
    parser.add_argument("--config", help="config for --checkpoint (default: config.yaml beside it or in its parent)")


def check_source_arguments(parser, args) -> None:
    if args.config and not args.checkpoint:
        parser.error("--config goes with --checkpoint")

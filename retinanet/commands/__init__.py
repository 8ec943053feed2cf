"""One module per command-line job (`retinanet <job>`; `scripts/<name>.py` are thin wrappers).

Each module has `add_arguments(parser)` and `run(args, parser) -> exit code`. Only argparse is
imported at module level: TensorFlow, pandas and pydicom load inside `run`, so `--help`
answers at once.
"""

"""`retinanet evaluate` as a script: python scripts/evaluate.py --help (see retinanet/commands/evaluate.py)."""

import sys

from retinanet.commands import evaluate
from retinanet.commands.common import run_module

if __name__ == "__main__":
    sys.exit(run_module(evaluate))

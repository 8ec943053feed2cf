"""`retinanet score` as a script: python scripts/score.py --help (see retinanet/commands/score.py)."""

import sys

from retinanet.commands import score
from retinanet.commands.common import run_module

if __name__ == "__main__":
    sys.exit(run_module(score))

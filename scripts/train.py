"""`retinanet train` as a script: python scripts/train.py --help (see retinanet/commands/train.py)."""

import sys

from retinanet.commands import train
from retinanet.commands.common import run_module

if __name__ == "__main__":
    sys.exit(run_module(train))

"""`retinanet infer` as a script: python scripts/infer.py --help (see retinanet/commands/infer.py)."""

import sys

from retinanet.commands import infer
from retinanet.commands.common import run_module

if __name__ == "__main__":
    sys.exit(run_module(infer))

"""`retinanet cross-validate` as a script: python scripts/cross_validate.py --help (see
retinanet/commands/cross_validate.py)."""

import sys

from retinanet.commands import cross_validate
from retinanet.commands.common import run_module

if __name__ == "__main__":
    sys.exit(run_module(cross_validate))

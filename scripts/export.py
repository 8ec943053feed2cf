"""`retinanet export` as a script: python scripts/export.py --help (see retinanet/commands/export.py)."""

import sys

from retinanet.commands import export
from retinanet.commands.common import run_module

if __name__ == "__main__":
    sys.exit(run_module(export))

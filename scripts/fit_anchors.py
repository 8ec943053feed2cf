"""`retinanet fit-anchors` as a script: python scripts/fit_anchors.py --help (see retinanet/commands/fit_anchors.py)."""

import sys

from retinanet.commands import fit_anchors
from retinanet.commands.common import run_module

if __name__ == "__main__":
    sys.exit(run_module(fit_anchors))

"""`retinanet synth` as a script: python scripts/make_synthetic.py --help (see retinanet/commands/synth.py)."""

import sys

from retinanet.commands import synth
from retinanet.commands.common import run_module

if __name__ == "__main__":
    sys.exit(run_module(synth))

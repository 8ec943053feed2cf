"""`retinanet prepare` as a script: python scripts/prepare_data.py --help (see retinanet/commands/prepare.py)."""

import sys

from retinanet.commands import prepare
from retinanet.commands.common import run_module

if __name__ == "__main__":
    sys.exit(run_module(prepare))

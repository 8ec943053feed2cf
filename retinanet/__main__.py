"""`python -m retinanet <job> ...`: the same as the `retinanet` command."""

import sys

from retinanet.cli import main

sys.exit(main())

"""``python -m tcm.cli`` (what torchrun launches): the ``tcm`` command."""

import sys

from tcm.cli import main

sys.exit(main())

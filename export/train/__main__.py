"""``python -m export.train``: edge-train without its console script (a checkout that was never installed)."""

import sys

from ..cli import train_main

sys.exit(train_main())

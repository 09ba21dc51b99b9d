"""``python -m collab.loadtest URL ...``: the same as ``collab loadtest URL ...``."""

import sys

from collab.loadtest import main

sys.exit(main())

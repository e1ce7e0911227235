"""`python -m repid.cli`: the `repid` command without the console script on PATH."""

import sys

from repid.cli import main

sys.exit(main())

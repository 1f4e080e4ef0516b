"""`python -m hypenet.bench MODEL...` (the same as `hypenet bench MODEL...`)."""

import sys

from .cli import main

sys.exit(main())

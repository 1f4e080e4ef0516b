"""`python -m hypenet.bench MODEL...` (the same as `hypenet bench MODEL...`)."""

import sys

from ..errors import exit_code
from .cli import main

sys.exit(exit_code(main))

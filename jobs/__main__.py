"""``python -m jobs <transcribe|synthesize|convert|demo> ...``."""

import sys

from .cli import main

sys.exit(main())

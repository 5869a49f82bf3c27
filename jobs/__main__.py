"""``python -m jobs <transcribe|synthesize|convert|demo> ...``."""

import sys

from jobs.cli import main

sys.exit(main())

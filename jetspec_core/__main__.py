"""Entry point of `python -m jetspec_core`."""
import sys

from .cli import main

sys.exit(main())

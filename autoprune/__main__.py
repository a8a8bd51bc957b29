"""``python -m autoprune``: the same as the ``autoprune`` command."""
import sys

from .cli import main

sys.exit(main())

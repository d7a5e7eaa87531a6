"""``python -m rtpanoptic ...``: the command line (see :mod:`rtpanoptic.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m jobcompd`` runs the command line."""

import sys

from jobcompd.cli import main

if __name__ == "__main__":
    sys.exit(main())

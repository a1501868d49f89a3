"""``python -m jobcompd`` runs the command line."""

import sys

from jobcompd.cli import main

sys.exit(main())

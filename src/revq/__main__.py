"""``python -m revq`` (also what ``torchrun -m revq train ...`` runs)."""

import sys

from revq.cli import main

sys.exit(main())

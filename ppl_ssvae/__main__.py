"""``python -m ppl_ssvae``: the ``ppl-ssvae`` command (what ``torchrun -m ppl_ssvae`` runs)."""

import sys

from .cli import main

sys.exit(main())

"""``python -m ppl_ssvae``: the ``ppl-ssvae`` command (what ``torchrun -m ppl_ssvae`` runs)."""

import os
import sys

from .cli import main
from .training.distributed import launched

code = main()
if launched():
    # A rank of a data-parallel run leaves without the interpreter's teardown: gloo's
    # threads, destroyed there, can abort a rank ("terminate called without an active
    # exception") after its run has finished and every file was written and closed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0)
sys.exit(code)

"""``--devices N``: the same command on N processes through torch's elastic launcher."""

from __future__ import annotations

import os
import sys
from typing import Any

from ..errors import UserError
from ..runs.directory import RunDir


def launch_data_parallel(devices: int, out: str) -> int:
    """This very command on ``devices`` processes, through torch's elastic launcher (what
    ``torchrun --standalone`` runs), one thread each unless OMP_NUM_THREADS says otherwise.
    A refusal or a non-finite loss is reported by rank 0 itself; a rank that dies is
    reported here, in one line."""
    import logging
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from ..training.distributed import LAUNCHER_ENV, use_loopback

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    use_loopback()  # every rank is on this machine
    os.environ[LAUNCHER_ENV] = "1"
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=devices, run_id=str(uuid.uuid4()),
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
    )  # fmt: skip
    try:
        elastic_launch(config, sys.executable)("-m", "ppl_ssvae", *_without_devices(sys.argv[1:]))
    except ChildFailedError as e:
        return _report_failed_rank(e, out)
    return 0


def _report_failed_rank(error: Any, out: str) -> int:
    from ..runs.directory import CHECKPOINT
    from ..training.distributed import PEER_EXIT

    codes = {rank: failure.exitcode for rank, failure in error.failures.items()}
    if codes.get(0) in (1, 2, 130):  # rank 0 said why (non-finite loss, refusal, Ctrl-C)
        return codes[0]
    # The first to fail is the cause; the agent then stops the others (SIGTERM), and
    # ranks that saw their peer go exit with PEER_EXIT.
    rank, first = error.get_first_failure()
    code = first.exitcode
    if code == PEER_EXIT:
        rank, code = next(
            ((r, c) for r, c in sorted(codes.items()) if c != PEER_EXIT), (rank, code)
        )
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    try:
        kept = f"{out} keeps the checkpoint of epoch {RunDir(out).load_checkpoint(CHECKPOINT)['epoch']}"
    except UserError:
        kept = f"{out} holds no checkpoint yet"
    print(f"ppl-ssvae: error: rank {rank} {how}, so every rank stopped; {kept}; continue "
          "with the same command plus --resume", file=sys.stderr)  # fmt: skip
    return 1


def _without_devices(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--devices":
            skip = True
        elif not arg.startswith("--devices="):
            out.append(arg)
    return out

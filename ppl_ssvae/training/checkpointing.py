"""The run directory as callbacks: after each epoch, metrics.jsonl, best.pt (when the
epoch is the best so far) and checkpoint.pt, which holds the loop's and every callback's
state; at the end of a cluster-and-label run, the best checkpoint's confusion matrix and
z-unit activity. Everything training writes to disk is written here, through ``RunDir``."""

from __future__ import annotations

import copy
from typing import Any

from ..runs.checkpoint import rng_state
from ..runs.directory import BEST, CHECKPOINT, RunDir
from .callbacks import PERSIST, Callback
from .loop import Trainer
from .standard import BestEpoch


class RunDirectory(Callback):
    """Keeps the run in ``run`` (None on the ranks other than 0 of a data-parallel run,
    which only join the gather of their RNG states into rank 0's checkpoint)."""

    order = PERSIST
    all_ranks = True

    def __init__(self, run: RunDir | None, best: BestEpoch) -> None:
        self.run, self.best = run, best

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.run is None:
            trainer.checkpoint_note = "rank 0 keeps the last good checkpoint in the run directory"
        elif trainer.epoch == 0:
            trainer.checkpoint_note = "no checkpoint was written (no epoch had finished)"
        else:
            self._noted(trainer)

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        group = trainer.group
        rngs = group.gather(rng_state()) if group else [rng_state()]
        if self.run is None:
            return
        model, epoch = trainer.model, record["epoch"]
        if self.best.improved:
            self.run.save_checkpoint(
                BEST, {"model": model.state_dict(), "epoch": epoch, "metrics": record}
            )
        # metrics first: a failed checkpoint write leaves an extra line, which resume drops.
        self.run.write_history(trainer.result.history)
        self.run.save_checkpoint(CHECKPOINT, {**trainer.state_dict(), "rng": rngs[0],
                                              "rng_ranks": rngs})  # fmt: skip
        self._noted(trainer)

    def _noted(self, trainer: Trainer) -> None:
        trainer.checkpoint_note = (
            f"the last good checkpoint is {self.run.file(CHECKPOINT)} (epoch {trainer.epoch})"
        )


class ClusteringArtifacts(Callback):
    """At the end of a cluster-and-label run (hidden classes, extra model classes or no
    labels: Willetts et al. sec 6.3), the best checkpoint's confusion matrix and z-unit
    activity (App. C) in the run directory, for Python and CLI runs alike. The trained
    model is left as training left it: the best weights are loaded into a copy. What was
    written is kept in ``trainer.result.artifacts``."""

    order = PERSIST

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def on_fit_end(self, trainer: Trainer) -> None:
        from ..evaluation.clustering import write_clustering_artifacts

        best = trainer.result.best
        if best is None or "cluster_mapping" not in best:
            return
        model, source = copy.deepcopy(trainer.model), "last epoch"
        if self.run.file(BEST).is_file():
            source = f"best.pt (epoch {self.run.load_weights(model, BEST)['epoch']})"
        written = write_clustering_artifacts(model, trainer.data, self.run.path, source)
        trainer.result.artifacts = {**written, "source": source}

"""The queries of an active-labelling run: the centres of a cluster tree asked of an oracle
(sec 3.2), each answer kept in ``queries.jsonl`` as it arrives, so that a resumed run never
asks a human the same question twice."""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import torch

from ..data import SemiSupervisedData
from ..errors import UserError, is_finite_number, is_int, require
from ..models.beta_vae_classifier import BetaVAEClassifier
from ..runs.checkpoint import write_text_atomic
from ..runs.directory import RunDir, RunDirWarning
from ..runs.kinds import QUERIES
from .clusters import Cluster, cluster
from .config import ActiveConfig, wrapped_seed
from .oracles import Answer, Oracle, Query


class QueryLog:
    """``queries.jsonl``: one record per answered query, rewritten atomically per answer."""

    def __init__(self, run: RunDir) -> None:
        self.path = run.file(QUERIES)
        # A line torn by a killed write (or edited by hand) is dropped with a note and the
        # file rewritten, as metrics.jsonl is; a query without its answer is asked again.
        found, dropped = run.read_records(QUERIES, _query_problem)
        self.records: dict[str, dict[str, Any]] = {r["id"]: r for r in found}
        if dropped:
            warnings.warn(f"{self.path}: dropped {', '.join(dropped)}; a query they answered "
                          "is asked again", RunDirWarning, stacklevel=2)  # fmt: skip
            self._save()

    def __len__(self) -> int:
        return len(self.records)

    def answer(self, query_id: str) -> Answer | None:
        record = self.records.get(query_id)
        return None if record is None else Answer(record["label"], record["confidence"])

    def add(self, query: Query, members: int, answer: Answer) -> None:
        self.records[query.id] = {"id": query.id, "members": members,
                                  "latent": [float(v) for v in query.latent],
                                  **answer.to_dict()}  # fmt: skip
        self._save()

    def _save(self) -> None:
        text = "".join(json.dumps(r) + "\n" for r in self.records.values())
        write_text_atomic(self.path, text)

    def check(self, query_id: str, members: int) -> None:
        recorded = self.records[query_id]["members"]
        if recorded != members:
            raise UserError(
                f"query {query_id} was recorded for a cluster of {recorded} rows but this "
                f"run finds {members}: the run's clusters changed, so it cannot resume"
            )


def _query_problem(number: int, record: dict[str, Any]) -> str | None:
    """Why a line of queries.jsonl cannot be used (None: it can)."""
    label, confidence = record.get("label"), record.get("confidence")
    ok = (isinstance(record.get("id"), str) and is_int(record.get("members"))
          and (label is None or is_int(label))
          and (confidence is None or is_finite_number(confidence)))  # fmt: skip
    return None if ok else f"unreadable line {number}"


def ask_tree(
    iteration: int,
    z: np.ndarray,
    model: BetaVAEClassifier,
    data: SemiSupervisedData,
    config: ActiveConfig,
    oracle: Oracle,
    log: QueryLog,
) -> list[tuple[Cluster, Answer]]:
    """Steps (2)-(4): cluster, show the centres, sub-cluster the invalid ones, level by
    level, until ``config.queries`` centres have been asked or none is left. Answers
    already in ``log`` are reused, never asked again."""
    seed = wrapped_seed(config.seed + iteration)
    level = cluster(z, np.arange(len(z)), config.k, config.clustering, seed)
    budget, asked = config.queries, []
    while level and budget > 0:
        batch = level[:budget]
        _ask_batch(iteration, batch, z, model, data, oracle, log)
        budget -= len(batch)
        asked += [(node, log.answer(_qid(iteration, node))) for node in batch]
        level = [child for node, answer in asked[-len(batch):] if answer.invalid
                 and len(node.members) > 1
                 for child in cluster(z, node.members, config.k, config.clustering,
                                      seed, prefix=node.id)]  # fmt: skip
    return asked


def _qid(iteration: int, node: Cluster) -> str:
    return f"{iteration}/{node.id}"


def _ask_batch(
    iteration: int,
    batch: list[Cluster],
    z: np.ndarray,
    model: BetaVAEClassifier,
    data: SemiSupervisedData,
    oracle: Oracle,
    log: QueryLog,
) -> None:
    for node in batch:
        if log.answer(_qid(iteration, node)) is not None:
            log.check(_qid(iteration, node), len(node.members))
    pending = [n for n in batch if log.answer(_qid(iteration, n)) is None]
    if not pending:
        return
    images = model.decode(torch.as_tensor(np.stack([n.centre for n in pending]))).mean.cpu().numpy()
    queries = [Query(_qid(iteration, n), images[i], n.centre, data.image_shape,
                     _nearest(z, n.centre)) for i, n in enumerate(pending)]  # fmt: skip
    answers = 0
    for query, node, answer in zip(queries, pending, oracle(queries), strict=False):
        log.add(query, len(node.members), _checked(answer, data.num_classes))
        answers += 1
    if answers != len(queries):
        raise UserError(f"the oracle gave {answers} answers for {len(queries)} centres")


def _nearest(z: np.ndarray, centre: np.ndarray) -> Any:
    def nearest(m: int) -> np.ndarray:
        return np.argsort(np.linalg.norm(z - centre, axis=1), kind="stable")[:m]

    return nearest


def _checked(answer: Answer, num_classes: int) -> Answer:
    if not isinstance(answer, Answer):
        raise UserError(f"an oracle answers with Answer(label, confidence), got {answer!r}")
    if answer.invalid:
        return answer
    ok = 0 <= answer.label < num_classes and 0.0 <= answer.confidence <= 1.0
    require(ok, f"oracle answer {answer} needs a class id 0..{num_classes - 1} "
                 "and a confidence in [0, 1]")  # fmt: skip
    return answer

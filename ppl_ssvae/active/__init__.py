"""Cluster-then-label active labelling (Vengalil & Sinha, "Semi-supervised Learning using
Variational Autoencoder - A Cluster based Approach", sec 3.2-3.3).

``run_active(ActiveConfig(...), out)`` trains a beta-VAE with a classifier on z
(``beta-vae-classifier``), clusters the latent means, asks an oracle to label the decoded
centres, propagates the labels with confidences (eq. 2-3) and trains on them (eq. 4).
"""

from .clusters import CLUSTERINGS, Cluster, cluster
from .confidence import DECAYS, DISTANCES, confidence, decay, distance, euclidean, mahalanobis
from .loop import (
    ActiveConfig,
    QueryLog,
    ask_tree,
    load_unlabelled,
    make_oracle,
    merge,
    propagate,
    run_active,
    weighted_data,
)
from .oracles import (
    Answer,
    HumanOracle,
    NotebookOracle,
    Oracle,
    Query,
    SimulatedOracle,
    answer_lines,
    parse_answer,
    stdin_lines,
)

__all__ = [
    "CLUSTERINGS", "DECAYS", "DISTANCES", "ActiveConfig", "Answer", "Cluster", "HumanOracle",
    "NotebookOracle", "Oracle", "Query", "QueryLog", "SimulatedOracle", "answer_lines",
    "ask_tree", "cluster", "confidence", "decay", "distance", "euclidean", "load_unlabelled",
    "mahalanobis", "make_oracle", "merge", "propagate", "run_active", "parse_answer",
    "stdin_lines", "weighted_data",
]  # fmt: skip

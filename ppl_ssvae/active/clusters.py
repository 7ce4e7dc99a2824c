"""Clustering the latent means and the tree of queries it gives (Vengalil & Sinha sec 3.3):
k clusters, and an invalid centre's cluster clustered again into sub-clusters."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError

CLUSTERINGS = ("kmeans", "gmm")


@dataclass
class Cluster:
    """One node of the query tree.

    Attributes:
        id: ``"3"`` for top-level cluster 3, ``"3.1"`` for its sub-cluster 1, ...
        members: indices of the training rows in the cluster (argmax responsibility for a
            GMM), in ascending order.
        centre: the cluster centre in latent space ``(Z,)`` (k-means centroid / GMM mean).
        covariance: the cluster's covariance ``(Z, Z)`` (members' covariance for k-means,
            the component's for a GMM), for the Mahalanobis distance.
        responsibility: each member's posterior responsibility for this component (GMM),
            else None.
    """

    id: str
    members: np.ndarray
    centre: np.ndarray
    covariance: np.ndarray
    responsibility: np.ndarray | None = None


def cluster(
    z: np.ndarray, rows: np.ndarray, k: int, method: str, seed: int, prefix: str = ""
) -> list[Cluster]:
    """Cluster the latent means ``z[rows]`` into at most ``k`` clusters, largest first.

    Args:
        z: latent means of every training row ``(N, Z)``.
        rows: which rows to cluster (all of them at the top, a cluster's members below).
        k: clusters wanted; fewer when there are fewer rows than k.
        method: ``"kmeans"`` or ``"gmm"`` (full covariances).
        seed: scikit-learn's ``random_state``, so a resumed run finds the same clusters.
        prefix: the parent's id (``"3"`` gives ``"3.0"``, ``"3.1"``, ...).
    """
    if method not in CLUSTERINGS:
        raise UserError(f"unknown clustering {method!r}; choose one of {', '.join(CLUSTERINGS)}")
    points = np.asarray(z, dtype=np.float64)[rows]
    k = min(k, len(np.unique(points, axis=0)))
    if k < 1:
        return []
    assign, centres, covs, resp = _fit(points, k, method, seed)
    nodes = []
    for j in range(k):
        inside = assign == j
        if not inside.any():
            continue
        cov = covs[j] if covs is not None else _covariance(points[inside])
        nodes.append(Cluster("", rows[inside], centres[j], cov,
                             None if resp is None else resp[inside, j]))  # fmt: skip
    # Largest first: with the budget short, the queries that label most rows go first.
    nodes.sort(key=lambda c: -len(c.members))
    for i, node in enumerate(nodes):
        node.id = f"{prefix}.{i}" if prefix else str(i)
    return nodes


def _fit(points: np.ndarray, k: int, method: str, seed: int) -> tuple:
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture

    if method == "kmeans":
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(points)
        return km.labels_, km.cluster_centers_, None, None
    # reg_covar keeps components of near-duplicate points from collapsing.
    gmm = GaussianMixture(k, covariance_type="full", random_state=seed, reg_covar=1e-4)
    gmm.fit(points)
    resp = gmm.predict_proba(points)
    return resp.argmax(1), gmm.means_, gmm.covariances_, resp


def _covariance(points: np.ndarray) -> np.ndarray:
    if len(points) < 2:
        return np.zeros((points.shape[1], points.shape[1]))
    return np.atleast_2d(np.cov(points, rowvar=False))

"""Label confidence of propagated labels (Vengalil & Sinha sec 3.3, eq. 2-3):
``w_n = p_c f(d_n)``, with d Euclidean or Mahalanobis and f an exponential or Gaussian decay."""

from __future__ import annotations

import numpy as np

from ..errors import UserError

DISTANCES = ("euclidean", "mahalanobis")
DECAYS = ("exponential", "gaussian")
# Added to a cluster covariance's diagonal: a cluster with fewer members than latent units
# has a singular covariance, and Mahalanobis distance would be infinite along its null space.
COVARIANCE_RIDGE = 1e-6


def euclidean(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """``d_n = ||z_n - c||_2`` for points ``(N, Z)`` and a centre ``(Z,)``."""
    return np.linalg.norm(np.asarray(points) - np.asarray(centre), axis=-1)


def mahalanobis(points: np.ndarray, centre: np.ndarray, covariance: np.ndarray) -> np.ndarray:
    """``d_n = sqrt((z_n - c)^T S^-1 (z_n - c))`` with S the cluster's covariance ``(Z, Z)``
    (plus ``COVARIANCE_RIDGE`` on its diagonal, so small clusters stay finite)."""
    diff = np.asarray(points, dtype=np.float64) - np.asarray(centre, dtype=np.float64)
    cov = np.asarray(covariance, dtype=np.float64) + COVARIANCE_RIDGE * np.eye(diff.shape[-1])
    solved = np.linalg.solve(cov, diff.T).T  # S^-1 (z - c) without forming the inverse
    return np.sqrt(np.maximum((diff * solved).sum(-1), 0.0))


def distance(
    kind: str, points: np.ndarray, centre: np.ndarray, covariance: np.ndarray | None = None
) -> np.ndarray:
    """``euclidean`` or ``mahalanobis`` (which needs the cluster's covariance) by name."""
    if kind == "euclidean":
        return euclidean(points, centre)
    if kind == "mahalanobis":
        if covariance is None:
            raise UserError("Mahalanobis distance needs the cluster's covariance")
        return mahalanobis(points, centre, covariance)
    raise UserError(f"unknown distance {kind!r}; choose one of {', '.join(DISTANCES)}")


def decay(d: np.ndarray, rate: float, kind: str) -> np.ndarray:
    """``f(d)``: ``exp(-a d)`` (eq. 2) or ``exp(-a d^2)`` (eq. 3), monotone from 1 at d = 0.

    The paper found the Gaussian better with k-means: it is flat near the centre, so
    members close to it keep almost the centre's confidence ``p_c``.
    """
    d = np.asarray(d, dtype=np.float64)
    if kind == "exponential":
        return np.exp(-rate * d)
    if kind == "gaussian":
        return np.exp(-rate * d**2)
    raise UserError(f"unknown decay {kind!r}; choose one of {', '.join(DECAYS)}")


def confidence(p_c: float, d: np.ndarray, rate: float, kind: str) -> np.ndarray:
    """``w_n = p_c f(d_n)`` (eq. 2 or 3)."""
    return p_c * decay(d, rate, kind)

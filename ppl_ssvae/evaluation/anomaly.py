"""Anomaly detection with a generative model: the semi-unsupervised task of Berkhahn et al.

Berkhahn et al. (2019) sec 2.6 and 3.1.3 (Tables 5, 6), 3.2.3 (Table 9): train on the
nine "normal" classes of MNIST / Fashion-MNIST (some of them labelled), score the whole
test set with the log reconstruction probability, and report the ROC AUC of that score
against "is the held-out class". The reconstruction probability is An & Cho's (2015,
"Variational autoencoder based anomaly detection using reconstruction probability",
Alg. 4)::

    RP(x) = 1/L sum_l p_theta(x | z_l),      z_l ~ q_phi(z|x)

Typical use, sweeping the label fraction of the normal classes (Table 6)::

    split = anomaly_split(load("mnist"), anomaly_class=7)
    for fraction in (0.01, 0.1, 0.25, 0.5, 0.75, 0.99):
        data = semi_supervised_split(split.normal, label_fraction=fraction, seed=seed)
        fit(model, data, labelled_share=0.5)        # 1:1 labelled/unlabelled (sec 2.3)
        x, target = split.test_tensors(data)
        auc = anomaly_auc(reconstruction_log_prob(model, x), target)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from pyro import poutine

from ..data.dataset import Dataset
from ..data.split import SemiSupervisedData
from ..errors import UserError, is_int
from ..models.base import SemiSupervisedModel
from ..models.label_latent import LabelLatentModel
from ..models.pi_vae import PiVAE
from ..nn import eval_mode
from ..plates import MAX_PLATE_NESTING

AVERAGES = ("probability", "log")

# A scorer maps (model, x chunk, L) to (log_w, log_px), both (S, B): S weighted draws of
# the latents per row, weights summing to 1 over S, and log p(x | draw) for each.
Scorer = Callable[[SemiSupervisedModel, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


# -- the score ----------------------------------------------------------------------------------


@torch.no_grad()
def reconstruction_log_prob(
    model: SemiSupervisedModel,
    x: torch.Tensor,
    samples: int = 10,
    batch_size: int = 256,
    average: str = "probability",
) -> torch.Tensor:
    r"""The log reconstruction probability of each row: Berkhahn et al.'s anomaly score.

    For the pi-VAE (Berkhahn et al. sec 3.1.3; An & Cho Alg. 4), with ``L = samples``::

        log RP(x) = log 1/L sum_l p_theta(x | pi(x) ⊕ z_l),    z_l ~ q_phi(z|x)

    where ``pi(x)`` is the encoder's class layer, fed to the decoder as in training
    (eq. 2) for the SS variant; the EU variant (and ``pi_to_decoder=False``) decodes
    ``z_l`` alone. The ES variant has no decoder and cannot score.

    For label-latent models (M2, ADGM, GM-DGM, AGM-DGM) the label is marginalised with
    the guide, every class enumerated exactly::

        log RP(x) = log 1/L sum_l sum_y q(y|x, .) p_theta(x | y, z_{l,y}),
                    (a_l, z_{l,y}) ~ q(a, z | x, y)

    Lower means less like the training data, i.e. more anomalous: pass it to
    :func:`anomaly_auc` as it is.

    Args:
        model: a trained pi-VAE (``ss``/``eu``) or label-latent model.
        x: ``(N, D)`` inputs, scaled as in training (grey levels are fine for a
            Bernoulli decoder: its log-probability is the binary cross-entropy).
        samples: ``L``, draws of z per row.
        batch_size: rows per forward pass (each pass decodes ``L * batch_size`` codes,
            times the number of classes for label-latent models).
        average: ``"probability"`` averages probabilities, as An & Cho do (the log of
            a mean, computed stably); ``"log"`` averages log-probabilities instead (the
            ELBO's reconstruction term). The two agree for ``samples=1``.

    Returns:
        ``(N,)`` tensor of log reconstruction probabilities (nats), on the CPU.
    """
    if not is_int(samples) or samples < 1:
        raise UserError(f"samples={samples!r} must be an integer >= 1")
    if not is_int(batch_size) or batch_size < 1:
        raise UserError(f"batch_size={batch_size!r} must be an integer >= 1")
    if average not in AVERAGES:
        raise UserError(f"unknown average {average!r}; choose one of {', '.join(AVERAGES)}")
    scorer = _scorer(model)
    x = model.check_x(x)
    with eval_mode(model):  # no dropout, batch-norm running statistics: a deterministic network
        scores = []
        for chunk in x.split(batch_size):
            log_w, log_px = scorer(model, chunk, samples)
            if average == "probability":
                scores.append(torch.logsumexp(log_w + log_px, 0))
            else:
                scores.append((log_w.exp() * log_px).sum(0))
    if not scores:
        return torch.zeros(0)
    return torch.cat(scores).cpu()


def _scorer(model: SemiSupervisedModel) -> Scorer:
    scorer = SCORERS.get(model.reconstruction_scorer)
    if scorer is not None:
        return scorer
    if not model.has_decoder:
        raise UserError(
            f"this {model.name!r} model has no decoder (the pi-VAE 'es' variant), so it has "
            "no reconstruction probability; score with an 'ss' or 'eu' model"
        )
    raise UserError(
        f"reconstruction_log_prob does not support model {model.name!r}; use a pi-VAE "
        "('ss' or 'eu') or a label-latent model (m2, adgm, gmdgm, agmdgm)"
    )


def _pi_vae_draws(model: PiVAE, x: torch.Tensor, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    q_z, q_pi = model.encoder(x)
    z = q_z.rsample((samples,))  # (L, B, Z)
    # pi is deterministic given x (a point mass in the guide): one value for all L draws.
    log_pi = None if q_pi is None else q_pi.logits.expand(samples, -1, -1)
    # Flat rows, because the CNN / LSTM decoders expect a single batch dimension.
    code = model.code(z, log_pi).reshape(samples * len(x), -1)
    log_px = model.decoder(code).log_prob(x.repeat(samples, 1)).reshape(samples, len(x))
    return torch.full_like(log_px, -math.log(samples)), log_px


def _label_latent_draws(
    model: LabelLatentModel, x: torch.Tensor, samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    # Every row unlabelled: the guide enumerates y ~ q(y|x, .) in parallel, exactly as in
    # training, and the model replayed on that trace gives p(x | y, z) for every class.
    unlabelled = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
    guide = poutine.enum(model.guide, first_available_dim=-1 - MAX_PLATE_NESTING)
    log_w, log_px = [], []
    for _ in range(samples):  # a loop keeps each model's enumeration shapes untouched
        guide_trace = poutine.trace(guide).get_trace(x, unlabelled)
        model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(
            x, unlabelled
        )
        site = model_trace.nodes["x"]
        log_p = site["fn"].log_prob(site["value"])
        log_q = torch.zeros_like(log_p)
        for node in guide_trace.nodes.values():
            if node["type"] == "sample" and node["infer"].get("_enumerate_dim") is not None:
                log_q = log_q + node["fn"].log_prob(node["value"])
        log_q, log_p = torch.broadcast_tensors(log_q, log_p)
        log_w.append(log_q.reshape(-1, len(x)) - math.log(samples))
        log_px.append(log_p.reshape(-1, len(x)))
    return torch.cat(log_w), torch.cat(log_px)


# -- the metric ---------------------------------------------------------------------------------


# How each kind of model scores reconstructions, by its ``reconstruction_scorer``.
SCORERS: dict[str | None, Scorer] = {"pi_vae": _pi_vae_draws, "label_latent": _label_latent_draws}


def anomaly_auc(scores: torch.Tensor | np.ndarray, is_anomaly: torch.Tensor | np.ndarray) -> float:
    """ROC AUC of log reconstruction probabilities against the anomaly target.

    A lower log reconstruction probability means more anomalous, so the AUC is that of
    ``-scores``: 1.0 when every anomaly scores below every normal row, 0.5 at chance,
    below 0.5 when anomalies reconstruct better than normal data (the paper's digit 1,
    Table 5).

    Args:
        scores: ``(N,)`` log reconstruction probabilities (:func:`reconstruction_log_prob`).
        is_anomaly: ``(N,)`` 0/1 or bool, 1 for the anomalous class.
    """
    from sklearn.metrics import roc_auc_score

    s = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, float)
    t = np.asarray(is_anomaly.cpu() if isinstance(is_anomaly, torch.Tensor) else is_anomaly)
    if s.ndim != 1 or s.shape != t.shape:
        raise UserError(
            f"scores {s.shape} and is_anomaly {t.shape} must be 1-d and of the same length"
        )
    if not np.isin(t, (0, 1)).all():
        raise UserError("is_anomaly must hold 0/1 (or bool) values, 1 for the anomalous class")
    if len(np.unique(t)) < 2:
        raise UserError("the AUC needs both normal and anomalous rows; score the full test set")
    if not np.isfinite(s).all():
        raise UserError("scores contain NaN or inf; check the model and the input scaling")
    return float(roc_auc_score(t.astype(int), -s))


# -- the split ----------------------------------------------------------------------------------


@dataclass
class AnomalySplit:
    """The data of one anomaly-detection run (Berkhahn et al. sec 3.1.3, 3.2.3).

    Attributes:
        normal: the dataset without the anomalous class: its training and test rows
            of the normal classes only, with labels re-indexed ``0..K-2`` (a model for
            it has ``num_classes = K - 1``). Give it to ``semi_supervised_split`` to
            choose how many normal labels are kept (Table 6).
        x_test: ``(N, D)`` float32, the dataset's full test set (every class).
        is_anomaly: ``(N,)`` int64, 1 for rows of the anomalous class.
        y_test: ``(N,)`` int64, the original class ids of ``x_test``.
        anomaly_class: the held-out class id, in the original numbering.
        normal_classes: original ids of the normal classes; model class ``i`` is
            ``normal_classes[i]``.
    """

    normal: Dataset
    x_test: np.ndarray
    is_anomaly: np.ndarray
    y_test: np.ndarray
    anomaly_class: int
    normal_classes: tuple[int, ...]

    def test_tensors(
        self, data: SemiSupervisedData | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_test, is_anomaly)`` as tensors, ready for scoring.

        Args:
            data: the split the model was trained on; its feature mask (from
                ``std_threshold``) is applied to ``x_test`` so the columns match.
        """
        x = self.x_test
        if data is not None and data.feature_mask is not None:
            if data.feature_mask.size != x.shape[1]:
                raise UserError(
                    f"data keeps features of a {data.feature_mask.size}-feature input but the "
                    f"test set has {x.shape[1]}; pass the split made from this AnomalySplit"
                )
            x = x[:, data.feature_mask]
        as_x = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)
        return as_x, torch.as_tensor(self.is_anomaly, dtype=torch.long)


def anomaly_split(dataset: Dataset, anomaly_class: int | str) -> AnomalySplit:
    """Hold one class out as the anomaly (Berkhahn et al. sec 3.1.3): train on the others.

    The training rows of the anomalous class are dropped entirely (the model never sees
    them, labelled or not); the normal classes keep their order and are re-indexed
    ``0..K-2``. The scoring set is the whole test split with a binary target.

    Args:
        dataset: a loaded dataset (``ppl_ssvae.data.load``), before any split.
        anomaly_class: the class id, or its name (e.g. ``"Sneaker"``).
    """
    if not isinstance(dataset, Dataset):
        raise UserError(
            f"anomaly_split needs a Dataset from ppl_ssvae.data.load, not "
            f"{type(dataset).__name__}; split the normal classes afterwards with "
            "semi_supervised_split(result.normal, ...)"
        )
    k = dataset.num_classes
    anomaly = class_id(dataset, anomaly_class)
    if k < 3:
        raise UserError(
            f"{dataset.name} has {k} classes; anomaly detection with labelled normal "
            "classes needs at least 3 (two normal, one anomalous)"
        )
    normal_classes = tuple(c for c in range(k) if c != anomaly)
    # Original id -> model id; the anomaly maps to -1 but its rows are dropped below.
    new_id = np.full(k, -1, dtype=np.int64)
    new_id[list(normal_classes)] = np.arange(k - 1)
    keep_train = dataset.y_train != anomaly
    keep_test = dataset.y_test != anomaly
    if not keep_train.any() or keep_train.all():
        raise UserError(
            f"class {anomaly} has {int((~keep_train).sum())} of {len(keep_train)} training "
            "rows; choose a class that is present but not the only one"
        )
    normal = Dataset(
        name=f"{dataset.name}-without-{dataset.class_names[anomaly]}",
        x_train=dataset.x_train[keep_train],
        y_train=new_id[dataset.y_train[keep_train]],
        x_test=dataset.x_test[keep_test],
        y_test=new_id[dataset.y_test[keep_test]],
        class_names=[dataset.class_names[c] for c in normal_classes],
        image_shape=dataset.image_shape,
        support=dataset.support,
        default_validation_size=dataset.default_validation_size,
        source=dataset.source,
        extra={**dataset.extra, "anomaly_class": anomaly, "normal_classes": list(normal_classes)},
    )
    return AnomalySplit(
        normal=normal,
        x_test=dataset.x_test,
        is_anomaly=(~keep_test).astype(np.int64),
        y_test=np.asarray(dataset.y_test, dtype=np.int64),
        anomaly_class=anomaly,
        normal_classes=normal_classes,
    )


def class_id(dataset: Dataset, anomaly_class: int | str) -> int:
    """The id of ``anomaly_class`` (an id, its string, or a class name) in ``dataset``;
    a one-line error when there is no such class."""
    k = dataset.num_classes
    if isinstance(anomaly_class, str) and not anomaly_class.lstrip("-").isdigit():
        if anomaly_class not in dataset.class_names:
            raise UserError(
                f"{dataset.name} has no class {anomaly_class!r}; choose one of "
                f"{', '.join(dataset.class_names)} (or its id 0..{k - 1})"
            )
        return dataset.class_names.index(anomaly_class)
    # An id or its text (numpy's ints too), but not 2.7 or True.
    if not (isinstance(anomaly_class, (str, np.integer)) or is_int(anomaly_class)):
        raise UserError(f"anomaly_class={anomaly_class!r} must be a class id or name")
    c = int(anomaly_class)
    if not 0 <= c < k:
        raise UserError(f"anomaly_class={c} is out of range; {dataset.name} has ids 0..{k - 1}")
    return c

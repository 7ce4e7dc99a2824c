"""The model contract as checks a researcher runs on their own model.

Every model of the library passes these (tests/models/test_contract.py runs them over the
registry); a model registered with :func:`ppl_ssvae.models.register_model` is checked
with one import::

    from ppl_ssvae.testing import check_model
    check_model("my-model")          # every check, with every guide family it takes

Each check raises ``AssertionError`` naming the model, the guide and what failed.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pyro
import torch

from .data import Dataset, semi_supervised_split
from .models import MODELS, build, from_config

D, K = 10, 3
SMALL = {"z_dim": 3, "hidden": (8,)}
BATCHES = {"labelled": [0, 1, 2, 0, 1, 2], "unlabelled": [-1] * 6, "mixed": [0, -1, 2, -1, 1, -1]}


def small_model(name: str, **config: Any) -> Any:
    """Model ``name`` at contract size (10 inputs, 3 classes, z of 3, one hidden layer of 8)."""
    options = {k: v for k, v in SMALL.items() if k not in config}
    return build(name, input_dim=D, num_classes=K, seed=0, **options, **config)


def batch(kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Six binary rows, labelled, unlabelled or mixed (``y = -1`` unlabelled)."""
    gen = torch.Generator().manual_seed(0)
    return torch.bernoulli(torch.full((6, D), 0.4), generator=gen), torch.tensor(BATCHES[kind])


def _check(ok: bool, model: Any, what: str) -> None:
    if not ok:
        raise AssertionError(f"{model.name} (guide {model.config.guide}): {what}")


def check_steps(model: Any) -> None:
    """Three SVI steps on labelled, unlabelled and mixed batches give finite losses."""
    for kind in BATCHES:
        svi = pyro.infer.SVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-2}),
                             model.make_elbo())  # fmt: skip
        losses = [svi.step(*batch(kind)) for _ in range(3)]
        _check(all(math.isfinite(v) for v in losses), model, f"non-finite loss on a {kind} batch")


def check_gradients(model: Any) -> None:
    """Every parameter gets a non-zero gradient from a mixed batch, after one step (a flow
    guide starts as the identity, its last layers zero, so its hidden layers get a
    gradient only once those have moved)."""
    pyro.set_rng_seed(1)
    svi = pyro.infer.SVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-2}), model.make_elbo())
    svi.step(*batch("mixed"))
    model.zero_grad()
    pyro.set_rng_seed(1)
    model.make_elbo().loss_and_grads(model.model, model.guide, *batch("mixed"))
    missing = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    _check(not missing, model, f"parameters without a gradient: {missing}")


def check_predictions(model: Any) -> None:
    """``classify`` gives probabilities, ``sample`` inputs and ``encode`` latent means, as
    far as the model's capabilities (``can_classify``, ``has_decoder``,
    ``generates_by_class``) say it can."""
    x = torch.rand(7, D)
    if model.can_classify:
        probs = model.classify(x)
        _check(probs.shape == (7, K) and torch.allclose(probs.sum(-1), torch.ones(7)), model,
               f"classify gave shape {tuple(probs.shape)} or rows not summing to 1")  # fmt: skip
    if model.has_decoder:
        classes = (2, torch.tensor([0, 1, 2, 0])) if model.generates_by_class else ()
        for y in (None, *classes):
            _check(
                model.sample(4, y=y).shape == (4, D), model, f"sample(4, y={y}) has the wrong shape"
            )
    encoded = model.encode(x)
    _check(
        isinstance(encoded, dict), model, f"encode returned {type(encoded).__name__}, not a dict"
    )
    _check("z_mean" in encoded and encoded["z_mean"].shape[0] == 7, model,
           "encode's z_mean is missing or has the wrong number of rows")  # fmt: skip


def check_round_trip(model: Any) -> None:
    """The JSON config and state dict rebuild the same model."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    rebuilt = from_config(json.loads(json.dumps(model.to_config())))
    buffer.seek(0)
    rebuilt.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.rand(5, D)
    if model.can_classify:
        _check(
            torch.equal(rebuilt.classify(x), model.classify(x)),
            model,
            "rebuilt model classifies differently",
        )
    pyro.set_rng_seed(2)
    a = model.make_elbo().loss(model.model, model.guide, *batch("mixed"))
    pyro.set_rng_seed(2)
    b = rebuilt.make_elbo().loss(rebuilt.model, rebuilt.guide, *batch("mixed"))
    _check(a == b, model, f"rebuilt model's loss {b} differs from {a}")


def check_training(name: str, **config: Any) -> None:
    """One epoch of ``fit`` with no labels at all and with every label."""
    from .training import fit

    rng = np.random.default_rng(0)
    x = (rng.random((120, D)) < 0.3).astype(np.float32)
    y = rng.integers(0, K, 120)
    toy = Dataset("toy", x, y, x[:20], y[:20], ["a", "b", "c"], default_validation_size=20)
    for labels in (0, None):
        model = small_model(name, **config)
        result = fit(model, semi_supervised_split(toy, labels=labels), epochs=1, batch_size=50,
                     progress=False)  # fmt: skip
        _check(math.isfinite(result.history[0]["train_loss"]), model,
               f"non-finite training loss with labels={labels}")  # fmt: skip


CHECKS: dict[str, Callable[[Any], None]] = {
    "steps": check_steps, "gradients": check_gradients, "predictions": check_predictions,
    "round_trip": check_round_trip,
}  # fmt: skip


def guides_of(name: str) -> list[str]:
    """The guide families model ``name`` takes (every registered one, or only the default
    for a model whose guide is fixed)."""
    from .guides import GUIDES

    return list(GUIDES) if MODELS[name].guide_latents else ["gaussian"]


def check_model(name: str, guides: list[str] | None = None, **config: Any) -> list[str]:
    """Run the whole contract on registered model ``name`` with each guide family it takes
    (or ``guides``); ``config`` fields are passed to every build. Returns what was checked."""
    if name not in MODELS:
        raise AssertionError(f"{name!r} is not a registered model; register_model it first")
    done = []
    for guide in guides or guides_of(name):
        # pyro.module hands a module the tensors the param store holds under its names, so
        # an earlier model of the same name would be trained instead of this one.
        pyro.clear_param_store()
        model = small_model(name, guide=guide, **config)
        for check_name, check in CHECKS.items():
            check(model)
            done.append(f"{name}/{guide}/{check_name}")
    check_training(name, **config)
    done.append(f"{name}/training")
    return done

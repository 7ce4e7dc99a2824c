"""One torch optimizer over all of a model's parameters, usable by ``pyro.infer.SVI``.

``pyro.optim.PyroOptim`` builds one optimizer instance per parameter tensor and steps
them one by one from Python. With a handful of large weight matrices that is a dozen
optimizer calls per step; a single torch optimizer with its multi-tensor (``foreach``)
kernels does the same update in one call. The update rule is the torch optimizer's own
(Adam, RMSprop, ...), unchanged.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Iterable
from typing import Any

import pyro
import torch
from pyro.optim import PyroOptim

from ..errors import UserError

# Every torch optimizer by its class name in lower case: "adam", "adamw", "rmsprop", "sgd"...
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    name.lower(): cls
    for name, cls in vars(torch.optim).items()
    if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)
    and cls is not torch.optim.Optimizer
}  # fmt: skip
# Every torch learning-rate scheduler by its class name ("CosineAnnealingLR", "StepLR"...);
# those that wrap other schedulers or need a metric are left out (the loop steps each
# once per epoch without arguments).
SCHEDULERS: dict[str, type] = {
    name: cls
    for name, cls in vars(torch.optim.lr_scheduler).items()
    if isinstance(cls, type) and issubclass(cls, torch.optim.lr_scheduler.LRScheduler)
    and cls is not torch.optim.lr_scheduler.LRScheduler
    and name not in ("SequentialLR", "ChainedScheduler", "ReduceLROnPlateau", "LambdaLR",
                     "MultiplicativeLR")
}  # fmt: skip
# Training settings that are optimizer arguments: setting name -> torch keyword. ``rho`` is
# RMSprop's squared-gradient decay, Keras's name for what torch calls ``alpha`` (and the
# library's ``alpha`` is a model's classifier weight).
OPTIMIZER_OPTIONS: dict[str, str] = {"momentum": "momentum", "rho": "alpha", "eps": "eps"}


def optimizer_args(settings: dict[str, Any]) -> dict[str, Any]:
    """The torch optimizer arguments among ``settings`` (training settings such as a
    model's ``fit_defaults`` or the CLI's); options that are absent or None keep torch's
    defaults."""
    return {
        torch_name: settings[name]
        for name, torch_name in OPTIMIZER_OPTIONS.items()
        if settings.get(name) is not None
    }


# The options each optimizer takes (torch names) and the range each must lie in.
OPTION_RANGES: dict[str, dict[str, tuple[float, float, str]]] = {
    "adam": {"eps": (0.0, math.inf, "> 0"), "weight_decay": (0.0, math.inf, ">= 0")},
    "rmsprop": {
        "eps": (0.0, math.inf, "> 0"), "alpha": (0.0, 1.0, "in [0, 1)"),
        "momentum": (0.0, 1.0, "in [0, 1)"), "weight_decay": (0.0, math.inf, ">= 0"),
    },
}  # fmt: skip
# torch name -> the training setting's name in messages (RMSprop's alpha is --rho).
SETTING_NAMES = {torch_name: name for name, torch_name in OPTIMIZER_OPTIONS.items()}


def check_scheduler(name: str | None, options: dict[str, Any]) -> None:
    """Refuse an unknown scheduler or arguments its constructor does not take, before
    training starts (torch checks values when it is built, on the first step)."""
    if name is None:
        if options:
            raise UserError("lr_scheduler_args given without an lr_scheduler; name one")
        return
    if name not in SCHEDULERS:
        raise UserError(
            f"unknown lr_scheduler {name!r}; choose one of {', '.join(sorted(SCHEDULERS))}"
        )
    if not isinstance(options, dict):
        raise UserError(f"lr_scheduler_args must be a dict, got {options!r}")
    accepted = set(inspect.signature(SCHEDULERS[name]).parameters) - {"optimizer"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise UserError(f"{name} takes no {', '.join(unknown)}; its arguments: "
                        f"{', '.join(sorted(accepted - {'verbose'}))}")  # fmt: skip


def check_optimizer(name: str, options: dict[str, Any]) -> None:
    """Refuse an unknown optimizer, an option it does not take (``momentum`` with Adam) or
    an option out of range (``rho`` 2), before training starts."""
    name = name.lower() if isinstance(name, str) else name
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if not isinstance(options, dict):
        raise UserError(f"optimizer_args must be a dict of {name} options, got {options!r}")
    ranges = OPTION_RANGES.get(name, {})
    for key, value in options.items():
        setting = SETTING_NAMES.get(key, key)
        if key not in _accepted(name) or key in ("params", "lr"):
            takers = [n for n in OPTIMIZERS if key in _accepted(n)]
            hint = f"; use --optimizer {takers[0]}" if takers else ""
            raise UserError(f"{name} takes no {setting!r} option{hint}")
        if key not in ranges:
            continue  # torch checks the rest (betas, amsgrad...) itself
        low, high, text = ranges[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        strict_low = text == "> 0"
        if not (number and math.isfinite(value) and (value > low if strict_low else value >= low)
                and value < high):  # fmt: skip
            raise UserError(f"{setting}={value!r} must be {text} for {name}")


def weight_prior_decay(weight_prior: float, rows_per_step: int, train_rows: int) -> float:
    """The ``kernel_decay`` that puts Willetts et al.'s weight prior into this library's loss.

    Their objective (App. B and their released code) averages each half of a 1:1 batch and
    adds a standard-normal prior on every kernel, weighted by ``l2_reg / n_train``::

        L_W = -(mean_l ELBO + mean_u ELBO + alpha mean_l log q(y|x)
                + l2_reg * sum_W log N(W; 0, I) / n_train)

    This library's loss sums over the batch's rows instead, so on a batch of ``n/2``
    labelled and ``n/2`` unlabelled rows it is ``n/2`` times their data terms; adding
    ``c/2 ||W||^2`` with ``c = l2_reg * (n/2) / n_train`` makes it ``n/2 * L_W`` up to a
    constant, the same gradient direction (and, under Adam, the same updates).

    Args:
        weight_prior: ``l2_reg`` (0.5 in their runs).
        rows_per_step: the rows one step's loss sums over (labelled and unlabelled).
        train_rows: ``n_train``, the training set's rows, labelled or not.
    """
    return weight_prior * (rows_per_step / 2) / train_rows


def _accepted(name: str) -> set[str]:
    return set(inspect.signature(OPTIMIZERS[name]).parameters)


class SingleOptimizer(PyroOptim):
    """``SVI``-compatible wrapper of one ``torch.optim`` optimizer over every parameter.

    Parameters join the optimizer the first step they receive a gradient, in the order of
    their names in Pyro's param store, so a resumed run rebuilds the same parameter groups.
    The learning rate is multiplied by ``lr_decay_per_step`` after every step; it lives in
    the optimizer's parameter groups, so ``get_state``/``set_state`` resume it exactly.

    Args:
        name: a key of ``OPTIMIZERS`` (``"adam"``, ``"adamw"``, ``"rmsprop"``...).
        lr: initial learning rate.
        lr_decay_per_step: multiplicative decay applied after each step (1 = none).
        kernel_decay: ``c`` of an L2 penalty ``c/2 * ||W||^2`` on every kernel (every
            parameter of two or more dimensions: weight matrices, convolution kernels, not
            biases), added to the gradient before each step whatever the optimizer, so it
            is the gradient of a term of the loss (coupled, unlike AdamW's decay);
            ``weight_prior_decay`` gives Willetts et al.'s. 0: none.
        **options: further keyword arguments of the torch optimizer (``momentum``...).
    """

    def __init__(
        self,
        name: str,
        lr: float,
        lr_decay_per_step: float = 1.0,
        kernel_decay: float = 0.0,
        **options: Any,
    ) -> None:
        name = name.lower() if isinstance(name, str) else name  # as check_optimizer reads it
        if name not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
        if not 0.0 < lr_decay_per_step <= 1.0:
            raise UserError(f"lr_decay_per_step={lr_decay_per_step} must be in (0, 1]")
        # PyroOptim.__init__ is not called: its per-parameter bookkeeping is what this
        # class replaces. SVI only needs __call__, get_state and set_state.
        self.optim_class = OPTIMIZERS[name]
        multi_tensor = {"foreach": True} if "foreach" in _accepted(name) else {}
        self.options = {"lr": lr, **multi_tensor, **options}
        self.lr_decay_per_step = lr_decay_per_step
        self.kernel_decay = kernel_decay
        self.optimizer: torch.optim.Optimizer | None = None
        self.param_names: list[str] = []
        self._pending_state: dict[str, Any] | None = None

    def __call__(self, params: Iterable[torch.Tensor], *args: Any, **kwargs: Any) -> None:
        params = [p for p in params if p.grad is not None]
        self._add_new(params)
        if self.kernel_decay:
            kernels = [p for p in params if p.dim() >= 2]
            torch._foreach_add_([p.grad for p in kernels], [p.detach() for p in kernels],
                                alpha=self.kernel_decay)  # fmt: skip
        self.optimizer.step()
        # Release the gradients here: Pyro's SVI would otherwise replace each by a zero
        # tensor, and the next backward pass would add into it instead of assigning.
        self.optimizer.zero_grad(set_to_none=True)
        if self.lr_decay_per_step != 1.0:
            for group in self.optimizer.param_groups:
                group["lr"] *= self.lr_decay_per_step

    def _add_new(self, params: list[torch.Tensor]) -> None:
        store = pyro.get_param_store()
        known = {id(p) for group in self._groups() for p in group["params"]}
        new = sorted(
            ((store.param_name(p), p) for p in params if id(p) not in known),
            key=lambda pair: pair[0],
        )
        if not new:
            return
        names, tensors = [n for n, _ in new], [p for _, p in new]
        if self.optimizer is None:
            self.optimizer = self.optim_class(tensors, **self.options)
        else:
            # Later parameters (a model that grows) start at the current, decayed lr.
            self.optimizer.add_param_group(
                {"params": tensors, "lr": self.optimizer.param_groups[-1]["lr"]}
            )
        self.param_names += names
        if self._pending_state is not None and self.param_names == self._pending_state["names"]:
            self._load(self._pending_state)
            self._pending_state = None

    def restart(self) -> None:
        """Forget every parameter, its state and the decayed lr: the next step starts a new
        optimizer (a model's next training stage, ``SemiSupervisedModel.training_stage``)."""
        self.optimizer, self.param_names, self._pending_state = None, [], None

    def _load(self, state: dict[str, Any]) -> None:
        # Rebuild the saved group structure (groups appear when a model grows) so that
        # torch's load_state_dict matches parameters one to one.
        tensors = [p for group in self.optimizer.param_groups for p in group["params"]]
        groups, start = [], 0
        for saved in state["optimizer"]["param_groups"]:
            groups.append({"params": tensors[start : start + len(saved["params"])]})
            start += len(saved["params"])
        self.optimizer = self.optim_class(groups, **self.options)
        self.optimizer.load_state_dict(state["optimizer"])

    def _groups(self) -> list[dict[str, Any]]:
        return [] if self.optimizer is None else self.optimizer.param_groups

    def get_state(self) -> dict[str, Any]:
        if self._pending_state is not None:
            return self._pending_state
        if self.optimizer is None:
            return {"names": [], "optimizer": None}
        # A copy: torch's state_dict shares the moment buffers that the next step updates.
        state = copy.deepcopy(self.optimizer.state_dict())
        return {"names": list(self.param_names), "optimizer": state}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a ``get_state`` result; applied when the same parameters are seen again
        (the first step after a resume), since the tensors do not exist before that."""
        if "names" not in state:
            raise UserError(
                "this checkpoint's optimizer state predates ppl_ssvae.training.optim; start a new run"
            )
        if self.optimizer is not None and self.param_names == state["names"]:
            self._load(state)
        else:
            self._pending_state = state if state["optimizer"] is not None else None

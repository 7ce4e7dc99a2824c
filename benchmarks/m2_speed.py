"""M2 training speed: ppl-ssvae (Pyro, TraceEnum_ELBO) vs a naive plain-PyTorch M2.

The reference computes the same objective (Kingma eq. 9) the textbook way: for the
unlabelled rows it repeats every input K times, concatenates ``[x, onehot(y)]`` and runs
the encoder and decoder on the K*B rows. Both see identical batches (same sampler, same
seed) with the same networks (784-500-50, batch 200, Adam). Only the training steps are
timed. The last line printed is the ratio ours / reference (seconds per epoch).

A third contender, ``factored``, runs our own M2 modules (``W_x x`` once per row, every
row enumerated as in the one-plate model) through the same objective written in plain
PyTorch: the gap between it and ``ours`` is what Pyro's per-step machinery costs.

    python -m benchmarks.m2_speed --epochs 3

``--fit-against OTHER_CHECKOUT`` times something else: one epoch of the library's own
``fit`` (M2 784-500-50, 3000 labels, a run directory written) in this checkout and in
another, each in a fresh process, the two taking turns for ``--rounds`` rounds; it prints
each round's training-step and whole-epoch seconds, the medians and the ratios
(this / other), and whether both computed the same validation accuracy.

    python -m benchmarks.m2_speed --fit-against /path/to/older/checkout --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro
import torch
import torch.distributions as td
from pyro.infer import SVI
from torch import nn
from torch.nn import functional as F

from experiments.common import (
    ScriptParser,
    labelled_share,
    non_negative_float,
    positive_float,
    positive_int,
)
from ppl_ssvae.data import SemiSupervisedBatches, load, semi_supervised_split
from ppl_ssvae.evaluation.metrics import accuracy
from ppl_ssvae.models import build
from ppl_ssvae.nn import activation
from ppl_ssvae.plates import split_labels
from ppl_ssvae.training import make_optimizer


class NaiveM2(nn.Module):
    """Plain-PyTorch M2 with concatenated-label encoders, as most reference code has it."""

    def __init__(self, d: int, k: int, z: int, h: int, alpha: float, act: str = "relu"):
        super().__init__()
        self.k, self.z, self.alpha = k, z, alpha
        self.q_y = nn.Sequential(nn.Linear(d, h), activation(act), nn.Linear(h, k))
        self.q_z = nn.Sequential(nn.Linear(d + k, h), activation(act), nn.Linear(h, 2 * z))
        self.p_x = nn.Sequential(nn.Linear(z + k, h), activation(act), nn.Linear(h, d))

    def bound(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """L(x, y) per row, one reparameterised z sample."""
        onehot = F.one_hot(y, self.k).float()
        loc, raw = self.q_z(torch.cat([x, onehot], -1)).chunk(2, -1)
        q_z = td.Normal(loc, F.softplus(raw) + 1e-4)
        z = q_z.rsample()
        logits = self.p_x(torch.cat([z, onehot], -1))
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        log_pz = td.Normal(0.0, 1.0).log_prob(z).sum(-1)
        return log_px + log_pz - q_z.log_prob(z).sum(-1) - torch.log(torch.tensor(float(self.k)))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        labelled = y >= 0
        x_l, y_l, x_u = x[labelled], y[labelled], x[~labelled]
        log_q_l = F.log_softmax(self.q_y(x_l), -1)
        j = (self.bound(x_l, y_l) + self.alpha * log_q_l.gather(1, y_l[:, None]).squeeze(1)).sum()
        if len(x_u):
            log_q_u = F.log_softmax(self.q_y(x_u), -1)
            ys = torch.arange(self.k).repeat_interleave(len(x_u))
            bounds = self.bound(x_u.repeat(self.k, 1), ys).view(self.k, len(x_u)).T
            q = log_q_u.exp()
            j = j + ((q * bounds).sum(-1) - (q * log_q_u).sum(-1)).sum()
        return -j


def factored_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``-J^alpha`` of our M2 module without Pyro: the enumerated sum written out, labelled
    rows given the point mass at their label (as the guide does), all rows enumerated."""
    q, k = model.q, model.config.num_classes
    observed, y_filled = split_labels(y)
    q_y = q.q_y(x)
    point_mass = torch.full_like(q_y.logits, -1e4).scatter(-1, y_filled[:, None], 0.0)
    log_q = torch.where(observed[:, None], point_mass, q_y.logits).log_softmax(-1).T  # (K, B)
    labels = torch.arange(k)[:, None]
    q_z = q.q_z(x, labels)
    z = q_z.rsample()
    y_dec = torch.where(observed, y_filled, labels)
    bound = (
        model.p_x(z, y_dec).log_prob(x)
        + td.Normal(0.0, 1.0).log_prob(z).sum(-1)
        - q_z.log_prob(z)
        + model.prior.log()[:, None]
    )
    weights = log_q.exp()
    entropy = torch.where(observed, 0.0, -(weights * log_q).sum(0))
    j = (weights * bound).sum(0) + entropy
    return -(j.sum() + model.config.alpha * q_y.log_prob(y_filled)[observed].sum())


def _time_epochs(
    steps: dict, batches: SemiSupervisedBatches, epochs: int
) -> dict[str, list[float]]:
    """Seconds per epoch of each step function. The functions take turns on every batch
    (the order flips from batch to batch), so drift in the machine's speed, which on a
    shared 2-core host is several percent over a minute, affects both alike."""
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for epoch in range(1, epochs + 1):
        spent = dict.fromkeys(names, 0.0)
        for i, (x, y) in enumerate(batches.epoch(epoch)):
            for name in names if i % 2 == 0 else names[::-1]:
                start = time.perf_counter()
                steps[name](x, y)
                spent[name] += time.perf_counter() - start
        for name in names:
            seconds[name].append(spent[name])
        print(
            "  epoch " + str(epoch) + ": " + ", ".join(f"{n} {spent[n]:.1f} s" for n in names),
            flush=True,
        )
    return seconds


FIT_EPOCH = """
import json, sys, tempfile
import pyro
try:
    from ppl_ssvae.training import fit
except ImportError:  # a checkout from before ppl_ssvae.training
    from ppl_ssvae.train import fit
from ppl_ssvae.data import load, semi_supervised_split
from ppl_ssvae.models import build
data = semi_supervised_split(load("fashion-mnist", sys.argv[1] or None), labels=3000, seed=0)
pyro.set_rng_seed(0)
model = build("m2", input_dim=784, num_classes=10, z_dim=50, hidden=(500,))
with tempfile.TemporaryDirectory() as out:
    result = fit(model, data, epochs=1, batch_size=200, lr=1e-3, lr_decay=0.9,
                 labelled_share="natural", progress=False, out=out)
record = result.history[-1]
keys = ("train_seconds", "epoch_seconds", "epoch_cpu_seconds", "val_accuracy")
print(json.dumps({k: record[k] for k in keys}))
"""


def fit_against(other: Path, rounds: int, data_dir: str | None) -> None:
    """One ``fit`` epoch here and in ``other`` per round, alternating which goes first."""
    here = Path(__file__).resolve().parent.parent
    checkouts = {"this": here, "other": other.resolve()}
    seen: dict[str, list[dict]] = {name: [] for name in checkouts}
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")  # fmt: skip
    for r in range(rounds):
        order = list(checkouts) if r % 2 == 0 else list(checkouts)[::-1]
        for name in order:
            env = {**os.environ, "PYTHONPATH": str(checkouts[name])}
            done = subprocess.run([sys.executable, "-c", FIT_EPOCH, data_dir or ""], env=env,
                                  capture_output=True, text=True, check=True)  # fmt: skip
            seen[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  round {r + 1}: " + ", ".join(
            f"{n} steps {seen[n][-1]['train_seconds']:.1f} s / epoch {seen[n][-1]['epoch_seconds']:.1f} s"
            for n in checkouts), flush=True)  # fmt: skip
    for key in ("train_seconds", "epoch_seconds", "epoch_cpu_seconds"):
        med = {n: statistics.median(v[key] for v in seen[n]) for n in checkouts}
        ratios = [a[key] / b[key] for a, b in zip(seen["this"], seen["other"], strict=True)]
        print(f"{key} median: this {med['this']:.2f}, other {med['other']:.2f}; ratio this/other "
              f"median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")  # fmt: skip
    same = {v["val_accuracy"] for n in checkouts for v in seen[n]}
    print(
        f"validation accuracy after the epoch: {sorted(same)} ({'identical' if len(same) == 1 else 'DIFFERENT'})"
    )


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.fit_against is not None:
        fit_against(args.fit_against, args.rounds, args.data_dir)
        return

    data = semi_supervised_split(load("fashion-mnist", args.data_dir), labels=args.labels, seed=0)
    # As `ppl-ssvae train` does for a Bernoulli likelihood: dynamic binarisation.
    batches = SemiSupervisedBatches(
        data.x_train, data.y_train, args.batch_size, args.labelled_share, binarize=True, seed=0
    )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(batches)} steps/epoch "
          f"({batches.labelled_per_step} labelled + {batches.unlabelled_per_step} unlabelled rows)")  # fmt: skip

    steps, ours, naive = _contenders(args)
    seconds = _time_epochs(steps, batches, args.epochs)
    # The first epoch carries one-off warm-up costs; compare the median epoch.
    median = {name: sorted(s)[len(s) // 2] for name, s in seconds.items()}
    ours_epoch, naive_epoch = median["ours"], median["naive"]

    with torch.no_grad():
        naive_acc = accuracy(F.softmax(naive.q_y(data.x_test), -1), data.y_test)
    ours_acc = accuracy(ours.classify(data.x_test), data.y_test)
    print(f"test accuracy after {args.epochs} epochs: ours {ours_acc:.4f}, naive {naive_acc:.4f}")
    print(f"seconds/epoch (median): ours {ours_epoch:.2f}, naive {naive_epoch:.2f}")
    if args.factored:
        factored_epoch = median["factored"]
        print(
            f"factored modules without Pyro: {factored_epoch:.2f} s/epoch, "
            f"ratio factored/naive {factored_epoch / naive_epoch:.3f}"
        )
    print(f"ratio ours/naive: {ours_epoch / naive_epoch:.3f}")


def _parser() -> ScriptParser:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=positive_int, default=3)
    parser.add_argument("--labels", type=positive_int, default=3000)
    parser.add_argument("--batch-size", type=positive_int, default=200)
    parser.add_argument("--labelled-share", type=labelled_share, default="natural")
    parser.add_argument("--alpha", type=non_negative_float, default=100.0)
    parser.add_argument("--lr", type=positive_float, default=1e-3)
    parser.add_argument("--activation", default="relu")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--no-factored", dest="factored", action="store_false",
        help="skip the plain-PyTorch run of our factored modules",
    )  # fmt: skip
    parser.add_argument("--fit-against", type=Path, metavar="CHECKOUT",
                        help="time fit's epoch here against another checkout instead")  # fmt: skip
    parser.add_argument(
        "--rounds", type=positive_int, default=5, help="rounds of --fit-against [5]"
    )
    return parser


def _contenders(args: argparse.Namespace) -> tuple[dict[str, Callable[..., Any]], Any, Any]:
    """One training step of each contender, by name, and our and the naive model."""
    pyro.set_rng_seed(0)
    ours = build(
        "m2",
        input_dim=784,
        num_classes=10,
        z_dim=50,
        hidden=(500,),
        alpha=args.alpha,
        activation=args.activation,
    )
    # The optimizer `fit` uses (Adam, here without lr decay).
    svi = SVI(ours.model, ours.guide, make_optimizer("adam", args.lr), ours.make_elbo())

    torch.manual_seed(0)
    naive = NaiveM2(784, 10, 50, 500, args.alpha, args.activation)
    opt = torch.optim.Adam(naive.parameters(), lr=args.lr)

    def naive_step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad()
        naive.loss(x, y).backward()
        opt.step()

    steps = {"ours": svi.step, "naive": naive_step}
    if args.factored:
        pyro.set_rng_seed(0)
        factored = build(
            "m2", input_dim=784, num_classes=10, z_dim=50, hidden=(500,),
            alpha=args.alpha, activation=args.activation,
        )  # fmt: skip
        factored_opt = torch.optim.Adam(factored.parameters(), lr=args.lr)

        def factored_step(x: torch.Tensor, y: torch.Tensor) -> None:
            factored_opt.zero_grad()
            factored_loss(factored, x, y).backward()
            factored_opt.step()

        steps["factored"] = factored_step
    return steps, ours, naive


if __name__ == "__main__":
    main()

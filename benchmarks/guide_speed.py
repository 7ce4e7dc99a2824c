"""Training-step cost of each guide family on M2 at Fashion-MNIST sizes.

M2 784-500-50, 10 classes, batches of 200 rows with ~5% labelled (3000 labels of 50,000),
Adam, the model's TraceEnum_ELBO. Every guide's step is timed (wall and CPU) on the same
batches, the contenders interleaved step by step (and the order reversed every other
step) so that drift in the machine's speed hits all alike. Prints the CPU capability,
ms per step and the ratio to the first guide (the diagonal Gaussian).

    python -m benchmarks.guide_speed --guides gaussian,maf,pyro-iaf --steps 20
    python -m benchmarks.guide_speed --guides gaussian,nsf --steps 20 --profile 8

``--profile N`` then prints, per guide, the operators that take most of its step's CPU time
over N more steps (``torch.profiler``), as shares of the step: where a family's cost goes.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pyro
import torch

from benchmarks.common import interleaved_medians, svi_step
from experiments.common import ScriptParser, name_list, positive_int
from ppl_ssvae.guides import guide_names
from ppl_ssvae.models import build


def contender(name: str) -> tuple[str, dict]:
    """``NAME``, ``NAME@W`` or ``NAME@WxT`` as a guide family and its guide_args."""
    family, _, spec = name.partition("@")
    width, _, transforms = spec.partition("x")
    args = {"hidden_features": [int(width)] * 2} if width else {}
    return family, args | ({"transforms": int(transforms)} if transforms else {})


def stepper(guide: str, seed: int = 0) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One optimisation step of M2 with ``guide`` (its own optimizer and parameters)."""
    pyro.set_rng_seed(seed)
    family, guide_args = contender(guide)
    model = build("m2", input_dim=784, num_classes=10, z_dim=50, hidden=(500,), guide=family,
                  guide_args=guide_args)  # fmt: skip
    return svi_step(model)


def batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.bernoulli(torch.full((200, 784), 0.3), generator=g)
        labelled = torch.rand(200, generator=g) < 0.05
        y = torch.where(labelled, torch.randint(0, 10, (200,), generator=g), -1)
        out.append((x, y))
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guides", type=name_list, default="gaussian,maf,pyro-iaf",
                        help=f"comma-separated, from {', '.join(guide_names())}")  # fmt: skip
    parser.add_argument("--steps", type=positive_int, default=20, help="timed steps per guide")
    parser.add_argument("--profile", type=positive_int, default=None, metavar="N",
                        help="also profile N steps per guide and print its costliest operators")  # fmt: skip
    args = parser.parse_args(argv)
    names = args.guides
    specs = [n.partition("@")[2].split("x") for n in names if "@" in n]
    if not all(len(s) <= 2 and all(v.isdigit() and int(v) > 0 for v in s) for s in specs):
        parser.error(f"after @ give a width W or WxT (T transforms), got {args.guides!r}")
    unknown = sorted({contender(n)[0] for n in names} - set(guide_names()))
    if unknown:
        parser.error(f"unknown guides {unknown}; choose from {', '.join(guide_names())}")
    steps = {name: stepper(name) for name in names}
    data = batches(4)
    wall, cpu = interleaved_medians(steps, data, args.steps)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} thread(s), {args.steps} interleaved steps, median per step")  # fmt: skip
    print(f"{'guide':<18}{'wall ms':>10}{'CPU ms':>10}{'x first (CPU)':>15}")
    base = cpu[names[0]]
    ratios = {}
    for name in names:
        c = cpu[name]
        ratios[name] = c / base
        print(f"{name:<18}{1000 * wall[name]:>10.1f}{1000 * c:>10.1f}"
              f"{c / base:>14.2f}x")  # fmt: skip
    for name in names if args.profile else ():
        print(f"\n{name}: share of the step's CPU time, {args.profile} profiled steps")
        for operator, share in costliest_operators(steps[name], data, args.profile):
            print(f"  {operator:<32}{100 * share:>6.1f}%")
    return ratios


def costliest_operators(
    step: Callable[[torch.Tensor, torch.Tensor], None],
    data: list[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    top: int = 8,
) -> list[tuple[str, float]]:
    """The ``top`` operators by their own CPU time over ``steps`` steps, each as a share of
    the total."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            step(*data[i % len(data)])
    costs = sorted(((e.key, e.self_cpu_time_total) for e in prof.key_averages()),
                   key=lambda kv: -kv[1])  # fmt: skip
    total = sum(cost for _, cost in costs)
    return [(key, cost / total) for key, cost in costs[:top]]


if __name__ == "__main__":
    main()

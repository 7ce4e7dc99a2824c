"""Training-step cost of each network family on M2 at Fashion-MNIST sizes.

M2 784-500-50 on 28x28 images, 10 classes, batches of 100 labelled + 100 unlabelled rows
(the 1:1 share), Adam, the model's TraceEnum_ELBO, the default Gaussian guide. Every net's
step is timed (wall and CPU) on the same batches, the contenders interleaved step by step
(the order reversed every other step) so that drift in the machine's speed hits all alike.
Prints the CPU capability, ms per step, the ratio to the first net (dense) and the CPU
seconds of an epoch of ``--epoch-rows`` rows at that cost.

    python -m benchmarks.net_speed --nets dense,conv,conv@16x32 --steps 20
    python -m benchmarks.net_speed --nets dense,conv,m1-m2/m1,m1-m2/m2   # issue 31's costs

``m1-m2/m1`` and ``m1-m2/m2`` time Kingma's M1+M2 (784-600-600-50, then M2 500-50 on the
50 codes) in its two stages on the same batches.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pyro
import torch

from benchmarks.common import interleaved_medians, svi_step
from experiments.common import ScriptParser, name_list, positive_int
from ppl_ssvae.models import build
from ppl_ssvae.nn import NETS

PIXELS, CLASSES, IMAGE = 784, 10, (1, 28, 28)


def contender(name: str) -> tuple[str, dict]:
    """``NAME`` or ``NAME@C1xC2...`` (conv channels) as a net family and its net_args."""
    family, _, spec = name.partition("@")
    return family, {"channels": [int(c) for c in spec.split("x")]} if spec else {}


# Kingma's M1+M2 (sec 4.1 sizes) steps in its two stages: M1 on pixels, M2 on M1's codes.
STAGES = {"m1-m2/m1": 1, "m1-m2/m2": 2}


def stage_stepper(name: str, seed: int = 0) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One step of M1+M2 in the stage ``name`` names (M1 alone, or M2 on the codes)."""
    pyro.set_rng_seed(seed)
    model = build("m1-m2", input_dim=PIXELS, num_classes=CLASSES, m1_epochs=1)
    model.training_stage(STAGES[name])
    return svi_step(model)


def stepper(net: str, seed: int = 0) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One optimisation step of M2 with ``net`` (its own optimizer and parameters), or of
    an M1+M2 stage (``m1-m2/m1``, ``m1-m2/m2``)."""
    if net in STAGES:
        return stage_stepper(net, seed)
    pyro.set_rng_seed(seed)
    family, net_args = contender(net)
    model = build("m2", input_dim=PIXELS, num_classes=CLASSES, z_dim=50, hidden=(500,),
                  net=family, net_args=net_args, image_shape=IMAGE)  # fmt: skip
    return svi_step(model)


def batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of 100 labelled and 100 unlabelled rows of random binary pixels."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.bernoulli(torch.full((200, PIXELS), 0.3), generator=g)
        y = torch.cat([torch.randint(0, CLASSES, (100,), generator=g), torch.full((100,), -1)])
        out.append((x, y))
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", type=name_list, default="dense,conv",
                        help="comma-separated, NAME or conv@C1xC2 (channels), from "
                        f"{', '.join(NETS)}; or an M1+M2 stage, {', '.join(STAGES)}")  # fmt: skip
    parser.add_argument("--steps", type=positive_int, default=20, help="timed steps per net")
    parser.add_argument("--epoch-rows", type=positive_int, default=50_000,
                        help="rows of an epoch, for its CPU seconds (Fashion-MNIST's training "
                        "rows less 10,000 for validation)")  # fmt: skip
    args = parser.parse_args(argv)
    names = args.nets
    specs = [n.partition("@")[2].split("x") for n in names if "@" in n]
    if not all(all(v.isdigit() and int(v) > 0 for v in s) for s in specs):
        parser.error(f"after @ give channels as C1xC2..., got {args.nets!r}")
    unknown = sorted({contender(n)[0] for n in names if n not in STAGES} - set(NETS))
    if unknown:
        parser.error(f"unknown nets {unknown}; choose from {', '.join(NETS)}")
    steps = {name: stepper(name) for name in names}
    data = batches(4)
    wall, cpu = interleaved_medians(steps, data, args.steps)
    per_epoch = args.epoch_rows / len(data[0][0])
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} thread(s), {args.steps} interleaved steps of 100 + 100 "
          f"rows, median per step; epoch = {args.epoch_rows} rows")  # fmt: skip
    print(f"{'net':<16}{'wall ms':>10}{'CPU ms':>10}{'x first (CPU)':>15}{'CPU s/epoch':>13}")
    base = cpu[names[0]]
    ratios = {}
    for name in names:
        c = cpu[name]
        ratios[name] = c / base
        print(f"{name:<16}{1000 * wall[name]:>10.1f}{1000 * c:>10.1f}"
              f"{c / base:>14.2f}x{c * per_epoch:>13.0f}")  # fmt: skip
    return ratios


if __name__ == "__main__":
    main()

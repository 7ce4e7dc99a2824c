"""Training-step cost under float32 and under bf16 autocast (``fit(precision="bf16")``).

For each model at the size its experiments use, the same SVI step (same batch, same
networks) is timed in CPU-seconds on one thread, alternating the two precisions step by
step so that drift in the machine's speed hits both alike. Prints ms per step and the
speed-up, and the CPU capability it ran on. Without AMX the bf16 column is slower than
float32 (0.70x for M2 on an AVX512-BF16 Xeon, 7.6x slower on an AVX2 EPYC).

    python -m benchmarks.precision_speed --steps 10
    python -m benchmarks.precision_speed --models gmdgm,pi-vae-cnn --steps 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import pyro
import torch
from pyro.infer import SVI

from experiments.common import ScriptParser, name_list, positive_int
from ppl_ssvae.models import build
from ppl_ssvae.training import (
    PRECISIONS,
    make_optimizer,
    native_bf16,
    precision_context,
    resolve_precision,
)

# name -> (registry model, config, batch rows, labelled rows, classes): the semi-unsupervised
# protocol of Willetts et al. (|y| = 30, |z| = 200, 500-500, 100 + 100 rows) and the pi-VAE
# nets of Berkhahn et al. App. A at 1:1 batches of 200.
SETUPS: dict[str, tuple[str, dict[str, Any], int, int, int]] = {
    "m2": ("m2", {"z_dim": 200, "hidden": (500, 500)}, 200, 100, 30),
    "adgm": ("adgm", {"z_dim": 200, "hidden": (500, 500)}, 200, 100, 30),
    "gmdgm": ("gmdgm", {"z_dim": 200, "hidden": (500, 500)}, 200, 100, 30),
    "agmdgm": ("agmdgm", {"z_dim": 200, "hidden": (500, 500)}, 200, 100, 30),
    "pi-vae-dense": ("pi-vae", {"net": "dense"}, 200, 100, 10),
    "pi-vae-cnn": ("pi-vae", {"net": "cnn", "image_shape": (1, 28, 28)}, 200, 100, 10),
}


def step_times(name: str, steps: int, seed: int = 0) -> dict[str, list[float]]:
    """CPU-seconds of ``steps`` SVI steps per precision, interleaved."""
    model_name, config, rows, labelled, classes = SETUPS[name]
    pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    model = build(model_name, input_dim=784, num_classes=classes, **config)
    generator = torch.Generator().manual_seed(seed)
    x = torch.bernoulli(torch.full((rows, 784), 0.3), generator=generator)
    y = torch.full((rows,), -1)
    y[:labelled] = torch.randint(0, min(classes, 10), (labelled,), generator=generator)
    svi = SVI(model.model, model.guide, make_optimizer("adam", 1e-4), model.make_elbo())
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for step in range(steps + 1):  # the first round warms up and is not counted
        for precision in PRECISIONS:
            with precision_context(torch.device("cpu"), precision):
                start = time.process_time()
                svi.step(x, y)
                if step:
                    times[precision].append(time.process_time() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=name_list, default=",".join(SETUPS),
                        help=f"comma-separated, from {', '.join(SETUPS)} [all]")  # fmt: skip
    parser.add_argument("--steps", type=positive_int, default=10, help="timed steps per precision")
    parser.add_argument("--threads", type=positive_int, default=1)
    args = parser.parse_args(argv)
    names = args.models
    unknown = sorted(set(names) - set(SETUPS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(SETUPS)}")
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"AMX-BF16 {'yes' if native_bf16(cpu) else 'no'} (--precision auto picks "
          f"{resolve_precision('auto', cpu)}), {args.threads} thread(s), {args.steps} steps, "
          "CPU-ms per step (median)")  # fmt: skip
    print(f"{'model':<14}{'fp32':>10}{'bf16':>10}{'speed-up':>10}")
    for name in names:
        times = step_times(name, args.steps)
        fp32, bf16 = (1000 * statistics.median(times[p]) for p in ("fp32", "bf16"))
        print(f"{name:<14}{fp32:>10.0f}{bf16:>10.0f}{fp32 / bf16:>9.2f}x", flush=True)


if __name__ == "__main__":
    main()

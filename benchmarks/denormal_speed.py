"""Training-step cost of a trained run with and without flushing subnormal floats.

Loads a run directory's last checkpoint and times the loss-and-gradient pass of its own
objective on one of its training batches, in CPU-seconds on one thread, alternating
``fit.flush_denormal`` off and on step by step so that drift in the machine's speed hits
both alike. Prints ms per step, the ratio and the CPU capability. A fresh model makes few
subnormals; a run trained for a while makes many (see ``FitSettings.flush_denormal``):

    python -m benchmarks.denormal_speed runs/willetts_table1/m2/seed-0_z_dim-300_extra_classes-5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from experiments.common import ScriptParser, positive_int
from ppl_ssvae.data import SemiSupervisedBatches
from ppl_ssvae.runs import load_run
from ppl_ssvae.training.devices import denormal_mode
from ppl_ssvae.training.loop import objective_options

MODES = {"keep subnormals": False, "flush to zero": True}


def step_times(run_dir: str, steps: int) -> dict[str, list[float]]:
    """CPU-seconds of ``steps`` loss-and-gradient passes per mode, interleaved."""
    run = load_run(run_dir)
    run.load_weights("last")
    model, settings = run.model, run.settings
    batches = SemiSupervisedBatches(run.data.x_train, run.data.y_train, settings.batch_size,
                                    settings.labelled_share, settings.binarize, settings.seed)  # fmt: skip
    x, y = next(iter(batches.epoch(1)))
    elbo = model.make_elbo(**objective_options(settings))
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for step in range(steps + 1):  # the first round warms up and is not counted
        for mode, flush in MODES.items():
            with denormal_mode(flush):
                start = time.process_time()
                elbo.loss_and_grads(model.model, model.guide, x, y)
                spent = time.process_time() - start
            for p in model.parameters():
                p.grad = None
            if step:
                times[mode].append(spent)
    return times


def main(argv: list[str] | None = None) -> float:
    parser = ScriptParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a trained run's directory")
    parser.add_argument("--steps", type=positive_int, default=10, help="timed steps per mode")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    times = step_times(args.run, args.steps)
    median = {mode: statistics.median(t) for mode, t in times.items()}
    for mode, seconds in median.items():
        print(f"{mode:>16}: {1000 * seconds:8.1f} ms per step (median of {args.steps})")
    ratio = median["keep subnormals"] / median["flush to zero"]
    print(f"flushing is {ratio:.2f}x faster; CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")  # fmt: skip
    return ratio


if __name__ == "__main__":
    main()

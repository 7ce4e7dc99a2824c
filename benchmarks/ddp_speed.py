"""One process with N threads against N data-parallel processes with one thread each.

M2 (library defaults, 784-500-50) on Fashion-MNIST with 3000 labels, the same global batch
of 200 rows: ``ppl-ssvae train`` once with ``OMP_NUM_THREADS=N``, once with ``--devices N``
(``torchrun``, gloo, per-process batch 200 / N). The two take turns (A B, then B A for a
second round), each from a fresh run directory. Prints the CPU capability, seconds per
epoch (training steps only, and the whole epoch with rank 0's evaluation) and test
accuracy after the last epoch.

    python -m benchmarks.ddp_speed --epochs 3 --processes 2 [--rounds 2]

On a GPU machine ``--device cuda --processes <GPUs>`` compares one GPU with several.

It also times the one collective a DDP step adds: an all-reduce of M2's gradients (one
float32 tensor of its parameter count) between the processes over gloo, which gives the
crossover: N ranks beat one when a step's compute t satisfies t / N + all-reduce < t.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from experiments.common import ScriptParser, positive_int


def run_once(
    out: Path, epochs: int, processes: int, data_parallel: bool, device: str, labels: int
) -> dict:
    batch = 200 // processes if data_parallel else 200
    command = [sys.executable, "-m", "ppl_ssvae", "train", "--model", "m2", "--dataset",
               "fashion-mnist", "--labels", str(labels), "--epochs", str(epochs),
               "--batch-size", str(batch), "--device", device, "--no-progress", "--out", str(out)]  # fmt: skip
    if data_parallel:
        command += ["--devices", str(processes)]
    threads = 1 if data_parallel else processes
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    wall = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - wall
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "train_s": statistics.median(h["train_seconds"] for h in history),
        "epoch_s": statistics.median(h["epoch_seconds"] for h in history),
        "test_accuracy": history[-1]["test_accuracy"],
        "wall_s": wall,
    }


def _allreduce_worker(rank: int, world: int, store: str, numel: int, repeats: int, out: str):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    grads = torch.randn(numel)
    for _ in range(3):  # warm-up: connections, buffers
        dist.all_reduce(grads)
    times = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(grads)
        times.append(time.perf_counter() - start)
    if rank == 0:
        Path(out).write_text(json.dumps(times))
    dist.destroy_process_group()


def allreduce_ms(processes: int, numel: int, repeats: int = 50) -> float:
    """Median milliseconds of one gloo all-reduce of ``numel`` float32s on ``processes``."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "times.json"
        mp.start_processes(_allreduce_worker, nprocs=processes, start_method="spawn",
                           args=(processes, str(Path(scratch) / "store"), numel, repeats, str(out)))  # fmt: skip
        return 1000 * statistics.median(json.loads(out.read_text()))


def m2_parameters() -> int:
    from ppl_ssvae.models import build

    return sum(p.numel() for p in build("m2", input_dim=784, num_classes=10).parameters())


def main(argv: list[str] | None = None) -> None:
    p = ScriptParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=positive_int, default=3)
    p.add_argument("--processes", type=positive_int, default=2)
    p.add_argument("--rounds", type=positive_int, default=1)
    p.add_argument("--labels", type=positive_int, default=3000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--allreduce-only", action="store_true", help="time the all-reduce alone")
    args = p.parse_args(argv)
    n = args.processes
    names = {False: f"1 process x {n} threads", True: f"{n} processes x 1 thread (DDP, gloo)"}
    if args.device.startswith("cuda"):
        names = {False: "1 GPU", True: f"{n} GPUs (DDP, NCCL)"}
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{os.cpu_count()} CPUs, device {args.device}; M2 on Fashion-MNIST, {args.labels} "
          f"labels, global batch 200, {args.epochs} epochs per run")  # fmt: skip
    if not args.device.startswith("cuda"):
        numel = m2_parameters()
        ms = allreduce_ms(n, numel)
        print(f"gloo all-reduce of M2's {numel:,} gradients ({4 * numel / 2**20:.1f} MiB) on {n} "
              f"processes: {ms:.1f} ms (median of 50)")  # fmt: skip
    if args.allreduce_only:
        return
    results: dict[bool, list[dict]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as scratch:
        for r in range(args.rounds):
            for data_parallel in (False, True) if r % 2 == 0 else (True, False):
                out = Path(scratch) / f"{int(data_parallel)}-{r}"
                row = run_once(out, args.epochs, n, data_parallel, args.device, args.labels)
                results[data_parallel].append(row)
                print(f"round {r + 1}: {names[data_parallel]}: " + ", ".join(
                    f"{k} {v:.4f}" if k == "test_accuracy" else f"{k} {v:.1f}" for k, v in row.items()
                ), flush=True)  # fmt: skip
    print(
        "\n| contender | train s / epoch | epoch s (with evaluation) | test accuracy "
        f"after {args.epochs} epochs | speed-up (train) |\n|---|---|---|---|---|"
    )
    base = statistics.median(r["train_s"] for r in results[False])
    for data_parallel in (False, True):
        rows = results[data_parallel]
        train = statistics.median(r["train_s"] for r in rows)
        epoch = statistics.median(r["epoch_s"] for r in rows)
        accs = ", ".join(f"{r['test_accuracy']:.4f}" for r in rows)
        print(
            f"| {names[data_parallel]} | {train:.1f} | {epoch:.1f} | {accs} | {base / train:.2f}x |"
        )


if __name__ == "__main__":
    main()

"""The CUDA path of every model: a training step, evaluation, a checkpoint round trip and a
resume (skipped without a GPU; run on a lent GPU machine with ``pytest -m cuda``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyro
import pytest
import torch

from ppl_ssvae.data import load, semi_supervised_split
from ppl_ssvae.models import MODELS, build, from_config
from ppl_ssvae.runs.directory import BEST, CHECKPOINT, RunDir
from ppl_ssvae.training import fit, resolve_precision

pytestmark = pytest.mark.cuda

# The beta-VAE classifier trains on (label, weight) rows from the active loop; the rest on
# plain labels.
PLAIN = sorted(n for n in MODELS if n != "beta-vae-classifier")


@pytest.fixture(scope="module")
def digits():
    return semi_supervised_split(load("digits"), labels=50, seed=0)


def _model(name, data, guide="gaussian"):
    pyro.set_rng_seed(0)
    options = {"guide": guide} if MODELS[name].guide_latents else {}
    if name == "m1-m2":  # epoch 1 trains M1, epoch 2 (the resume) M2
        options["m1_epochs"] = 1
    return build(name, input_dim=data.input_dim, num_classes=10, z_dim=4, hidden=(32,), **options)


@pytest.mark.parametrize("name", PLAIN)
def test_every_model_trains_evaluates_saves_and_resumes_on_cuda(name, digits, tmp_path):
    model = _model(name, digits)
    run = tmp_path / "run"
    first = fit(model, digits, epochs=1, batch_size=100, device="cuda", out=run, progress=False)
    assert next(model.parameters()).device.type == "cuda"
    assert torch.isfinite(torch.tensor(first.history[0]["train_loss"]))
    # round trip: the saved weights give the same class probabilities on CPU and CUDA
    config = json.loads((run / "config.json").read_text())
    again = from_config(config["model"])
    RunDir(run).load_weights(again, BEST)
    x = digits.x_test[:64]
    if again.can_classify:
        on_cpu = again.classify(x)
        torch.testing.assert_close(model.classify(x.cuda()).cpu(), on_cpu, rtol=1e-4, atol=1e-5)
    else:  # m1: the same latent means
        on_cpu = again.encode(x)["z_mean"]
        on_cuda = model.encode(x.cuda())["z_mean"].cpu()
        torch.testing.assert_close(on_cuda, on_cpu, rtol=1e-4, atol=1e-5)
    resumed = fit(model, digits, epochs=2, batch_size=100, device="cuda", out=run,
                  resume=True, progress=False)  # fmt: skip
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert RunDir(run).load_checkpoint(CHECKPOINT)["epoch"] == 2


@pytest.mark.parametrize("guide", ["maf", "nsf", "pyro-iaf", "lowrank-gaussian"])
def test_flow_guides_train_on_cuda(guide, digits):
    result = fit(_model("m2", digits, guide), digits, epochs=1, device="cuda", progress=False)
    assert result.history[0]["val_accuracy"] > 0


def test_auto_precision_is_bf16_on_a_bf16_gpu():
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    assert resolve_precision("auto", torch.device("cuda")) == expected


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_train_data_parallel_over_nccl(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "ppl_ssvae", "train", "--model", "m2", "--dataset", "digits",
               "--labels", "100", "--epochs", "2", "--device", "cuda", "--devices", "2",
               "--no-progress", "--out", str(run)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=os.environ)
    assert done.returncode == 0, done.stderr
    assert json.loads((run / "config.json").read_text())["distributed"]["backend"] == "nccl"

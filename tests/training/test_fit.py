"""fit from Python: resume with the run's own settings, the model's recommendations,
parity with the CLI, loggers."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from ppl_ssvae.cli import main
from ppl_ssvae.data import load, semi_supervised_split
from ppl_ssvae.errors import UserError
from ppl_ssvae.models import build
from ppl_ssvae.training import CSVLogger, MLflowLogger, TensorBoardLogger, fit


@pytest.fixture(scope="module")
def digits():
    return semi_supervised_split(load("digits"), labels=50, seed=0)


def _m2(data, seed=0):
    return build("m2", input_dim=data.input_dim, num_classes=10, z_dim=4, hidden=(16,), seed=seed)


def test_python_resume_continues_with_the_runs_settings_bit_for_bit(digits, tmp_path):
    """A run trained at batch 100 / lr 3e-3, resumed from Python with only the budget:
    the same weights and records as the uninterrupted run."""
    settings = {"batch_size": 100, "lr": 3e-3, "labelled_share": 0.3, "progress": False}
    straight = _m2(digits)
    whole = fit(straight, digits, epochs=3, out=tmp_path / "a", **settings)
    fit(_m2(digits), digits, epochs=1, out=tmp_path / "b", **settings)
    resumed = _m2(digits)
    part = fit(resumed, digits, epochs=3, out=tmp_path / "b", resume=True, progress=False)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    strip = lambda h: {k: v for k, v in h.items() if "seconds" not in k}  # noqa: E731
    assert [strip(h) for h in part.history] == [strip(h) for h in whole.history]
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["fit"]["batch_size"] == 100 and config["fit"]["lr"] == 3e-3
    assert config["resumes"][0]["changed"] == {"epochs": 3}


def test_python_resume_refuses_settings_of_another_run(digits, tmp_path):
    fit(_m2(digits), digits, epochs=1, out=tmp_path, batch_size=100, lr=3e-3, progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(
        UserError, match=r"batch_size=200 \(recorded 100\).*lr=0.001 \(recorded 0.003\)"
    ):
        fit(_m2(digits), digits, epochs=2, out=tmp_path, resume=True, batch_size=200, lr=1e-3)
    with pytest.raises(UserError, match="not the one .* trained"):
        other = build("m2", input_dim=digits.input_dim, num_classes=10, z_dim=5, hidden=(16,))
        fit(other, digits, epochs=2, out=tmp_path, resume=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_the_models_recommended_settings_apply_from_python_and_are_recorded(digits, tmp_path):
    model = build(
        "gmdgm", input_dim=digits.input_dim, num_classes=10, z_dim=4, hidden=(16,), seed=0
    )
    result = fit(model, digits, epochs=1, out=tmp_path, progress=False)
    assert result.applied_defaults == {"lr": 3e-4, "lr_decay": 1.0, "labelled_share": "1:1"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["fit"]["lr"] == 3e-4 and config["fit"]["labelled_share"] == "1:1"
    assert config["fit_defaults_applied"] == result.applied_defaults
    # A value the caller gives is never replaced by the recommendation.
    given = fit(build("gmdgm", input_dim=digits.input_dim, num_classes=10, z_dim=4, hidden=(16,)),
                digits, epochs=1, lr=1e-3, progress=False)  # fmt: skip
    assert "lr" not in given.applied_defaults


def test_python_and_cli_give_the_same_weights_for_the_same_spec_and_seed(digits, tmp_path):
    args = ["train", "--model", "m2", "--dataset", "digits", "--labels", "50", "--z-dim", "4",
            "--hidden", "16", "--epochs", "1", "--batch-size", "100", "--seed", "3",
            "--no-progress", "--out", str(tmp_path / "cli")]  # fmt: skip
    assert main(args) == 0
    data = semi_supervised_split(load("digits"), labels=50, seed=3)
    model = build("m2", input_dim=data.input_dim, num_classes=10, z_dim=4, hidden=(16,),
                  likelihood="bernoulli", seed=3)  # fmt: skip
    fit(model, data, epochs=1, batch_size=100, seed=3, progress=False)
    saved = torch.load(tmp_path / "cli" / "checkpoint.pt", weights_only=True)["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key


# -- loggers ----------------------------------------------------------------------------------
def test_csv_and_tensorboard_loggers_write_every_epochs_scalars(digits, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    loggers = [
        CSVLogger(str(tmp_path / "m.csv")),
        TensorBoardLogger(str(tmp_path / "tb"), images=True),
    ]
    result = fit(_m2(digits), digits, epochs=2, callbacks=loggers, batch_size=100, progress=False)
    with open(tmp_path / "m.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["train_loss"]) for r in rows] == pytest.approx(
        [h["train_loss"] for h in result.history]
    )
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload()
    losses = [(e.step, e.value) for e in events.Scalars("train_loss")]
    assert losses == [(h["epoch"], pytest.approx(h["train_loss"])) for h in result.history]
    assert {"val_accuracy", "elbo", "epoch_cpu_seconds"} <= set(events.Tags()["scalars"])
    assert len(events.Images("samples")) == 2


def test_mlflow_logger_records_params_and_metrics(digits, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    # MLflow's file store needs no database server (it asks to be allowed explicitly).
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    logger = MLflowLogger(experiment="test", tracking_uri=uri, run_name="r")
    result = fit(_m2(digits), digits, epochs=2, callbacks=[logger], batch_size=100, progress=False)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("test").experiment_id])[0]
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [
        (h["epoch"], pytest.approx(h["train_loss"])) for h in result.history
    ]
    assert run.data.params["batch_size"] == "100" and run.data.params["model"] == "m2"


@pytest.mark.parametrize(
    "logger, name", [(CSVLogger, "metrics.csv"), (TensorBoardLogger, "tensorboard")]
)
def test_a_logger_never_writes_through_a_link_planted_in_the_run_directory(
    digits, tmp_path, logger, name
):
    target = tmp_path / "thesis"
    target.mkdir() if name == "tensorboard" else target.write_text("my thesis\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / name).symlink_to(target)
    with pytest.raises(UserError, match="is a symbolic link"):
        fit(_m2(digits), digits, epochs=1, out=run, callbacks=[logger()], progress=False)
    assert sorted(p.name for p in run.iterdir()) == [name]  # the failed start left nothing
    assert (
        (list(target.iterdir()) == [])
        if name == "tensorboard"
        else target.read_text() == "my thesis\n"
    )

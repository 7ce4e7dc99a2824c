import json
import subprocess
import sys

import pytest

from ppl_ssvae.cli import main
from ppl_ssvae.guides import guide_names
from ppl_ssvae.models import MODELS, from_config
from ppl_ssvae.runs.directory import RunDir

TINY = ["--dataset", "digits", "--labels", "50", "--z-dim", "4", "--hidden", "32", "--lr", "1e-3",
        "--batch-size", "100", "--no-progress"]  # fmt: skip


def test_train_evaluate_resume(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--model", "m2", *TINY, "--epochs", "1", "--out", out]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert main(["train", "--out", out, "--resume", "--epochs", "2", "--no-progress"]) == 0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    capsys.readouterr()
    assert main(["evaluate", out]) == 0
    printed = capsys.readouterr().out
    best = (
        json.loads(lines[0])
        if json.loads(lines[0])["val_accuracy"] >= json.loads(lines[1])["val_accuracy"]
        else json.loads(lines[1])
    )
    assert f"test accuracy {best['test_accuracy']:.4f}" in printed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--model", "m3", "--out", "x"], "unknown model 'm3'"),
        (["train", "--dataset", "imagenet", "--out", "x"], "unknown dataset 'imagenet'"),
        (["train", *TINY, "--labels", "5000", "--out", "x"], "ask for at most"),
        (
            ["train", "--dataset", "mnist", "--data-dir", "/no/such/dir", "--out", "x"],
            "does not exist",
        ),
        (["train", "--out", "nowhere", "--resume"], "no run in nowhere"),
        (["train", *TINY, "--hidden", "5,a", "--out", "x"], "comma-separated ints"),
        (["train", *TINY, "--labelled-share", "lots", "--out", "x"], "labelled share"),
        (["evaluate", "/no/run"], "not a run directory"),
    ],
)
def test_user_errors_are_one_line(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_resume_refuses_changed_settings(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *TINY, "--epochs", "1", "--out", out]) == 0
    assert main(["train", "--out", out, "--resume", "--lr", "0.1"]) == 2
    assert "cannot change lr" in capsys.readouterr().err


def test_precision_is_recorded_and_kept_on_resume(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *TINY, "--epochs", "1", "--precision", "bf16", "--out", out]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["spec"]["fit"]["precision"] == config["fit"]["precision"] == "bf16"
    assert main(["train", "--out", out, "--resume", "--precision", "fp32"]) == 2
    assert "cannot change precision" in capsys.readouterr().err
    assert main(["train", "--out", out, "--resume", "--epochs", "2"]) == 0


def test_resume_records_the_budget_it_changed(tmp_path):
    """config.json keeps the starting budget in ``fit`` and adds one ``resumes`` entry per
    resume that changed it, holding only what changed."""
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    resume = ["train", "--out", str(out), "--resume", "--no-progress"]
    assert main([*resume, "--epochs", "2", "--max-cpu-minutes", "50"]) == 0
    before = (out / "config.json").read_text()
    assert main([*resume, "--epochs", "2"]) == 2  # nothing left to train: refused, no entry
    assert (out / "config.json").read_text() == before
    assert main([*resume, "--epochs", "3"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["fit"]["epochs"] == 1 and config["fit"]["max_cpu_minutes"] is None
    assert all(
        r.keys() == {"from_epoch", "changed", "git_commit", "git_dirty"} for r in config["resumes"]
    )
    budgets = [(r["from_epoch"], r["changed"]) for r in config["resumes"]]
    assert budgets == [(1, {"epochs": 2, "max_cpu_minutes": 50.0}), (2, {"epochs": 3})]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_resume_a_run_started_before_an_option_existed(tmp_path):
    """A run whose config.json predates an option resumes with that option's default."""
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    for section in (config["spec"]["fit"], config["fit"]):
        del section["lr_scheduler"], section["lr_scheduler_args"]
    (out / "config.json").write_text(json.dumps(config))
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2"]) == 0


def test_resume_a_run_written_before_run_specs(tmp_path, capsys):
    """A config.json of 0.1 (the CLI's options under "cli", no spec) resumes with its
    recorded settings; only the budget may be given."""
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    config["cli"] = {**config.pop("spec")["data"], "model": "m2", "z_dim": 4, "hidden": "16"}
    for key in ("lr_scheduler", "lr_scheduler_args"):
        del config["fit"][key]
    (out / "config.json").write_text(json.dumps(config))
    assert main(["train", "--out", str(out), "--resume", "--lr", "0.5"]) == 2
    assert "takes only epochs" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2"]) == 0
    assert main(["evaluate", str(out)]) == 0


def test_pi_vae_trains_with_keras_rmsprop_unless_told_otherwise(tmp_path):
    """Berkhahn et al. App. A's RMSprop: rho 0.9, epsilon 1e-7, no momentum (torch's
    alpha, eps); options given on the command line win."""
    args = ["train", "--model", "pi-vae", *TINY, "--epochs", "1"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    fit = json.loads((tmp_path / "a" / "config.json").read_text())["fit"]
    assert fit["optimizer"] == "rmsprop" and fit["optimizer_args"] == {"alpha": 0.9, "eps": 1e-7}
    assert main([*args, "--rho", "0.99", "--momentum", "0.5", "--out", str(tmp_path / "b")]) == 0
    fit = json.loads((tmp_path / "b" / "config.json").read_text())["fit"]
    assert fit["optimizer_args"] == {"momentum": 0.5, "alpha": 0.99, "eps": 1e-7}


def test_argparse_errors_are_one_line():
    proc = subprocess.run([sys.executable, "-m", "ppl_ssvae.cli", "train", "--epochs", "x", "--out", "o"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_help_explains_every_option():
    proc = subprocess.run(
        [sys.executable, "-m", "ppl_ssvae.cli", "train", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    for option in ("--labels", "--hidden-classes", "--label-fraction", "--max-minutes", "--resume",
                   "--binarize", "--std-threshold", "--labelled-share", "--device", "--alpha"):  # fmt: skip
        assert option in proc.stdout


def test_every_command_prints_its_help():
    """Help is generated from docstrings; one with a "%" once crashed argparse's --help."""
    from ppl_ssvae.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.choices and "train" in a.choices).choices
    for name, command in commands.items():
        assert command.format_help(), name


def test_no_torchvision_at_import():
    code = ("import sys, ppl_ssvae, ppl_ssvae.cli, ppl_ssvae.training, ppl_ssvae.models, ppl_ssvae.data, "
            "ppl_ssvae.evaluation.metrics; assert 'torchvision' not in sys.modules")  # fmt: skip
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# Every pair the registries allow (the pi-VAE keeps its own Gaussian encoder).
ALL_PAIRS = [
    (model, guide)
    for model in MODELS
    for guide in guide_names()
    if model != "pi-vae" or guide == "gaussian"
]
# The default suite covers every model and every guide, each guide on two models (the
# rebuild is the same registry lookup for every pair); the whole product is `slow`.
_FLOW_MODELS = [m for m in MODELS if m != "pi-vae"]
_COVER = {(m, guide_names()[(2 * i + k) % len(guide_names())])
          for i, m in enumerate(_FLOW_MODELS) for k in (0, 1)} | {("pi-vae", "gaussian")}  # fmt: skip
ROUND_TRIPS = [
    pair if pair in _COVER else pytest.param(*pair, marks=pytest.mark.slow) for pair in ALL_PAIRS
]


def test_the_default_round_trips_cover_every_model_and_every_guide():
    assert {m for m, _ in _COVER} == set(MODELS) and len(_COVER) == 2 * len(_FLOW_MODELS) + 1
    assert all(sum(g == guide for _, g in _COVER) >= 2 for guide in guide_names())
    assert set(ALL_PAIRS) >= _COVER


@pytest.mark.parametrize("model, guide", ROUND_TRIPS)
def test_guide_round_trip_train_evaluate_resume(tmp_path, capsys, model, guide):
    """--guide is recorded in config.json; evaluate and --resume rebuild the same guide
    (a default guide would not load the weights)."""
    out = str(tmp_path / "run")
    tiny = ["--dataset", "digits", "--labels", "50", "--z-dim", "3", "--hidden", "8",
            "--batch-size", "400", "--no-progress", "--out", out]  # fmt: skip
    assert main(["train", "--model", model, "--guide", guide, *tiny, "--epochs", "1"]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["guide"] == guide
    assert main(["train", "--out", out, "--resume", "--epochs", "2", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", out, "--checkpoint", "last", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["epoch"] == 2
    if from_config(config["model"]).can_classify:
        assert 0.0 <= report["test_accuracy"] <= 1.0
    else:  # m1, an unsupervised VAE, reports no accuracy
        assert report["test_accuracy"] is None


def test_guide_args_are_checked_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *TINY, "--guide", "maf", "--guide-arg", "layers=3", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "transforms" in err and len(err.strip().splitlines()) == 1 and not out.exists()
    assert main(["train", *TINY, "--model", "pi-vae", "--guide", "maf", "--out", str(out)]) == 2
    assert not out.exists()


def test_active_refuses_bad_input_and_changed_settings_on_resume(tmp_path, capsys):
    out = tmp_path / "active"
    assert main(["active", "--dataset", "digits", "--queries", "0", "--out", str(out)]) == 2
    assert "queries=0" in capsys.readouterr().err and not out.exists()
    run = RunDir(out)
    with run.lock():
        run.write_config({"model": {"model": "beta-vae-classifier"},
                          "active": {"dataset": "digits", "k": 10}})  # fmt: skip
    assert main(["active", "--out", str(out), "--resume", "--k", "5"]) == 2
    assert "cannot change k" in capsys.readouterr().err


def test_the_active_command_has_one_option_per_active_config_field():
    import dataclasses

    from ppl_ssvae.active import ActiveConfig
    from ppl_ssvae.cli import build_parser
    from ppl_ssvae.cli.options import given

    args = build_parser().parse_args(["active", "--out", "x", "--beta", "2", "--hidden", "8,4"])
    assert given(args) == {"active": {"beta": 2.0, "hidden": (8, 4)}}
    (active,) = [a for a in build_parser()._subparsers._group_actions[0].choices.items()
                 if a[0] == "active"]  # fmt: skip
    dests = {a.dest.split(".", 1)[1] for a in active[1]._actions if a.dest.startswith("active.")}
    assert dests == {f.name for f in dataclasses.fields(ActiveConfig)}


def test_net_and_net_args_round_trip_train_resume_evaluate(tmp_path, capsys):
    """--net and --net-args (generated from the config's fields) are recorded in
    config.json with the image shape the data gave; --resume and evaluate rebuild the conv
    nets (dense ones would not load the weights)."""
    out = str(tmp_path / "run")
    argv = ["train", *TINY, "--net", "conv", "--net-args", "channels=[4,8]", "--epochs", "1",
            "--out", out]  # fmt: skip
    assert main(argv) == 0
    model = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert (model["net"], model["net_args"], model["image_shape"]) == (
        "conv", {"channels": [4, 8]}, [1, 8, 8])  # fmt: skip
    assert main(["train", "--out", out, "--resume", "--epochs", "2", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", out, "--checkpoint", "last", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["epoch"] == 2


def test_image_nets_on_masked_features_are_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *TINY, "--net", "conv", "--std-threshold", "0.1", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "needs x as images" in err and len(err.splitlines()) == 1 and not out.exists()

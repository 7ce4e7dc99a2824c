"""Every experiment script runs end to end on a small budget (cf. Pyro's test_examples)."""

import csv
import importlib
import io
import json
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
# Each script with the arguments that make it quick; a script missing here fails the test.
SMOKE_ARGS = {
    "m2_fashion_mnist": ["--budget", "smoke", "--dataset", "digits", "--labels", "100"],
    "pi_vae_fashion_mnist": ["--budget", "smoke", "--dataset", "digits", "--labels", "100",
                             "--matched-steps"],
    "pi_vae_anomaly": ["--budget", "smoke", "--dataset", "digits", "--classes", "3", "--steps", "8"],
    "latent_fashion_mnist": ["--budget", "smoke", "--dataset", "digits", "--labels", "100"],
    "pi_vae_disentanglement": ["--budget", "smoke", "--labels", "0,30", "--labelled-only", "30"],
    "pi_vae_sequences": ["--budget", "smoke", "--labels", "100", "--net", "rnn-steps"],
    "guides_fashion_mnist": ["--budget", "smoke", "--dataset", "digits", "--settings",
                             "latent-100,m2-3000,gmdgm-3000", "--guides", "gaussian,maf", "--z-dim", "3",
                             "--hidden", "16", "--labels", "100", "--iwae-rows", "20",
                             "--runs-dir", "{tmp}/runs"],
    "active_labelling": ["--budget", "smoke", "--dataset", "digits"],
    "sklearn_comparison": ["--budget", "smoke", "--dataset", "digits", "--labels", "100"],
    "semi_unsupervised_fashion_mnist": ["--budget", "smoke", "--dataset", "digits", "--z-dim", "4",
                                        "--hidden", "16", "--unsupervised", "--models", "gmdgm,m2",
                                        "--runs-dir", "{tmp}/runs"],
    "m2_sigma2_circles": ["--budget", "smoke"],
    "m2_kl_warmup_moons": ["--budget", "smoke", "--sigma2", "0.1"],
    "m2_zprime_probe": ["--budget", "smoke", "--dataset", "digits"],
    "m2_pretrained_vae": ["--budget", "smoke", "--dataset", "digits"],
}  # fmt: skip
# A column each script's table must have.
COLUMN = {
    "pi_vae_anomaly": "auc_ss",
    "pi_vae_disentanglement": "beta_vae_score",
    "m2_zprime_probe": "probe_accuracy",
    "semi_unsupervised_fashion_mnist": "test_accuracy_hidden",
}


def test_every_experiment_is_listed():
    scripts = {p.stem for p in EXPERIMENTS.glob("*.py")} - {"__init__", "common", "report_runs"}
    assert scripts == set(SMOKE_ARGS)


@pytest.mark.parametrize("name", sorted(SMOKE_ARGS))
def test_experiment_smoke(name, tmp_path):
    module = importlib.import_module(f"experiments.{name}")
    args = [a.replace("{tmp}", str(tmp_path)) for a in SMOKE_ARGS[name]]
    out = module.main([*args, "--results-dir", str(tmp_path)])
    assert {"results.md", "results.csv", "config.json"} <= {p.name for p in out.iterdir()}
    assert COLUMN.get(name, "test_accuracy") in (out / "results.md").read_text()


class _Trained(Exception):
    """Raised in place of training, to see what a script did before it trained."""


@pytest.mark.parametrize("name", sorted(SMOKE_ARGS))
def test_experiment_claims_its_folder_before_training_and_refuses_an_earlier_runs(
    name, tmp_path, monkeypatch
):
    from experiments import common
    from ppl_ssvae.errors import UserError
    from ppl_ssvae.training.loop import Trainer

    def train(*args, **kwargs):
        raise _Trained

    monkeypatch.setattr(Trainer, "fit", train)
    module = importlib.import_module(f"experiments.{name}")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in SMOKE_ARGS[name]]
    argv += ["--results-dir", str(tmp_path / "results")]
    with pytest.raises(_Trained):
        module.main(argv)
    (folder,) = (tmp_path / "results").iterdir()
    assert [p.name for p in folder.iterdir()] == [common.CLAIM_FILE]
    # A later process (nothing claimed yet) given the folder an earlier run filled.
    monkeypatch.setattr(common, "_CLAIMED", set())
    (folder / "results.md").write_text("an earlier run's table")
    with pytest.raises(UserError, match="already holds results of an earlier run"):
        module.main(argv)
    assert sorted(p.name for p in folder.iterdir()) == [common.CLAIM_FILE, "results.md"]
    assert (folder / "results.md").read_text() == "an earlier run's table"


def test_claim_refuses_a_link_and_a_folder_another_run_holds(tmp_path, monkeypatch):
    from experiments import common
    from ppl_ssvae.errors import UserError

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="is a link or a file"):
        common.claim_results("linked", tmp_path)
    assert not any((tmp_path / "elsewhere").iterdir())
    first = common.claim_results("taken", tmp_path)
    assert common.claim_results("taken", tmp_path) == first  # this process holds it
    # Another process, while the first has written nothing but its claim.
    monkeypatch.setattr(common, "_CLAIMED", set())
    with pytest.raises(UserError, match=r"already holds .*\.claimed"):
        common.claim_results("taken", tmp_path)


def test_report_runs_summarises_cli_runs(tmp_path):
    from experiments import report_runs
    from ppl_ssvae.cli import main as cli

    run = tmp_path / "r1"
    argv = ["train", "--dataset", "digits", "--labels", "50", "--z-dim", "4", "--hidden", "16",
            "--epochs", "2", "--batch-size", "100", "--no-progress", "--out", str(run)]  # fmt: skip
    assert cli(argv) == 0
    out = report_runs.main([str(run), "--name", "demo", "--results-dir", str(tmp_path / "res")])
    table = (out / "results.md").read_text()
    assert "--dataset digits --labels 50" in table and "--epochs 2" in table
    assert "--z-dim 4 --hidden 16" in table and "--binarize" in table
    assert (out / "curve.png").stat().st_size > 0 and (out / "r1.metrics.jsonl").exists()


def test_report_runs_command_line_rebuilds_the_run(tmp_path):
    """The command printed for a run, run again, trains the same model the same way
    (here a pi-VAE under bf16 with RMSprop's rho, which torch calls alpha)."""
    import shlex

    from experiments import report_runs
    from ppl_ssvae.cli import main as cli

    first = tmp_path / "first"
    argv = ["train", "--model", "pi-vae", "--dataset", "digits", "--labels", "50", "--z-dim",
            "2", "--hidden", "16", "--epochs", "1", "--batch-size", "100", "--rho", "0.8",
            "--precision", "bf16", "--no-progress", "--out", str(first)]  # fmt: skip
    assert cli(argv) == 0
    original = json.loads((first / "config.json").read_text())
    command = report_runs.command_line(original)
    assert "--precision bf16" in command and "--rho 0.8" in command
    again = tmp_path / "again"
    assert cli([*shlex.split(command)[1:], "--no-progress", "--out", str(again)]) == 0
    rebuilt = json.loads((again / "config.json").read_text())
    assert rebuilt["model"] == original["model"]
    assert rebuilt["fit"] == original["fit"] | {"device": rebuilt["fit"]["device"]}


def test_report_runs_command_replays_a_resumed_run(tmp_path):
    """A run resumed with a larger budget is printed as its first command and then the
    resume; replayed, the commands train the same epochs to the same losses."""
    import shlex

    from experiments import report_runs
    from ppl_ssvae.cli import main as cli

    run = tmp_path / "run"
    common = ["--dataset", "digits", "--labels", "50", "--z-dim", "4", "--hidden", "16",
              "--batch-size", "100", "--no-progress"]  # fmt: skip
    assert cli(["train", *common, "--epochs", "1", "--out", str(run)]) == 0
    assert cli(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())
    replay = tmp_path / "replay"
    commands = report_runs.command_line(config) + f" --out {replay}"
    commands += report_runs.resume_commands(config, replay)
    assert commands.count(" && ") == 1 and "--resume --epochs 2" in commands
    for command in commands.split(" && "):
        assert cli([*shlex.split(command)[1:], "--no-progress"]) == 0

    def losses(path):
        lines = (path / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["train_loss"] for line in lines]

    assert len(losses(run)) == 2 and losses(replay) == losses(run)


def test_report_runs_command_line_keeps_labels_0(tmp_path):
    """A clustering run's --labels 0 is printed: without it the command trains on every label."""
    from experiments import report_runs
    from ppl_ssvae.cli import main as cli

    run = tmp_path / "clusters"
    argv = ["train", "--model", "gmdgm", "--dataset", "digits", "--labels", "0", "--z-dim", "2",
            "--hidden", "16", "--epochs", "1", "--batch-size", "100", "--no-progress",
            "--out", str(run)]  # fmt: skip
    assert cli(argv) == 0
    command = report_runs.command_line(json.loads((run / "config.json").read_text()))
    assert "--labels 0 " in command and "--extra-classes" not in command


def test_report_runs_gives_clustering_runs_visible_and_hidden_columns(tmp_path):
    import csv

    from experiments import report_runs
    from ppl_ssvae.cli import main as cli

    common = ["train", "--dataset", "digits", "--z-dim", "4", "--hidden", "16", "--epochs", "1",
              "--batch-size", "100", "--no-progress"]  # fmt: skip
    clustered, plain = tmp_path / "clustered", tmp_path / "plain"
    assert cli([*common, "--model", "gmdgm", "--label-fraction", "0.2", "--hidden-classes",
                "0,1", "--extra-classes", "2", "--out", str(clustered)]) == 0  # fmt: skip
    assert cli([*common, "--labels", "50", "--out", str(plain)]) == 0
    argv = [str(clustered), str(plain), "--name", "su", "--results-dir", str(tmp_path / "res")]
    out = report_runs.main(argv)

    rows = {r["run"]: r for r in csv.DictReader((out / "results.csv").open())}
    columns = list(rows["clustered"])
    assert columns.index("test_accuracy") + 1 == columns.index("cluster_mapping")
    history = [json.loads(line) for line in (clustered / "metrics.jsonl").open()]
    best = max(history, key=lambda h: h["val_accuracy"])
    assert rows["clustered"]["cluster_mapping"] == best["cluster_mapping"] == "majority"
    assert float(rows["clustered"]["test_accuracy_hidden"]) == best["test_accuracy_hidden"]
    assert rows["plain"]["test_accuracy_visible"] == rows["plain"]["cluster_mapping"] == ""
    assert (out / "clustered.confusion_matrix.csv").exists()
    assert (out / "clustered.unit_activity.json").exists()
    assert not (out / "plain.confusion_matrix.csv").exists()
    assert (out / "curve_hidden.png").stat().st_size > 0


def test_pi_vae_epoch_overrides_replace_the_budget(tmp_path):
    import csv

    from experiments import pi_vae_fashion_mnist

    smoke = [a for a in SMOKE_ARGS["pi_vae_fashion_mnist"] if a != "--matched-steps"]
    argv = [*smoke, "--ss-epochs", "2", "--es-epochs", "3"]
    out = pi_vae_fashion_mnist.main([*argv, "--seeds", "0,1", "--results-dir", str(tmp_path)])
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["model"], r["seed"], r["epochs"]) for r in rows] == [
        ("SS-dense", "0", "2"), ("ES-dense", "0", "3"), ("SS-dense", "1", "2"), ("ES-dense", "1", "3")
    ]  # fmt: skip
    summary = {r["model"]: r for r in csv.DictReader((out / "summary.csv").open())}
    ss = [float(r["test_accuracy"]) for r in rows if r["model"] == "SS-dense"]
    assert float(summary["SS-dense"]["test_accuracy_mean"]) == pytest.approx(sum(ss) / 2)
    assert "Mean and standard deviation" in (out / "results.md").read_text()


def test_pi_vae_matched_steps_give_es_as_many_steps_as_ss(tmp_path):
    import csv

    from experiments import pi_vae_fashion_mnist

    argv = [*SMOKE_ARGS["pi_vae_fashion_mnist"], "--ss-epochs", "3", "--batch-size", "50"]
    out = pi_vae_fashion_mnist.main([*argv, "--results-dir", str(tmp_path)])
    rows = {r["model"]: r for r in csv.DictReader((out / "results.csv").open())}
    steps = {model: int(r["steps"]) for model, r in rows.items()}
    epochs = {model: int(r["epochs"]) for model, r in rows.items()}
    assert epochs["ES-dense"] == epochs["SS-dense"] == 3  # evaluated at the same steps
    # An ES epoch is enough copies of the 100 labelled digits for an SS epoch's steps: equal,
    # or one more where the copies' rows round up (2 ES steps a copy, batches of 50).
    per_epoch = {model: n // 3 for model, n in steps.items()}
    assert per_epoch["SS-dense"] <= per_epoch["ES-dense"] < per_epoch["SS-dense"] + 2
    assert per_epoch["SS-dense"] > 6  # 1:1 batches of 25 unlabelled rows
    copies = int(rows["ES-dense"]["es_copies"])
    assert (copies - 1) * 100 < per_epoch["SS-dense"] * 50 <= copies * 100
    with pytest.raises(SystemExit):
        pi_vae_fashion_mnist.main([*argv, "--es-epochs", "2", "--results-dir", str(tmp_path)])


def test_pi_vae_merge_equals_running_the_seeds_together(tmp_path):
    """Seeds run as separate processes and merged give the table and mean of one run over
    both seeds; a missing folder is named."""
    import csv

    from experiments import pi_vae_fashion_mnist
    from ppl_ssvae.errors import UserError

    argv = [*SMOKE_ARGS["pi_vae_fashion_mnist"], "--results-dir", str(tmp_path)]
    both = pi_vae_fashion_mnist.main([*argv, "--seeds", "0,1", "--name", "both"])
    one = [pi_vae_fashion_mnist.main([*argv, "--seeds", s, "--name", f"s{s}"]) for s in "01"]
    merged = pi_vae_fashion_mnist.main([*argv, "--merge", *map(str, one), "--name", "merged"])
    read = lambda out, f: list(csv.DictReader((out / f).open()))  # noqa: E731
    skip = {"cpu_minutes"}  # the one column a rerun does not repeat
    same = lambda rows: [{k: v for k, v in r.items() if k not in skip} for r in rows]  # noqa: E731
    assert same(read(merged, "results.csv")) == same(read(both, "results.csv"))
    columns = ("model", "alpha", "runs", "test_accuracy_mean", "test_accuracy_sd")
    summaries = [
        [{k: r[k] for k in columns} for r in read(out, "summary.csv")] for out in (merged, both)
    ]
    assert summaries[0] == summaries[1] and summaries[0][0]["runs"] == "2"
    assert (merged / "generation.png").read_bytes() == (one[0] / "generation.png").read_bytes()
    with pytest.raises(UserError, match="not found"):
        pi_vae_fashion_mnist.main([*argv, "--merge", str(tmp_path / "nowhere")])


def test_latent_epoch_overrides_replace_the_budget(tmp_path):
    import csv

    from experiments import latent_fashion_mnist

    argv = [*SMOKE_ARGS["latent_fashion_mnist"], "--epochs", "2", "--baseline-epochs", "3"]
    out = latent_fashion_mnist.main([*argv, "--results-dir", str(tmp_path)])
    epochs = {r["model"]: r["epochs"] for r in csv.DictReader((out / "results.csv").open())}
    assert epochs == {"M2": "2", "latent": "2", "latent-simplified": "2", "labelled-only": "3"}


def test_latent_models_runs_only_the_rows_asked_for_into_a_folder_named_after_them(
    tmp_path, capsys
):
    import csv

    from experiments import latent_fashion_mnist

    argv = [*SMOKE_ARGS["latent_fashion_mnist"], "--results-dir", str(tmp_path)]
    out = latent_fashion_mnist.main([*argv, "--models", "labelled-only", "--baseline-epochs", "2"])
    assert out.name == "latent_digits_labelled-only"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["model"], r["epochs"]) for r in rows] == [("labelled-only", "2")]
    with pytest.raises(SystemExit) as exit_:
        latent_fashion_mnist.main([*argv, "--models", "latent,m3"])
    assert exit_.value.code == 2
    assert "unknown models ['m3']; choose from M2, latent" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latent_digits_labelled-only"]


def test_mean_and_sd_groups_runs_by_a_column():
    from experiments.common import mean_and_sd

    rows = [{"model": "a", "acc": 0.7}, {"model": "b", "acc": 0.5}, {"model": "a", "acc": 0.9}]
    summary = mean_and_sd(rows, "model", ["acc"])
    assert [s["model"] for s in summary] == ["a", "b"] and summary[0]["runs"] == 2
    assert summary[0]["acc_mean"] == pytest.approx(0.8)
    assert summary[0]["acc_sd"] == pytest.approx(0.1414213562)  # sample sd of 0.7, 0.9
    assert summary[1]["acc_sd"] == 0.0


def test_pi_vae_without_validation_reports_the_last_epoch(tmp_path):
    import csv
    import math

    from experiments import pi_vae_fashion_mnist

    argv = [*SMOKE_ARGS["pi_vae_fashion_mnist"], "--ss-epochs", "2", "--validation-size", "0"]
    out = pi_vae_fashion_mnist.main([*argv, "--results-dir", str(tmp_path)])
    rows = {r["model"]: r for r in csv.DictReader((out / "results.csv").open())}
    ss = rows["SS-dense"]
    assert ss["best_epoch"] == "2" and math.isnan(float(ss["val_accuracy"]))
    assert ss["test_accuracy"] == ss["last_test_accuracy"]


def test_mean_and_sd_groups_runs_by_several_columns():
    from experiments.common import mean_and_sd

    rows = [
        {"c": 0, "f": 0.5, "auc": 0.6},
        {"c": 0, "f": 1.0, "auc": 0.9},
        {"c": 0, "f": 0.5, "auc": 0.8},
    ]
    summary = mean_and_sd(rows, ("c", "f"), ["auc"])
    assert [(s["c"], s["f"], s["runs"]) for s in summary] == [(0, 0.5, 2), (0, 1.0, 1)]
    assert summary[0]["auc_mean"] == pytest.approx(0.7)


def test_pi_vae_anomaly_merges_seeds_and_compares_mean_aucs(tmp_path):
    import csv

    from experiments import pi_vae_anomaly

    argv = [*SMOKE_ARGS["pi_vae_anomaly"], "--results-dir", str(tmp_path)]
    both = pi_vae_anomaly.main([*argv, "--seeds", "0,1", "--name", "both"])
    one = [pi_vae_anomaly.main([*argv, "--seeds", s, "--name", f"s{s}"]) for s in "01"]
    merged = pi_vae_anomaly.main([*argv, "--merge", *map(str, one), "--name", "merged"])
    read = lambda out, f: list(csv.DictReader((out / f).open()))  # noqa: E731
    rows = read(both, "results.csv")
    assert [r["seed"] for r in rows] == ["0", "1"]
    # A seed is the whole run: the same seed alone gives the same AUCs.
    assert [r["auc_ss"] for r in read(merged, "results.csv")] == [r["auc_ss"] for r in rows]
    (summary,) = read(merged, "summary.csv")
    mean_ss = sum(float(r["auc_ss"]) for r in rows) / 2
    mean_eu = sum(float(r["auc_eu"]) for r in rows) / 2
    assert float(summary["auc_ss_mean"]) == pytest.approx(mean_ss)
    assert summary["runs"] == "2" and summary["ss_at_least_eu"] == str(mean_ss >= mean_eu)


def test_pi_vae_anomaly_merge_names_a_missing_folder(tmp_path):
    from experiments import pi_vae_anomaly
    from ppl_ssvae.errors import UserError

    with pytest.raises(UserError, match="not found"):
        pi_vae_anomaly.main(["--merge", str(tmp_path / "nowhere"), "--results-dir", str(tmp_path)])


def test_pi_vae_anomaly_checks_every_class_before_training(tmp_path, monkeypatch):
    from experiments import pi_vae_anomaly
    from ppl_ssvae.errors import UserError

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the bad class id was caught")

    monkeypatch.setattr(pi_vae_anomaly, "train_and_score", no_training)
    argv = ["--budget", "smoke", "--dataset", "digits", "--results-dir", str(tmp_path)]
    with pytest.raises(UserError, match="out of range"):
        pi_vae_anomaly.main([*argv, "--classes", "3,99"])


def test_pi_vae_anomaly_scores_sequences_with_the_recurrent_net(tmp_path, monkeypatch):
    """Table 11's setting on the synthetic stand-in: the RNN pi-VAE with a Gaussian
    likelihood and App. A.3's lr, SS and EU each scored."""
    from experiments import pi_vae_anomaly
    from experiments.common import read_results

    built = []
    build = pi_vae_anomaly.build_seeded
    monkeypatch.setattr(
        pi_vae_anomaly, "build_seeded", lambda *a, **k: built.append(k) or build(*a, **k)
    )
    argv = ["--budget", "smoke", "--dataset", "sequences", "--net", "rnn", "--classes", "3",
            "--steps", "4", "--samples", "2", "--results-dir", str(tmp_path)]  # fmt: skip
    out = pi_vae_anomaly.main(argv)
    (row,) = read_results(out)
    assert 0.0 <= float(row["auc_ss"]) <= 1.0 and 0.0 <= float(row["auc_eu"]) <= 1.0
    assert [(k["variant"], k["net"], k["likelihood"], k["sequence_channels"]) for k in built] == [
        ("eu", "rnn", "gaussian", 4), ("ss", "rnn", "gaussian", 4)]  # fmt: skip
    assert pi_vae_anomaly.fit_arguments("rnn")["lr"] == 1e-3


@pytest.mark.parametrize(("dataset", "net"), [("digits", "rnn"), ("sequences", "cnn")])
def test_pi_vae_anomaly_refuses_a_net_of_the_other_kind_before_writing(
    tmp_path, capsys, dataset, net
):
    from experiments import pi_vae_anomaly

    argv = ["--budget", "smoke", "--dataset", dataset, "--net", net, "--results-dir", str(tmp_path)]
    with pytest.raises(SystemExit) as stop:
        pi_vae_anomaly.main(argv)
    assert stop.value.code == 2 and f"--net {net} needs" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_semi_unsupervised_script_passes_precision_to_every_run(tmp_path):
    from experiments import semi_unsupervised_fashion_mnist

    argv = [*SMOKE_ARGS["semi_unsupervised_fashion_mnist"], "--precision", "bf16",
            "--name", "su_bf16", "--results-dir", str(tmp_path / "res")]  # fmt: skip
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    out = semi_unsupervised_fashion_mnist.main(argv)
    assert out.name == "su_bf16"
    configs = sorted(out.glob("*.config.json"))
    assert len(configs) == 4  # gmdgm and m2, semi-unsupervised and unsupervised
    assert {json.loads(p.read_text())["fit"]["precision"] for p in configs} == {"bf16"}
    assert (out / "results.md").read_text().count("--precision bf16") == 4


def test_guides_comparison_reads_finished_runs_scores_back(tmp_path, monkeypatch):
    """Scoring a finished run again reuses its saved IWAE (the costly part at K = 5000);
    another K, or other checkpoint bytes, computes it afresh."""
    module = importlib.import_module("experiments.guides_fashion_mnist")
    args = ["--budget", "smoke", "--dataset", "digits", "--settings", "m2-3000", "--guides",
            "gaussian", "--z-dim", "3", "--hidden", "16", "--labels", "100", "--iwae-rows",
            "20", "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path)]  # fmt: skip
    first = (module.main(args) / "results.csv").read_text()
    calls = []
    report = module.likelihood_report
    monkeypatch.setattr(
        module, "likelihood_report", lambda *a, **k: calls.append(a) or report(*a, **k)
    )
    assert (module.main(args) / "results.csv").read_text() == first
    assert calls == []
    module.main([*args, "--iwae", "7"])
    assert len(calls) == 1 and calls[0][2] == 7
    saved = tmp_path / "runs" / "m2-3000-gaussian" / "scores-k5-rows20.json"
    stale = json.loads(saved.read_text())
    stale["key"]["best"] = "0" * 64  # scores of other checkpoint bytes
    saved.write_text(json.dumps(stale))
    again = (module.main(args) / "results.csv").read_text()
    assert len(calls) == 2 and calls[1][2] == 5
    # The same numbers computed afresh (a seeded ELBO and IWAE), in another CPU time.
    assert _without(again, "iwae_cpu_seconds") == _without(first, "iwae_cpu_seconds")


def test_guides_comparison_rebuilds_a_finished_run_from_its_own_config(tmp_path):
    """A run already in the runs directory is scored as it trained, not as today's options
    (or defaults) would build it: here the second call no longer passes the small sizes."""
    module = importlib.import_module("experiments.guides_fashion_mnist")
    common = ["--budget", "smoke", "--dataset", "digits", "--settings", "m2-3000", "--guides",
              "maf", "--labels", "100", "--iwae-rows", "20", "--runs-dir", str(tmp_path / "runs"),
              "--results-dir", str(tmp_path)]  # fmt: skip
    first = (module.main([*common, "--z-dim", "3", "--hidden", "16"]) / "results.csv").read_text()
    again = (module.main(common) / "results.csv").read_text()
    assert _without(again, "iwae_cpu_seconds") == _without(first, "iwae_cpu_seconds")


def _without(csv_text: str, column: str) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert rows and all(column in row for row in rows)
    return [{k: v for k, v in row.items() if k != column} for row in rows]


def test_sklearn_comparison_runs_our_chosen_model_and_batches(tmp_path):
    from experiments import sklearn_comparison

    out = sklearn_comparison.main(["--budget", "smoke", "--dataset", "digits", "--labels", "100",
                                   "--model", "latent", "--labelled-share", "1:1", "--model-arg",
                                   "z_dim=3", "--model-arg", "hidden=[16]", "--name", "latent",
                                   "--results-dir", str(tmp_path)])  # fmt: skip
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert out.name == "latent" and "ssvae_latent" in {r["method"] for r in rows}
    config = json.loads((out / "config.json").read_text())
    assert config["args"]["labelled_share"] == "1:1" and config["args"]["model"] == "latent"


@pytest.mark.parametrize(
    ("script", "bad", "message"),
    [
        ("sklearn_comparison", ["--model", "nope"], "--model 'nope' unknown; choose from m2"),
        (
            "sklearn_comparison",
            ["--labelled-share", "2"],
            "argument --labelled-share: labelled share 2.0 must be in [0, 1)",
        ),
        ("sklearn_comparison", ["--model-arg", "zz=1"], "unknown M2Config fields ['zz']"),
        ("guides_fashion_mnist", ["--guides", "nope"], "unknown guides ['nope']; choose from"),
    ],
)
def test_bad_script_input_is_one_line_and_exit_2_before_writing(tmp_path, script, bad, message):
    import subprocess
    import sys

    argv = [sys.executable, "-m", f"experiments.{script}", "--dataset", "digits",
            "--results-dir", str(tmp_path / "results"), *bad]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          cwd=EXPERIMENTS.parent)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith(f"{script}.py: error: {message}")
    assert done.stderr.count("\n") == 1
    assert not (tmp_path / "results").exists()


def _comparison_folder(path, rows):
    from experiments.common import write_results

    keys = ("method", "labels", "seed", "val_accuracy", "test_accuracy", "cpu_seconds")
    return write_results(path.name, [dict(zip(keys, r, strict=True)) for r in rows], {},
                         path.parent)  # fmt: skip


def test_sklearn_merge_selects_ours_by_validation_per_label_count_and_seed(tmp_path):
    from experiments import sklearn_comparison

    base = [("self_training_mlp", 100, 0, 0.70, 0.69, 30.0), ("self_training_mlp", 100, 1, 0.7, 0.68, 31.0)]  # fmt: skip
    m2 = _comparison_folder(tmp_path / "m2", [*base, ("ssvae_m2", 100, 0, 0.73, 0.72, 900.0),
                                              ("ssvae_m2", 100, 1, 0.60, 0.61, 800.0)])  # fmt: skip
    latent = _comparison_folder(tmp_path / "lat", [*base, ("ssvae_latent", 100, 0, 0.72, 0.75, 400.0),
                                                   ("ssvae_latent", 100, 1, 0.71, 0.70, 300.0)])  # fmt: skip
    out = sklearn_comparison.main(["--merge", str(m2), str(latent), "--name", "both",
                                   "--results-dir", str(tmp_path / "res")])  # fmt: skip
    rows = list(csv.DictReader(io.StringIO((out / "results.csv").read_text())))
    assert [r["method"] for r in rows].count("self_training_mlp") == 2  # each baseline once
    selected = {int(r["seed"]): r for r in rows if r["method"] == "ssvae_selected"}
    # Validation, not test accuracy, chooses: seed 0 keeps M2 (0.73 > 0.72) at 0.72 test.
    assert (
        selected[0]["selected"] == "ssvae_m2 (m2)" and float(selected[0]["test_accuracy"]) == 0.72
    )
    assert (
        selected[1]["selected"] == "ssvae_latent (lat)"
        and float(selected[1]["test_accuracy"]) == 0.70
    )
    assert float(selected[0]["cpu_seconds"]) == 1300.0  # the selection pays for both

    other = _comparison_folder(tmp_path / "other", [("self_training_mlp", 100, 0, 0.70, 0.50, 1.0)])
    with pytest.raises(ValueError, match="differs between folders"):
        sklearn_comparison.merged([m2, other])


@pytest.mark.parametrize("name", ["m2", "latent", "latent-simplified"])
def test_a_model_from_a_vae_is_the_vae_once_its_y_paths_are_zero(name):
    """The pretrained-VAE experiment copies every VAE weight to its place in the model
    (Jurasinski sec 3.2 for M2, sec 5.2 for the latent models): with the y-embeddings
    zeroed, q(z|x[, y]) and p(x|[y,] z) are the VAE's for every y."""
    import torch

    from experiments.common import build_seeded
    from experiments.m2_pretrained_vae import copy_vae_weights

    sizes = {
        "input_dim": 12,
        "num_classes": 3,
        "z_dim": 2,
        "hidden": (8,),
        "activation": "softplus",
    }
    vae, model = build_seeded("m1", 0, **sizes), build_seeded(name, 1, **sizes)
    assert copy_vae_weights(vae, model) == 10  # encoder 2 + loc 2 + scale 2, decoder 2 + head 2
    with torch.no_grad():
        for module in (model.q.q_z.trunk, model.p_x.trunk):
            if getattr(module, "y_layer", None) is not None:
                module.y_layer.weight.zero_()
    x, z = torch.rand(5, 12), torch.randn(5, 2)
    for label in range(3):
        y = torch.full((5,), label)
        q = model.q.q_z(x=x, y=y) if name == "m2" else model.q.q_z(x=x)
        p = model.p_x(z) if name == "latent-simplified" else model.p_x(z, y)
        torch.testing.assert_close(q.mean, vae.q.q_z(x=x).mean)
        torch.testing.assert_close(p.mean, vae.p_x(z).mean)


def test_factor_heads_label_the_same_rows_with_each_factor(tmp_path):
    """Table 12 as published: a pi head per further factor, on Table 16's network; the
    factor labels are the dataset's for exactly the rows whose main label is kept."""
    import torch

    from experiments import pi_vae_disentanglement as dis
    from ppl_ssvae import data
    from ppl_ssvae.data.shapes import load_shapes

    shapes = load_shapes(label="shape")
    split = data.semi_supervised_split(shapes, labels=30, seed=0, validation_size=0)
    y = dis.with_factor_heads(split, shapes, ["scale", "rotation"]).y_train
    factors = torch.as_tensor(shapes.extra["factors_train"][:, [1, 2]]).long()
    kept = split.y_train >= 0
    assert y.shape == (len(split.y_train), 3) and int(kept.sum()) == 30
    assert torch.equal(y[kept, 1:], factors[kept]) and bool((y[~kept] == -1).all())
    argv = ["--budget", "smoke", "--labels", "30", "--factor-heads", "scale", "--net", "norb-cnn"]
    out = dis.main([*argv, "--results-dir", str(tmp_path)])
    assert "beta_vae_score" in (out / "results.md").read_text()


def _active_folder(path, seed, accuracies, **settings):
    """A results folder as experiments.active_labelling writes it, by hand."""
    path.mkdir(parents=True)
    rows = [
        {"method": "active gmm", "iteration": i, "queries_total": 10 * i,
         "labelled_rows": 7, "propagated_label_accuracy": "nan" if i == 0 else 0.5,
         "test_accuracy": a}
        for i, a in enumerate(accuracies)
    ]  # fmt: skip
    text = io.StringIO()
    writer = csv.DictWriter(text, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    (path / "results.csv").write_text(text.getvalue())
    active = {"dataset": "digits", "seed": seed, "gamma": 10.0, **settings}
    (path / "config.json").write_text(json.dumps({"active": active, "cpu_seconds": 1.0}))
    return path


def test_active_merge_gives_mean_and_sd_over_seeds_and_refuses_other_settings(tmp_path):
    """``--merge`` joins one configuration's seeds: per method and iteration the mean and
    the sample sd of the seeds' accuracies; other settings or a repeated seed are refused."""
    from experiments import active_labelling

    a = _active_folder(tmp_path / "a", 0, [0.1, 0.5])
    b = _active_folder(tmp_path / "b", 1, [0.2, 0.8])
    out = active_labelling.main(["--merge", str(a), str(b), "--results-dir", str(tmp_path)])
    assert out.name == "active_labelling_digits_seeds" and (out / "curve.png").is_file()
    summary = list(csv.DictReader((out / "summary.csv").open()))
    assert [int(r["runs"]) for r in summary] == [2, 2]
    assert float(summary[1]["test_accuracy_mean"]) == pytest.approx(0.65)
    assert float(summary[1]["test_accuracy_sd"]) == pytest.approx(0.3 / 2**0.5)
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["seed"] for r in rows] == ["0", "0", "1", "1"]

    other = _active_folder(tmp_path / "c", 2, [0.1, 0.5], gamma=1.0)
    with pytest.raises(ValueError, match="differs from .* in gamma"):
        active_labelling.merge_seeds([a, other], tmp_path)
    again = _active_folder(tmp_path / "d", 0, [0.1, 0.5])
    with pytest.raises(ValueError, match="seed 0 is in both"):
        active_labelling.merge_seeds([a, again], tmp_path)

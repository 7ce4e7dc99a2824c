"""Sweep files: the search space round trip (file -> spec -> file, spec -> Optuna -> values)
and the refusals of bad sweeps, in one line and before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ppl_ssvae.cli import main
from ppl_ssvae.errors import UserError
from ppl_ssvae.runs import read_spec_file
from ppl_ssvae.sweeps import SweepSpec
from ppl_ssvae.sweeps.params import run_name, setting_paths

from .conftest import BASE, write_sweep

ROOT = Path(__file__).resolve().parents[2]

optuna = pytest.importorskip("optuna")

SEARCH = """\
[sweep]
objective = "elbo"
pruner = "median"
pruner_args = { n_startup_trials = 2, n_warmup_steps = 1 }
n_trials = 7
seed = 3

[sweep.settings]
lr = { log_uniform = [1e-4, 3e-3] }
z_dim = { int = [2, 8] }
lr_decay = { uniform = [0.8, 1.0] }
hidden = [[32], [16, 16]]
guide = { choice = ["gaussian", "maf"] }
"model.guide_args.transforms" = [1, 2]
seed = [0, 1]
"""


def _spec(tmp_path, sweep: str, base: str = BASE) -> SweepSpec:
    return SweepSpec.from_dict(read_spec_file(write_sweep(tmp_path, sweep, base)))


def test_a_search_space_round_trips_through_its_file_and_optuna(tmp_path):
    spec = _spec(tmp_path, SEARCH)
    assert spec.sampler == "tpe" and spec.direction == "maximize" and spec.metric == "elbo"
    assert [p.path for p in spec.params] == [
        "fit.lr", "model.options.z_dim", "fit.lr_decay", "model.options.hidden", "model.guide",
        "model.guide_args.transforms", "fit.seed",
    ]  # fmt: skip
    (tmp_path / "again.toml").write_text(spec.to_toml())
    again = SweepSpec.from_dict(read_spec_file(tmp_path / "again.toml"))
    assert again.to_dict() == spec.to_dict() == SweepSpec.from_dict(spec.to_dict()).to_dict()
    # Optuna draws every setting in its range and hands back the file's values.
    study = optuna.create_study(sampler=spec.make_sampler(), direction=spec.direction)
    drawn = [{p.path: p.suggest(study.ask()) for p in spec.params} for _ in range(12)]
    for values in drawn:
        assert 1e-4 <= values["fit.lr"] <= 3e-3 and values["model.options.z_dim"] in range(2, 9)
        assert values["model.options.hidden"] in ([32], [16, 16])
        assert values["model.guide"] in ("gaussian", "maf") and values["fit.seed"] in (0, 1)
    assert len({json.dumps(v, sort_keys=True) for v in drawn}) > 1
    # A trial's spec is the base with the drawn values, and the callback that reports.
    params = {p: v for p, v in zip(spec.params, drawn[0].values(), strict=True)}
    run = spec.trial_spec(params)
    assert (
        run.fit.lr == drawn[0]["fit.lr"]
        and run.model.options["hidden"] == drawn[0]["model.options.hidden"]
    )
    assert run.callbacks[-1].name == "sweep_trial" and run.callbacks[-1].args == {"monitor": "elbo"}
    assert run_name(params, 7).startswith("0007_lr-")


def test_a_grid_is_every_combination_in_the_files_order(tmp_path):
    spec = _spec(tmp_path, "[sweep.settings]\nlabels = [50, 100]\nseed = [0, 1, 2]\nlr = [0.001]\n")
    assert spec.sampler == "grid" and spec.grid_size() == 6 and spec.n_trials is None
    names = [run_name(point) for point in spec.grid()]
    assert names[:2] == ["labels-50_seed-0_lr-0.001", "labels-50_seed-1_lr-0.001"]
    assert len(set(names)) == 6


def test_every_train_option_is_a_setting_name():
    """The names are generated from the spec's fields as the train command's options are,
    so every option of `ppl-ssvae train` that sets one field can be swept by its name."""
    from ppl_ssvae.cli import build_parser
    from ppl_ssvae.training.optim import OPTIMIZER_OPTIONS

    train = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    paths = setting_paths()
    appended = {"model.guide_arg", "model.model_arg", "fit.optimizer_arg", "fit.scheduler_arg"}
    options = [a for a in train._actions if "." in a.dest and a.dest not in appended]
    assert len(options) > 40
    for action in options:
        name = action.option_strings[0].removeprefix("--no-").removeprefix("--").replace("-", "_")
        if name == "progress":
            continue
        torch_name = OPTIMIZER_OPTIONS.get(name)
        assert paths[name] == (f"fit.optimizer_args.{torch_name}" if torch_name else action.dest)


BAD = [
    ("[sweep.settings]\nlearning_rate = [0.1]\n", "unknown setting 'learning_rate'"),
    ("[sweep.settings]\nz_dimm = [2]\n", "did you mean z_dim"),
    ("[sweep.settings]\nseed = []\n", "empty grid"),
    ("[sweep.settings]\nseed = [0, 0]\n", "more than once"),
    ("[sweep]\nn_trials = 2\n[sweep.settings]\nlr = { log_uniform = [1e-2, 1e-3] }\n", "is empty"),
    ("[sweep]\nn_trials = 2\n[sweep.settings]\nlr = { log_uniform = [0, 1] }\n", "needs low > 0"),
    ("[sweep]\nn_trials = 2\n[sweep.settings]\nz_dim = { int = [1.5, 4] }\n", "integers"),
    ("[sweep]\nn_trials = 2\n[sweep.settings]\nlr = { normal = [0, 1] }\n", "must be a list"),
    ("[sweep.settings]\nlr = { uniform = [0.1, 0.2] }\n", "needs n_trials"),
    ("[sweep]\nsampler = \"grid\"\n[sweep.settings]\nlr = { uniform = [0.1, 0.2] }\n",
     "grid sampler takes lists only"),  # fmt: skip
    ("[sweep]\nn_trials = 3\n[sweep.settings]\nseed = [0]\n", "n_trials is for a search"),
    ("[sweep]\nobjective = \"accuracy\"\n[sweep.settings]\nseed = [0]\n", "unknown objective"),
    ("[sweep]\npruner = \"median\"\npruner_args = { patience = 2 }\n[sweep.settings]\nseed = [0]\n",
     "takes no ['patience']"),  # fmt: skip
    ("[sweep]\ntrials = 3\n[sweep.settings]\nseed = [0]\n", "unknown [sweep] keys ['trials']"),
    ("[sweep.settings]\nlr = [0.1, -1]\n", "lr=-1 must be a finite number > 0"),
    ("[sweep.settings]\n\"model.options.z_dimm\" = [2]\n", "unknown setting"),
    ("[sweep.settings]\nlr = [0.1]\n\"fit.lr\" = [0.2]\n", "name the same run spec field"),
    ("[sweep.settings]\nbeta = [1.0]\n", "model 'm2' has no settings ['beta']"),
    ("[sweep.settings]\nmodel = [\"m3\"]\n", "unknown model 'm3'"),
    ("[sweep.settings]\ndataset = [\"digits\", \"imagenet\"]\n", "unknown dataset 'imagenet'"),
    ("", "needs a [sweep] section"),
]  # fmt: skip


@pytest.mark.parametrize("sweep, message", BAD, ids=[m for _, m in BAD])
def test_bad_sweep_specs_are_refused_in_one_line(tmp_path, sweep, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")):
        _spec(tmp_path, sweep)


def test_a_bad_base_run_is_refused_like_train_refuses_it(tmp_path):
    with pytest.raises(UserError, match=r"unknown settings \['epoch'\] in \[fit\]"):
        _spec(tmp_path, "[sweep.settings]\nseed = [0]\n", base="fit = { epoch = 3 }\n")


@pytest.mark.parametrize(
    "sweep, extra, message",
    [
        ("[sweep.settings]\nseed = []\n", [], "empty grid"),
        ("[sweep.settings]\nseed = [0]\n", ["--storage", "not a url"], "is not a database URL"),
        (
            "[sweep.settings]\nseed = [0]\n",
            ["--storage", "postgresql://nobody@127.0.0.1:1/none"],
            "postgresql://nobody@127.0.0.1:1/none",
        ),
    ],
)
def test_the_command_refuses_bad_sweeps_before_writing_anything(
    tmp_path, capsys, sweep, extra, message
):
    file = write_sweep(tmp_path, sweep)
    out = tmp_path / "sweep"
    assert main(["sweep", "--config", str(file), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_a_sweep_directory_is_never_reused_for_another_sweep(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    first = write_sweep(tmp_path, "[sweep.settings]\nseed = [0]\n", name="a.toml")
    assert main(["sweep", "--config", str(first), "--out", str(taken), "--dry-run"]) == 0
    assert main(["sweep", "--config", str(first), "--out", str(taken)]) == 2
    assert "holds no sweep" in capsys.readouterr().err
    assert sorted(p.name for p in taken.iterdir()) == ["notes.txt"]
    from ppl_ssvae.sweeps import create_sweep

    spec = SweepSpec.from_dict(read_spec_file(first))
    create_sweep(spec, tmp_path / "s")
    create_sweep(spec, tmp_path / "s")  # the same sweep again: taken up, not refused
    other = SweepSpec.from_dict(
        read_spec_file(write_sweep(tmp_path, "[sweep.settings]\nseed = [1]\n"))
    )
    with pytest.raises(UserError, match="holds another sweep"):
        create_sweep(other, tmp_path / "s")
    trials = optuna.load_study(study_name="s", storage=spec_storage(tmp_path / "s")).trials
    assert [t.state.name for t in trials] == ["WAITING"]  # the grid was queued once


ONLY_GRID = "[sweep.settings]\nseed = [0, 1]\nhidden = [[32], [16, 16]]\nlabels = [50, 100]\n"


def test_only_cuts_the_grid_to_a_row_and_the_sweep_records_the_cut(tmp_path, capsys):
    file = write_sweep(tmp_path, ONLY_GRID)
    argv = ["sweep", "--config", str(file), "--out", str(tmp_path / "s")]
    picked = ["--only", "hidden=[16, 16]", "--only", "labels=100", "--only", "labels=50"]
    assert main([*argv, *picked, "--dry-run"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0] == "a grid of 4 trials, each a run directory:"
    assert [n.strip() for n in listed[1:]] == [
        "seed-0_hidden-16-16_labels-50", "seed-0_hidden-16-16_labels-100",
        "seed-1_hidden-16-16_labels-50", "seed-1_hidden-16-16_labels-100",
    ]  # fmt: skip
    from ppl_ssvae.sweeps import create_sweep
    from ppl_ssvae.sweeps.storage import read_sweep_file

    cut = SweepSpec.from_dict(read_spec_file(file)).only(["labels=100"])
    create_sweep(cut, tmp_path / "s")
    assert read_sweep_file(tmp_path / "s").spec.to_dict() == cut.to_dict()
    trials = optuna.load_study(study_name="s", storage=spec_storage(tmp_path / "s")).trials
    assert sorted(t.system_attrs["fixed_params"]["labels"] for t in trials) == [100] * 4
    assert main([*argv, "--only", "labels=50"]) == 2  # another cut is another sweep
    assert "holds another sweep" in capsys.readouterr().err


@pytest.mark.parametrize(
    "only, message",
    [
        ("labels=75", "--only 'labels=75': labels lists 50, 100"),
        ("lr=0.1", "NAME a setting this sweep varies (seed, hidden, labels)"),
        ("labels", "give NAME=VALUE"),
    ],
)
def test_only_refuses_what_the_grid_does_not_hold_in_one_line(tmp_path, capsys, only, message):
    out = tmp_path / "s"
    argv = ["sweep", "--config", str(write_sweep(tmp_path, ONLY_GRID)), "--out", str(out)]
    assert main([*argv, "--only", only]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not out.exists()
    assert main(["sweep", "--worker", str(out), "--only", "labels=50"]) == 2
    assert "--only" in capsys.readouterr().err


def spec_storage(path):
    from ppl_ssvae.sweeps.storage import read_sweep_file

    return read_sweep_file(path).storage()


def test_the_docs_sweep_file_and_commands_are_valid(tmp_path, capsys):
    import re
    from pathlib import Path

    from ppl_ssvae.cli import build_parser

    page = (Path(__file__).resolve().parents[2] / "docs" / "sweeps.md").read_text()
    toml, shell = re.findall(r"```\w*\n(.*?)```", page.split("<!-- sweep-file -->", 1)[1], re.S)[:2]
    (tmp_path / "m2-labels.toml").write_text(toml)
    spec = SweepSpec.from_dict(read_spec_file(tmp_path / "m2-labels.toml"))
    assert spec.sampler == "grid" and spec.grid_size() == 9 and spec.base["fit"]["epochs"] == 30
    for line in shell.strip().splitlines():
        build_parser().parse_args(line.split()[1:])  # every option exists
    argv = ["sweep", "--config", str(tmp_path / "m2-labels.toml"), "--out", str(tmp_path / "s")]
    assert main([*argv, "--dry-run"]) == 0 and not (tmp_path / "s").exists()
    assert capsys.readouterr().out.splitlines()[1:4] == [
        "  labels-100_seed-0", "  labels-100_seed-1", "  labels-100_seed-2",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "sweep_file",
    sorted(p.relative_to(ROOT) for p in (ROOT / "results").rglob("*.toml")),
    ids=str,
)
def test_every_committed_sweep_file_is_valid(sweep_file, tmp_path, capsys):
    # The results' sweep files are how a table is rerun: a setting renamed in the library
    # must fail here, not weeks later on a cluster.
    out = tmp_path / "sweep"
    assert main(["sweep", "--config", str(ROOT / sweep_file), "--out", str(out), "--dry-run"]) == 0
    assert not out.exists()
    trials = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    comment = (ROOT / sweep_file).read_text().split("\n", 1)[0]
    assert trials and comment.startswith("# ")  # each file says which table it is

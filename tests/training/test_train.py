import json

import pyro
import pytest
import torch

from ppl_ssvae.data import load, semi_supervised_split
from ppl_ssvae.errors import NonFiniteLossError, UserError
from ppl_ssvae.evaluation.metrics import classification_report
from ppl_ssvae.models import build, from_config
from ppl_ssvae.runs import checkpoint
from ppl_ssvae.runs.directory import RunDir
from ppl_ssvae.training import fit


@pytest.fixture(scope="module")
def digits():
    return semi_supervised_split(load("digits"), labels=50, seed=0)


def _model(data):
    pyro.set_rng_seed(0)  # initial weights come from the global RNG
    return build("m2", input_dim=data.input_dim, num_classes=10, z_dim=4, hidden=(32,), alpha=5.0)


def _fit(model, data, **kw):
    kw = {
        "epochs": 2,
        "batch_size": 100,
        "labelled_share": 0.3,
        "lr": 1e-3,
        "progress": False,
        **kw,
    }
    return fit(model, data, **kw)


def test_training_changes_every_parameter_and_writes_run_files(digits, tmp_path):
    model = _model(digits)
    before = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    result = _fit(model, digits, out=tmp_path)
    after = model.state_dict()
    unchanged = [k for k, v in before.items() if k != "prior" and torch.equal(v, after[k])]
    assert unchanged == []
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in lines] == [1, 2]
    for key in ("epoch", "elbo", "val_accuracy", "test_accuracy", "epoch_seconds"):
        assert all(key in h for h in lines)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"]["model"] == "m2" and config["fit"]["seed"] == 0
    assert {"torch", "pyro", "git_commit"} <= set(config["environment"])
    assert result.best_epoch in (1, 2)


def test_resume_equals_uninterrupted_run(digits, tmp_path):
    straight = _model(digits)
    _fit(straight, digits, epochs=3, out=tmp_path / "a", lr_decay=0.5)
    interrupted = _model(digits)
    _fit(interrupted, digits, epochs=1, out=tmp_path / "b", lr_decay=0.5)
    resumed = _model(digits)  # a fresh process would start from a fresh model
    _fit(resumed, digits, epochs=3, out=tmp_path / "b", resume=True, lr_decay=0.5)
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    strip = lambda line: {k: v for k, v in json.loads(line).items() if "seconds" not in k}  # noqa: E731
    assert [strip(line) for line in a] == [strip(line) for line in b]


def test_non_finite_parameters_stop_before_a_checkpoint_could_hold_them(digits, tmp_path):
    """Weights that turn NaN in epoch 2 (here: poisoned by its evaluation) stop the run
    before epoch 2 is saved: checkpoint.pt stays epoch 1's, finite and verified."""
    model = _model(digits)
    calls = []

    def poisoning_evaluate(model, data):
        report = classification_report(model, data)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                model.p_x.head.logits.bias.fill_(float("nan"))
        return report

    pattern = r"parameters became non-finite at epoch 2.*last good checkpoint.*\(epoch 1\)"
    with pytest.raises(NonFiniteLossError, match=pattern):
        _fit(model, digits, epochs=3, out=tmp_path, evaluate=poisoning_evaluate)
    state = RunDir(tmp_path).load_checkpoint("checkpoint.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_exploding_weights_stop_with_a_message_naming_a_checkpoint_that_exists(digits, tmp_path):
    """lr 1e6 drives the weights to NaN within steps; Pyro's argument checks then raise a
    ValueError inside svi.step, which must still become the NonFiniteLossError, naming the
    checkpoint that is really on disk. (The divergence guard, off here, would stop it
    sooner, while the loss is still finite.)"""
    with pytest.raises(NonFiniteLossError, match=r"non-finite at epoch \d+, step \d+") as caught:
        _fit(_model(digits), digits, epochs=4, lr=1e6, out=tmp_path, divergence_factor=None)
    message = str(caught.value)
    if (tmp_path / "checkpoint.pt").exists():
        epoch = RunDir(tmp_path).load_checkpoint("checkpoint.pt")["epoch"]
        assert f"checkpoint.pt (epoch {epoch})" in message
    else:
        assert "no checkpoint was written" in message


def test_non_finite_weights_in_the_first_epoch_say_no_checkpoint_exists(digits, tmp_path):
    def poisoning_evaluate(model, data):
        with torch.no_grad():
            model.p_x.head.logits.bias.fill_(float("nan"))
        return classification_report(model, data)

    with pytest.raises(NonFiniteLossError, match=r"epoch 1, the end.*no checkpoint was written"):
        _fit(_model(digits), digits, epochs=2, out=tmp_path, evaluate=poisoning_evaluate)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_checkpoint_round_trip_with_weights_only(digits, tmp_path):
    model = _model(digits)
    _fit(model, digits, epochs=1, out=tmp_path)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert {"model", "optim", "rng", "epoch"} <= set(last)
    config = json.loads((tmp_path / "config.json").read_text())["model"]
    rebuilt = from_config(config)
    rebuilt.load_state_dict(best["model"])
    assert torch.equal(rebuilt.classify(digits.x_test), model.classify(digits.x_test))


def test_atomic_save_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save_atomic({"a": torch.ones(2)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        checkpoint.save_atomic({"a": Unpicklable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind


def test_atomic_text_write_replaces_or_keeps_the_old_file(tmp_path):
    path = tmp_path / "config.json"
    checkpoint.write_text_atomic(path, "old")
    checkpoint.write_text_atomic(path, "new")
    assert path.read_text() == "new"
    with pytest.raises(UnicodeEncodeError):
        checkpoint.write_text_atomic(path, "\ud800")  # a lone surrogate cannot be encoded
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_max_minutes_stops_after_the_epoch_that_passes_it(digits):
    result = _fit(_model(digits), digits, epochs=5, max_minutes=1e-9)
    assert len(result.history) == 1 and result.stopped == "max_minutes"


def test_max_cpu_minutes_never_starts_an_epoch_that_would_pass_it(digits, monkeypatch):
    # Every epoch costs 30 CPU-seconds on this clock: the first ends at 30 s, the third
    # at 90 s, and a fourth would end at 120 s > 96 s.
    clock = iter(range(0, 10_000, 30))
    monkeypatch.setattr("ppl_ssvae.training.loop.time.process_time", lambda: float(next(clock)))
    result = _fit(_model(digits), digits, epochs=10, max_cpu_minutes=1.6)
    assert [h["epoch_cpu_seconds"] for h in result.history] == [30.0] * 3
    assert result.stopped == "max_cpu_minutes"
    with pytest.raises(UserError, match="max_cpu_minutes"):
        _fit(_model(digits), digits, max_cpu_minutes=0)


def test_bad_inputs(digits, tmp_path):
    with pytest.raises(UserError, match="no CUDA device"):
        if torch.cuda.is_available():
            raise UserError("no CUDA device (skipped: CUDA present)")
        _fit(_model(digits), digits, device="cuda")
    with pytest.raises(UserError, match="no run in"):
        _fit(_model(digits), digits, out=tmp_path / "empty", resume=True)
    wrong = build("m2", input_dim=10, num_classes=10)
    with pytest.raises(UserError, match=r"expects \(N, 10\)"):
        _fit(wrong, digits)


def test_model_input_checks():
    model = build("m2", input_dim=4, num_classes=3)
    with pytest.raises(UserError, match="NaN"):
        model.classify(torch.tensor([[0.1, float("nan"), 0.2, 0.3]]))
    with pytest.raises(UserError, match=r"Bernoulli likelihood needs \[0, 1\]"):
        model.classify(torch.tensor([[0.1, 2.0, 0.2, 0.3]]))
    with pytest.raises(UserError, match=r"labels must be in -1..2"):
        model.model(torch.rand(2, 4), torch.tensor([0, 3]))
    with pytest.raises(UserError, match="integer class ids"):
        model.model(torch.rand(2, 4), torch.tensor([0.0, 1.0]))
    with pytest.raises(UserError, match="x has 2 rows"):
        model.model(torch.rand(2, 4), torch.tensor([0]))


def test_bf16_training_runs_autocast_steps_and_evaluates_in_float32(digits, tmp_path, monkeypatch):
    seen = []
    step = pyro.infer.SVI.step

    def spy(self, *args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return step(self, *args, **kwargs)

    evaluated_under_autocast = []

    def evaluate(model, data):
        evaluated_under_autocast.append(torch.is_autocast_enabled("cpu"))
        return classification_report(model, data)

    monkeypatch.setattr(pyro.infer.SVI, "step", spy)
    result = _fit(
        _model(digits), digits, epochs=2, precision="bf16", out=tmp_path, evaluate=evaluate
    )
    assert seen and set(seen) == {torch.bfloat16}
    assert evaluated_under_autocast == [False, False]  # evaluation runs in float32
    assert not torch.is_autocast_enabled("cpu")  # and so does the caller afterwards
    # The same split and seed in float32: bf16 rounding moves accuracy by a few points at most.
    exact = _fit(_model(digits), digits, epochs=2)
    assert abs(result.history[-1]["test_accuracy"] - exact.history[-1]["test_accuracy"]) < 0.1
    assert json.loads((tmp_path / "config.json").read_text())["fit"]["precision"] == "bf16"
    with pytest.raises(UserError, match="unknown precision 'fp16'"):
        _fit(_model(digits), digits, precision="fp16")


def test_fit_without_validation_or_test_rows_trains_and_keeps_the_last_epoch(tmp_path):
    dataset = load("digits")
    dataset.x_test, dataset.y_test = dataset.x_test[:0], dataset.y_test[:0]
    split = semi_supervised_split(dataset, labels=50, validation_size=0, seed=0)
    result = _fit(_model(split), split, epochs=2, out=tmp_path)
    assert [h["epoch"] for h in result.history] == [1, 2] and result.best_epoch == 2
    assert all(h["val_accuracy"] != h["val_accuracy"] for h in result.history)  # NaN
    assert RunDir(tmp_path).load_checkpoint("best.pt")["epoch"] == 2


def test_num_particles_and_objective_reach_the_elbo_and_the_config(digits, tmp_path, monkeypatch):
    built = []
    make_elbo = type(_model(digits)).make_elbo

    def spy(self, **kwargs):
        elbo = make_elbo(self, **kwargs)
        built.append(elbo)
        return elbo

    monkeypatch.setattr(type(_model(digits)), "make_elbo", spy)
    _fit(_model(digits), digits, epochs=1, num_particles=2, objective="trace", out=tmp_path)
    assert built[0].num_particles == 2 and type(built[0]).__name__.endswith("Trace_ELBO")
    fit_config = json.loads((tmp_path / "config.json").read_text())["fit"]
    assert fit_config["num_particles"] == 2 and fit_config["objective"] == "trace"
    with pytest.raises(UserError, match="num_particles=0"):
        _fit(_model(digits), digits, num_particles=0)


@pytest.mark.cuda
def test_cuda_training(digits):
    result = _fit(_model(digits), digits, epochs=1, device="cuda")
    assert result.history[0]["test_accuracy"] > 0


def test_environment_names_the_commit_and_whether_the_tree_had_edits():
    import subprocess

    from ppl_ssvae.training import environment

    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    env = environment()
    if head.returncode != 0:  # not a git checkout: nothing to record
        assert env["git_commit"] is None and env["git_dirty"] is None
    else:
        assert env["git_commit"] == head.stdout.strip() and isinstance(env["git_dirty"], bool)


def test_git_state_lists_the_tracked_files_with_edits(tmp_path):
    """A run records which tracked files had edits, so that an edited README can be told
    from edited code; untracked files are not edits of the commit."""
    import subprocess

    from ppl_ssvae.training.devices import git_state

    assert git_state(tmp_path) == (None, None)  # not a git checkout
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    for name in ("model.py", "README.md"):
        (tmp_path / name).write_text("a\n")
    subprocess.run([*git, "add", "."], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=tmp_path, check=True)
    commit, edited = git_state(tmp_path)
    assert len(commit) == 40 and edited == []
    (tmp_path / "README.md").write_text("b\n")
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert git_state(tmp_path) == (commit, ["README.md"])

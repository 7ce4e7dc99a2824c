"""Bad input to the scripts, to the CLI's late checks and to the Python API (issue 26,
sections 3-4): one line and exit code 2 (a ``UserError`` from Python), no traceback, and
nothing written or changed.

The script and CLI cases run in one subprocess (``DRIVER``), each as its command runs
(``runpy`` with ``sys.argv`` and ``__main__``): one interpreter start instead of ~70."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ppl_ssvae import SSVAEClassifier, SSVAEClusterer
from ppl_ssvae.active import ActiveConfig, run_active
from ppl_ssvae.data import Dataset, load, semi_supervised_split
from ppl_ssvae.errors import UserError
from ppl_ssvae.evaluation.anomaly import class_id, reconstruction_log_prob
from ppl_ssvae.evaluation.inspect import generation_grid, posterior
from ppl_ssvae.evaluation.likelihood import likelihood_report, log_likelihood
from ppl_ssvae.models import build
from ppl_ssvae.training import fit

REPO = Path(__file__).resolve().parents[1]
CLI = "ppl_ssvae"  # a module, run as ``python -m ppl_ssvae``
M2, LATENT = "experiments/m2_fashion_mnist.py", "experiments/latent_fashion_mnist.py"
PI_VAE, ANOMALY = "experiments/pi_vae_fashion_mnist.py", "experiments/pi_vae_anomaly.py"
DISENTANGLE, SEQUENCES = "experiments/pi_vae_disentanglement.py", "experiments/pi_vae_sequences.py"
GUIDES, SKLEARN = "experiments/guides_fashion_mnist.py", "experiments/sklearn_comparison.py"
SEMI, ACTIVE = "experiments/semi_unsupervised_fashion_mnist.py", "experiments/active_labelling.py"
REPORT = "experiments/report_runs.py"
GUIDE_SPEED, PRECISION = "benchmarks/guide_speed.py", "benchmarks/precision_speed.py"
DDP, M2_SPEED = "benchmarks/ddp_speed.py", "benchmarks/m2_speed.py"
NET_SPEED, DENORMAL = "benchmarks/net_speed.py", "benchmarks/denormal_speed.py"
SIGMA2, WARMUP = "experiments/m2_sigma2_circles.py", "experiments/m2_kl_warmup_moons.py"
PROBE, PRETRAINED = "experiments/m2_zprime_probe.py", "experiments/m2_pretrained_vae.py"
NOT_INT = "is not an integer"
SEED_RANGE = "must be an integer in [0, 2**32)"
EMPTY_ITEM = "has an empty item"
NOT_A_NAME = "must be a folder name, not a path"
ACTIVE_HUMAN = ["active", "--dataset", "digits", "--oracle", "human", "--answers-file"]

# id -> (script or CLI, argv, part of the one error line); {name} is a prepared path.
CASES: dict[str, tuple[str, list[str], str]] = {
    "m2 --labels abc": (M2, ["--labels", "abc"], f"argument --labels: 'abc' {NOT_INT}"),
    "m2 --seed -1": (M2, ["--seed", "-1"], SEED_RANGE),
    "m2 --seed 2**32": (M2, ["--seed", str(2**32)], SEED_RANGE),
    "m2 --seed 1e20": (M2, ["--seed", "1e20"], f"'1e20' {NOT_INT}"),
    "latent --epochs 0": (LATENT, ["--epochs", "0"], "argument --epochs: 0 must be >= 1"),
    "latent --baseline-epochs 0": (LATENT, ["--baseline-epochs", "0"], "0 must be >= 1"),
    "latent --labels 0": (LATENT, ["--labels", "0"], "0 must be >= 1"),
    "latent --labelled-share 2": (LATENT, ["--labelled-share", "2"], "labelled share 2.0 must be"),
    "pi-vae --seeds abc": (PI_VAE, ["--seeds", "abc"], f"'abc' {NOT_INT}"),
    "pi-vae --seeds 0,-1": (PI_VAE, ["--seeds", "0,-1"], SEED_RANGE),
    "pi-vae --labels 0": (PI_VAE, ["--labels", "0"], "0 must be >= 1"),
    "pi-vae --labels some": (PI_VAE, ["--labels", "some"], f"'some' {NOT_INT}"),
    "pi-vae --batch-size 0": (PI_VAE, ["--batch-size", "0"], "0 must be >= 1"),
    "pi-vae --ss-epochs 0": (PI_VAE, ["--ss-epochs", "0"], "0 must be >= 1"),
    "pi-vae --validation-size -1": (PI_VAE, ["--validation-size", "-1"], "-1 must be >= 0"),
    "pi-vae --max-minutes 0": (PI_VAE, ["--max-minutes", "0"], "must be a finite number > 0"),
    "pi-vae --alpha nan": (PI_VAE, ["--alpha", "nan"], "must be a finite number >= 0"),
    "pi-vae --name ../../x": (PI_VAE, ["--name", "../../x"], NOT_A_NAME),
    "anomaly --seeds 1,": (ANOMALY, ["--seeds", "1,"], EMPTY_ITEM),
    "anomaly --label-fractions 0": (ANOMALY, ["--label-fractions", "0"], "0 must be in (0, 1]"),
    "anomaly --label-fractions abc": (ANOMALY, ["--label-fractions", "abc"], "'abc' is not a number"),
    "anomaly --samples 0": (ANOMALY, ["--samples", "0"], "0 must be >= 1"),
    "anomaly --classes ,": (ANOMALY, ["--classes", ","], EMPTY_ITEM),
    "anomaly --alpha -1": (ANOMALY, ["--alpha", "-1"], "must be a finite number >= 0"),
    "anomaly --name ..": (ANOMALY, ["--name", ".."], NOT_A_NAME),
    "disentanglement --labels abc": (DISENTANGLE, ["--labels", "abc"], f"'abc' {NOT_INT}"),
    "disentanglement --labelled-only -1": (DISENTANGLE, ["--labelled-only", "-1"], "-1 must be >= 0"),
    "disentanglement --z-dim 0": (DISENTANGLE, ["--z-dim", "0"], "0 must be >= 1"),
    "disentanglement --beta 0": (DISENTANGLE, ["--beta", "0"], "must be a finite number > 0"),
    "sequences --labels x": (SEQUENCES, ["--labels", "x"], f"'x' {NOT_INT}"),
    "sequences --max-minutes inf": (SEQUENCES, ["--max-minutes", "inf"], "must be a finite number"),
    "sequences --seed -1": (SEQUENCES, ["--seed", "-1"], SEED_RANGE),
    "guides --guides ,": (GUIDES, ["--guides", ","], EMPTY_ITEM),
    "guides --settings ,": (GUIDES, ["--settings", ","], EMPTY_ITEM),
    "guides --epochs 0": (GUIDES, ["--epochs", "0"], "0 must be >= 1"),
    "guides --iwae 0": (GUIDES, ["--iwae", "0"], "0 must be >= 1"),
    "guides --iwae-rows 0": (GUIDES, ["--iwae-rows", "0"], "0 must be >= 1"),
    "guides --labels 0": (GUIDES, ["--labels", "0"], "0 must be >= 1"),
    "guides --hidden 16,,16": (GUIDES, ["--hidden", "16,,16"], EMPTY_ITEM),
    "guides --name ../x": (GUIDES, ["--name", "../x"], NOT_A_NAME),
    "sklearn --labels abc": (SKLEARN, ["--labels", "abc"], f"'abc' {NOT_INT}"),
    "sklearn --seeds abc": (SKLEARN, ["--seeds", "abc"], f"'abc' {NOT_INT}"),
    "sklearn --epochs 0": (SKLEARN, ["--epochs", "0"], "0 must be >= 1"),
    "sklearn --max-unlabelled -1": (SKLEARN, ["--max-unlabelled", "-1"], "-1 must be >= 0"),
    "sklearn --name /tmp/x": (SKLEARN, ["--name", "/tmp/x"], NOT_A_NAME),
    "semi-unsupervised --models ,": (SEMI, ["--models", ","], EMPTY_ITEM),
    "semi-unsupervised --hidden 0": (SEMI, ["--hidden", "0"], "0 must be >= 1"),
    "semi-unsupervised --z-dim 0": (SEMI, ["--z-dim", "0"], "0 must be >= 1"),
    "semi-unsupervised --name a/b": (SEMI, ["--name", "a/b"], NOT_A_NAME),
    "active-labelling --seed -1": (ACTIVE, ["--seed", "-1"], SEED_RANGE),
    "active-labelling --rate 0": (ACTIVE, ["--rate", "0"], "must be a finite number > 0"),
    "active-labelling --gamma -1": (ACTIVE, ["--gamma", "-1"], "must be a finite number >= 0"),
    "active-labelling --merge absent": (ACTIVE, ["--merge", "absent"], "config.json not found"),
    "active-labelling --name ..": (ACTIVE, ["--name", ".."], NOT_A_NAME),
    "report a missing run": (REPORT, ["{missing}", "--name", "r"], "is not a run directory"),
    "report an empty run": (REPORT, ["{empty_run}", "--name", "r"], "has no finished epoch"),
    "report --name ../../x": (REPORT, ["{empty_run}", "--name", "../../x"], NOT_A_NAME),
    "guide-speed --steps 0": (GUIDE_SPEED, ["--steps", "0"], "0 must be >= 1"),
    "guide-speed --guides ,": (GUIDE_SPEED, ["--guides", ","], EMPTY_ITEM),
    "precision-speed --threads 0": (PRECISION, ["--threads", "0"], "0 must be >= 1"),
    "precision-speed --steps 0": (PRECISION, ["--steps", "0"], "0 must be >= 1"),
    "precision-speed --models ,": (PRECISION, ["--models", ","], EMPTY_ITEM),
    "net-speed --steps 0": (NET_SPEED, ["--steps", "0"], "0 must be >= 1"),
    "denormal-speed --steps 0": (DENORMAL, ["runs/x", "--steps", "0"], "0 must be >= 1"),
    "net-speed --nets ,": (NET_SPEED, ["--nets", ","], EMPTY_ITEM),
    "sigma2-circles --sigma2 0": (SIGMA2, ["--sigma2", "0"], "must be"),
    "warmup-moons --seeds -1": (WARMUP, ["--seeds", "-1"], SEED_RANGE),
    "zprime-probe --alpha -1": (PROBE, ["--alpha", "-1"], "must be a finite number >= 0"),
    "pretrained-vae --epochs 0": (PRETRAINED, ["--epochs", "0"], "0 must be >= 1"),
    "pretrained-vae --models m3": (PRETRAINED, ["--models", "m3"], "unknown model 'm3'"),
    "pretrained-vae --lam without a latent model": (
        PRETRAINED, ["--models", "m2", "--lam", "0.5"], "--lam is for latent, latent-simplified"),
    "pretrained-vae --alpha without m2": (
        PRETRAINED, ["--models", "latent", "--alpha", "1"], "--alpha is for m2, which --models"),
    "ddp-speed --processes 0": (DDP, ["--processes", "0"], "0 must be >= 1"),
    "ddp-speed --epochs 0": (DDP, ["--epochs", "0"], "0 must be >= 1"),
    "ddp-speed --rounds 0": (DDP, ["--rounds", "0"], "0 must be >= 1"),
    "m2-speed --epochs 0": (M2_SPEED, ["--epochs", "0"], "0 must be >= 1"),
    "m2-speed --batch-size 0": (M2_SPEED, ["--batch-size", "0"], "0 must be >= 1"),
    "m2-speed --lr 0": (M2_SPEED, ["--lr", "0"], "must be a finite number > 0"),
    "m2-speed --labelled-share half": (M2_SPEED, ["--labelled-share", "half"], "not understood"),
    "cli moons --binarize": (
        CLI, ["train", "--dataset", "moons", "--binarize", "--epochs", "1", "--no-progress",
              "--out", "{fresh}"], "binarize needs inputs in [0, 1]"),
    "cli active, no answers file": (
        CLI, [*ACTIVE_HUMAN, "{missing}", "--out", "{fresh}"], "not found"),
    "cli active, answers file a folder": (
        CLI, [*ACTIVE_HUMAN, "{a_folder}", "--out", "{fresh}"], "cannot be read"),
    "cli active, answers file not text": (
        CLI, [*ACTIVE_HUMAN, "{binary}", "--out", "{fresh}"], "cannot be read (not text)"),
    "cli active --resume, answers file gone": (
        CLI, ["active", "--out", "{active_run}", "--resume", "--iterations", "2"], "not found"),
}  # fmt: skip

DRIVER = """
import contextlib, io, json, runpy, sys, traceback
results = {}
for case, (target, argv) in json.loads(sys.argv[1]).items():
    sys.argv, err, code = [target, *argv], io.StringIO(), 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            if target.endswith(".py"):
                runpy.run_path(target, run_name="__main__")
            else:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
    results[case] = (code, err.getvalue())
print(json.dumps(results))
"""

TINY_ACTIVE = dict(dataset="digits", iterations=1, queries=4, k=4, z_dim=3, hidden=(16,),
                   pretrain_epochs=1, patience=1, epochs=1, batch_size=500, oracle="human")  # fmt: skip


def _snapshot(path: Path) -> dict[str, bytes] | None:
    if not path.exists():
        return None
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def _prepare(root: Path) -> dict[str, Path]:
    """The paths the cases name: an empty run (config, no epoch), a finished active run whose
    answers file is gone, and answers files that cannot be read."""
    paths = {name: root / name for name in ("missing", "fresh", "empty_run", "a_folder", "binary")}
    data = semi_supervised_split(load("digits"), labels=50, seed=0)
    model = build("m2", input_dim=64, num_classes=10, z_dim=2, hidden=(8,))
    fit(model, data, epochs=0, out=paths["empty_run"], progress=False)
    paths["a_folder"].mkdir()
    paths["binary"].write_bytes(b"\xff\xfe\x00\x81" * 8)
    answers = root / "answers.txt"
    answers.write_text("1 0.9\n" * 4)
    paths["active_run"] = root / "active_run"
    run_active(ActiveConfig(**TINY_ACTIVE, answers_file=str(answers)), paths["active_run"])
    answers.unlink()
    return paths


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    root = tmp_path_factory.mktemp("cases")
    paths = _prepare(root)
    cwd = root / "cwd"  # the scripts' default results/ and runs/ land here
    cwd.mkdir()
    cases = {
        case: (str(REPO / target) if target.endswith(".py") else target,
               [arg.format(**{k: str(v) for k, v in paths.items()}) for arg in argv])
        for case, (target, argv, _) in CASES.items()
    }  # fmt: skip
    before = {name: _snapshot(path) for name, path in paths.items()}
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(cases)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    after = {name: _snapshot(path) for name, path in paths.items()}
    return json.loads(done.stdout.splitlines()[-1]), before, after, cwd


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(replayed, case):
    results, before, after, cwd = replayed
    target, _, expected = CASES[case]
    code, stderr = results[case]
    assert "Traceback" not in stderr, stderr
    assert code == 2, (code, stderr)
    assert stderr.count("\n") == 1, stderr
    prog = "ppl-ssvae" if target == CLI else Path(target).name
    assert stderr.startswith(f"{prog}: error: ") and expected in stderr, stderr


def test_the_cases_wrote_and_changed_nothing(replayed):
    _, before, after, cwd = replayed
    assert after == before  # the active run byte for byte, and no --out created
    assert before["fresh"] is None and before["missing"] is None
    assert list(cwd.iterdir()) == []


def test_every_script_has_a_case():
    scripts = {p.relative_to(REPO).as_posix() for p in REPO.glob("experiments/*.py")}
    scripts |= {p.relative_to(REPO).as_posix() for p in REPO.glob("benchmarks/*.py")}
    scripts -= {"experiments/__init__.py", "experiments/common.py", "benchmarks/common.py"}
    assert scripts == {target for target, _, _ in CASES.values()} - {CLI}


# -- the Python API -----------------------------------------------------------------------------
def _blobs(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = np.arange(n) % 2
    return rng.normal(size=(n, 3)) * 0.3 + np.eye(2, 3)[ids] * 3, ids


def _classifier() -> SSVAEClassifier:
    return SSVAEClassifier(epochs=1, batch_size=32, model_args={"z_dim": 2, "hidden": [8]})


@pytest.mark.parametrize("unlabelled", [-1, "-1", None], ids=["int -1", "text -1", "None"])
def test_a_plain_list_of_text_labels_keeps_its_unlabelled_rows_unlabelled(unlabelled):
    x, ids = _blobs()
    y = [["cat", "dog"][i] if row % 3 else unlabelled for row, i in enumerate(ids)]
    clf = _classifier().fit(x, y)
    assert list(clf.classes_) == ["cat", "dog"]
    assert set(clf.predict(x)) <= {"cat", "dog"}


def test_text_and_number_labels_together_are_refused_in_one_line():
    x, ids = _blobs()
    y = np.array([["cat", 3][i] for i in ids], dtype=object)
    with pytest.raises(UserError, match="y mixes labels of kinds numbers, text"):
        _classifier().fit(x, y)


def test_a_bool_is_not_a_number_of_clusters():
    with pytest.raises(ValueError, match="n_clusters=True must be an integer"):
        SSVAEClusterer(n_clusters=True, epochs=1).fit(_blobs()[0])


@pytest.fixture(scope="module")
def digits():
    return semi_supervised_split(load("digits"), labels=50, seed=0)


@pytest.fixture
def m2(digits):
    return build("m2", input_dim=digits.input_dim, num_classes=10, z_dim=2, hidden=(8,))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"labels": 20.0}, "labels=20.0 must be an integer"),
     ({"labels": True}, "labels=True must be an integer"),
     ({"label_fraction": True}, "label_fraction=True must be a number"),
     ({"label_fraction": "0.5"}, "label_fraction='0.5' must be a number"),
     ({"validation_size": 2.5}, "validation_size=2.5 must be an integer"),
     ({"validation_size": True}, "validation_size=True must be an integer"),
     ({"std_threshold": "0.1"}, "std_threshold='0.1' must be a number")],
)  # fmt: skip
def test_split_arguments_of_the_wrong_type_are_user_errors(arguments, message):
    with pytest.raises(UserError, match=message):
        semi_supervised_split(load("digits"), **arguments)


def test_split_takes_numpy_counts():
    split = semi_supervised_split(load("digits"), labels=np.int64(20), validation_size=np.int64(5))
    assert int(split.labelled_mask.sum()) == 20 and len(split.x_val) == 5


@pytest.mark.parametrize(
    ("call", "message"),
    [(lambda m, x: log_likelihood(m, x, num_samples=True), "num_samples=True must be an integer"),
     (lambda m, x: log_likelihood(m, x, num_samples=2.0), "num_samples=2.0 must be an integer"),
     (lambda m, x: log_likelihood(m, x, max_rows=0), "max_rows=0 must be an integer >= 1"),
     (lambda m, x: likelihood_report(m, x, 2, rows=True), "rows=True must be a positive"),
     (lambda m, x: posterior(m, x, num_samples=True), "num_samples=True must be an integer"),
     (lambda m, x: posterior(m, x, iwae_samples=True), "iwae_samples=True must be an integer"),
     (lambda m, x: generation_grid(m, 2.0, "/nowhere/g.png", (8, 8)), "n_per_class=2.0 must be an"),
     (lambda m, x: reconstruction_log_prob(m, x, samples=True), "samples=True must be an"),
     (lambda m, x: reconstruction_log_prob(m, x, batch_size=2.5), "batch_size=2.5 must be an")],
)  # fmt: skip
def test_counts_that_are_bools_or_floats_are_user_errors(m2, digits, call, message):
    with pytest.raises(UserError, match=message):
        call(m2, digits.x_test[:4])


@pytest.mark.parametrize("anomaly", [2.7, True])
def test_an_anomaly_class_is_an_id_or_a_name(anomaly):
    with pytest.raises(UserError, match="must be a class id or name"):
        class_id(load("digits"), anomaly)


def test_single_class_data_is_refused_before_the_run_directory_is_written(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((40, 4)).astype(np.float32)
    one = Dataset("one", x[:30], np.zeros(30, int), x[30:], np.zeros(10, int), ["only"])
    data = semi_supervised_split(one, labels=10, validation_size=5)
    model = build("m2", input_dim=4, num_classes=1, z_dim=2, hidden=(8,))
    with pytest.raises(UserError, match="m2 has 1 class; a classifier needs at least 2"):
        fit(model, data, epochs=1, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_binarising_real_valued_data_is_refused_before_the_run_directory_is_written(tmp_path):
    data = semi_supervised_split(load("moons"), labels=10)
    model = build("m2", input_dim=2, num_classes=2, z_dim=2, hidden=(8,), likelihood="gaussian")
    with pytest.raises(UserError, match=r"binarize needs inputs in \[0, 1\]"):
        fit(model, data, epochs=1, binarize=True, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    # binarize=None follows the likelihood: Gaussian here, so the same fit trains.
    assert fit(model, data, epochs=1, progress=False).history

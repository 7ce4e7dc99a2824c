"""The active-labelling loop (Vengalil & Sinha sec 3.2-3.3): confidences (eq. 2-3),
distances, the query tree and its budget, the oracles, and resumable sessions."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ppl_ssvae.active import (
    ActiveConfig,
    Answer,
    HumanOracle,
    QueryLog,
    SimulatedOracle,
    ask_tree,
    confidence,
    decay,
    distance,
    euclidean,
    mahalanobis,
    merge,
    parse_answer,
    propagate,
    run_active,
)
from ppl_ssvae.errors import UserError
from ppl_ssvae.runs.directory import RunDir


# -- eq. 2-3 and the distances ------------------------------------------------------------------
def test_decays_and_confidence_by_hand():
    d = np.array([0.0, 0.5, 2.0])
    assert np.allclose(decay(d, 0.3, "exponential"), [1.0, np.exp(-0.15), np.exp(-0.6)])
    assert np.allclose(decay(d, 0.3, "gaussian"), [1.0, np.exp(-0.075), np.exp(-1.2)])
    assert np.allclose(confidence(0.8, d, 0.3, "gaussian"), 0.8 * np.exp(-0.3 * d**2))
    # the Gaussian is flatter near the centre, the exponential has the heavier tail
    assert decay(0.5, 1.0, "gaussian") > decay(0.5, 1.0, "exponential")
    assert decay(3.0, 1.0, "gaussian") < decay(3.0, 1.0, "exponential")
    with pytest.raises(UserError, match="unknown decay"):
        decay(d, 1.0, "linear")


def test_euclidean_and_mahalanobis_against_hand_computations():
    centre = np.array([1.0, -1.0])
    points = np.array([[4.0, 3.0], [1.0, -1.0], [1.0, 1.0]])
    assert np.allclose(euclidean(points, centre), [5.0, 0.0, 2.0])
    cov = np.array([[4.0, 0.0], [0.0, 1.0]])  # sd 2 along the first axis, 1 along the second
    # (3, 4): sqrt(9/4 + 16/1) = sqrt(18.25); (0, 2): sqrt(4)
    assert np.allclose(mahalanobis(points, centre, cov), [np.sqrt(18.25), 0.0, 2.0], atol=1e-5)
    corr = np.array([[2.0, 1.0], [1.0, 2.0]])  # inverse [[2, -1], [-1, 2]] / 3
    diff = np.array([1.0, 2.0])
    want = np.sqrt(diff @ np.linalg.inv(corr) @ diff)  # = sqrt((2 - 4 + 8) / 3) = sqrt(2)
    assert np.isclose(want, np.sqrt(2.0))
    assert np.allclose(
        distance("mahalanobis", (centre + diff)[None], centre, corr), want, atol=1e-5
    )
    with pytest.raises(UserError, match="covariance"):
        distance("mahalanobis", points, centre)


# -- the query tree ---------------------------------------------------------------------------
def _blobs(seed=0, per=40):
    """Four tight, well separated 2-D blobs; blob j holds true label j."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=float)
    z = np.concatenate([c + 0.3 * rng.standard_normal((per, 2)) for c in centres])
    return z, np.repeat(np.arange(4), per)


FAKE_MODEL = SimpleNamespace(
    decode=lambda z: SimpleNamespace(mean=torch.as_tensor(z, dtype=torch.float32))
)
FAKE_DATA = SimpleNamespace(image_shape=None, num_classes=4)


class Recorder:
    """An oracle answering invalid to the ids listed, label 0 with p_c 0.5 otherwise."""

    def __init__(self, invalid=()):
        self.invalid, self.asked = set(invalid), []

    def __call__(self, queries):
        for q in queries:
            self.asked.append(q.id)
            yield Answer.invalid_centre() if q.id in self.invalid else Answer(0, 0.5)


def _tree(tmp_path, oracle, queries, k=2, clustering="kmeans", z=None):
    z = _blobs()[0] if z is None else z
    config = ActiveConfig(k=k, queries=queries, clustering=clustering)
    with RunDir(tmp_path).lock() as run:
        log = QueryLog(run)
        return ask_tree(1, z, FAKE_MODEL, FAKE_DATA, config, oracle, log), log, z, config


def test_invalid_centres_are_sub_clustered_within_the_budget_exactly(tmp_path):
    oracle = Recorder(invalid={"1/0", "1/1", "1/0.0"})
    asked, log, _, _ = _tree(tmp_path, oracle, queries=5)
    # level 0: 0, 1 (both invalid); level 1: 0.0, 0.1, 1.0 -> the budget of 5 is spent
    assert oracle.asked == ["1/0", "1/1", "1/0.0", "1/0.1", "1/1.0"]
    assert len(asked) == len(log) == 5
    sub = {n.id: n for n, _ in asked}
    assert set(sub["0.0"].members) < set(sub["0"].members)


@pytest.mark.parametrize("queries", [1, 3, 7])
def test_budget_is_respected_when_every_answer_is_invalid(tmp_path, queries):
    oracle = Recorder(invalid={f"1/{p}" for p in ["0", "1", "0.0", "0.1", "1.0", "1.1",
                                                   "0.0.0", "0.0.1"]})  # fmt: skip
    asked, _, _, _ = _tree(tmp_path, oracle, queries=queries)
    assert len(oracle.asked) == len(asked) == queries


def test_valid_centres_are_not_sub_clustered(tmp_path):
    oracle = Recorder()
    asked, _, _, _ = _tree(tmp_path, oracle, queries=10, k=4)
    assert oracle.asked == ["1/0", "1/1", "1/2", "1/3"]  # nothing invalid: no sub-clusters


def test_propagation_uses_eq_3_and_gmm_responsibilities(tmp_path):
    asked, _, z, config = _tree(tmp_path, Recorder(), queries=4, k=4)
    labels, weights = propagate(asked, z, config)
    node, answer = asked[0]
    d = np.linalg.norm(z[node.members] - node.centre, axis=1)
    assert np.allclose(weights[node.members], 0.5 * np.exp(-config.rate * d**2))
    assert (labels == 0).all()
    asked, _, z, config = _tree(tmp_path / "g", Recorder(), queries=4, k=4, clustering="gmm")
    labels, weights = propagate(asked, z, config)
    node, _ = asked[1]
    assert np.allclose(weights[node.members], 0.5 * node.responsibility)


def test_merge_keeps_earlier_labels_where_the_new_round_is_silent():
    old = np.array([1, 2, -1, 3]), np.array([0.5, 0.6, 0.0, 0.7])
    new = np.array([4, -1, 5, -1]), np.array([0.9, 0.0, 0.8, 0.0])
    labels, weights = merge(old, new)
    assert labels.tolist() == [4, 2, 5, 3] and weights.tolist() == [0.9, 0.6, 0.8, 0.7]


def test_tree_and_propagation_are_deterministic_given_the_seed(tmp_path):
    runs = [_tree(tmp_path / str(i), Recorder({"1/0"}), queries=5, k=3) for i in range(2)]
    (a, _, z, config), (b, _, _, _) = runs
    assert [n.id for n, _ in a] == [n.id for n, _ in b]
    for (x, _), (y, _) in zip(a, b, strict=True):
        assert np.array_equal(x.members, y.members) and np.allclose(x.centre, y.centre)
    assert np.array_equal(propagate(a, z, config)[1], propagate(b, z, config)[1])


# -- the oracles ------------------------------------------------------------------------------
class GuardedLabels(np.ndarray):
    """Ground truth that raises on reading any row not in ``allowed``."""

    allowed: set

    def __getitem__(self, index):
        rows = np.atleast_1d(np.arange(len(self))[index])
        if not set(rows.tolist()) <= self.allowed:
            raise AssertionError(
                f"the oracle read labels of rows {sorted(set(rows) - self.allowed)}"
            )
        return np.asarray(self).__getitem__(index)


def test_simulated_oracle_reads_only_the_rows_nearest_each_centre(tmp_path):
    z, truth = _blobs()
    guarded = truth.view(GuardedLabels)
    guarded.allowed = set()
    shown = []

    class Watching(SimulatedOracle):
        def __call__(self, queries):
            for q in queries:  # the rows this oracle is shown: the nearest ones only
                shown.append(q.nearest(self.neighbours))
                guarded.allowed = set(shown[-1].tolist())
                yield from super().__call__([q])

    oracle = Watching(guarded, neighbours=7, purity_threshold=0.9)
    asked, _, _, _ = _tree(tmp_path, oracle, queries=4, k=4, z=z)
    assert all(len(s) == 7 for s in shown)
    for (_node, answer), rows in zip(asked, shown, strict=True):
        assert answer.label == np.bincount(truth[rows]).argmax() and answer.confidence == 1.0
    guarded.allowed = set()
    with pytest.raises(AssertionError, match="read labels"):
        guarded[3]  # the guard itself works


def test_simulated_oracle_says_invalid_below_the_purity_threshold():
    labels = np.array([0, 0, 1, 1, 1, 2])
    query = SimpleNamespace(nearest=lambda m: np.arange(6)[:m])
    assert list(SimulatedOracle(labels, 5, 0.7)([query]))[0].invalid  # purity 3/5
    answer = list(SimulatedOracle(labels, 5, 0.6)([query]))[0]
    assert (answer.label, answer.confidence) == (1, 0.6)


def test_answers_parse_or_are_one_line_errors():
    assert parse_answer("3 0.9") == Answer(3, 0.9) and parse_answer("invalid").invalid
    assert parse_answer("2\n") == Answer(2, 1.0)
    for bad in ("x", "3 1.5", "3 0.5 1", "12 0.5", ""):
        with pytest.raises(UserError):
            parse_answer(bad, num_classes=10)


# -- whole runs -------------------------------------------------------------------------------
TINY = dict(dataset="digits", iterations=1, queries=4, k=4, z_dim=3, hidden=(16,),
            pretrain_epochs=2, patience=1, epochs=1, batch_size=500)  # fmt: skip


class KilledAfter:
    """Answer lines that end with a Ctrl-C after ``k`` of them."""

    def __init__(self, k):
        self.k, self.given = k, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.given == self.k:
            raise KeyboardInterrupt
        self.given += 1
        return f"{self.given} 0.8"


def test_a_killed_human_session_resumes_asking_only_the_rest(tmp_path):
    config = ActiveConfig(**TINY, oracle="human")
    with pytest.raises(KeyboardInterrupt):
        run_active(config, tmp_path, oracle=HumanOracle(tmp_path, KilledAfter(2)))
    first = [json.loads(line) for line in (tmp_path / "queries.jsonl").read_text().splitlines()]
    assert [r["label"] for r in first] == [1, 2]
    rest = iter(["invalid", "7 0.5"])
    records = run_active(config, tmp_path, resume=True, oracle=HumanOracle(tmp_path, rest))
    assert next(rest, None) is None  # both remaining lines used, nothing more asked
    log = [json.loads(line) for line in (tmp_path / "queries.jsonl").read_text().splitlines()]
    assert [r["label"] for r in log] == [1, 2, None, 7]
    assert len({r["id"] for r in log}) == 4
    assert records[-1]["queries_total"] == 4 and records[-1]["invalid_answers"] == 1
    assert sorted(p.name for p in tmp_path.glob("centres-*.png")) == ["centres-1-0.png",
                                                                      "centres-1-2.png"]  # fmt: skip
    # a finished run resumed asks nothing and trains nothing more
    again = run_active(config, tmp_path, resume=True, oracle=HumanOracle(tmp_path, iter([])))
    assert again == records


def test_simulated_run_writes_its_records_and_refuses_misuse(tmp_path):
    records = run_active(ActiveConfig(**TINY), tmp_path / "run")
    lines = (tmp_path / "run" / "iterations.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == records
    for key in ("iteration", "queries_total", "labelled_rows", "propagated_label_accuracy",
                "test_accuracy"):  # fmt: skip
        assert key in records[-1]
    assert records[-1]["queries_total"] == 4 and records[-1]["labelled_rows"] > 0
    with pytest.raises(UserError, match="already holds a run"):
        run_active(ActiveConfig(**TINY), tmp_path / "run")
    with pytest.raises(UserError, match="other settings"):
        run_active(ActiveConfig(**{**TINY, "k": 5}), tmp_path / "run", resume=True)
    with pytest.raises(UserError, match="config.json missing"):
        run_active(ActiveConfig(**TINY), tmp_path / "none", resume=True)
    with pytest.raises(UserError, match="exclude each other"):
        run_active(ActiveConfig(**TINY), tmp_path / "run", resume=True, overwrite=True)


def test_overwrite_clears_the_run_and_nothing_else(tmp_path):
    run = tmp_path / "run"
    first = run_active(ActiveConfig(**TINY), run)
    (run / "notes.txt").write_text("mine")
    (run / "iter-999").mkdir()  # not a run directory: kept
    again = run_active(ActiveConfig(**{**TINY, "seed": 1}), run, overwrite=True)
    assert again != first and len(again) == len(first)
    assert (run / "notes.txt").read_text() == "mine" and (run / "iter-999").is_dir()
    log = [json.loads(line) for line in (run / "queries.jsonl").read_text().splitlines()]
    assert len(log) == again[-1]["queries_total"]  # only the new run's answers


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("clustering", "dbscan", "unknown clustering"), ("distance", "cosine", "unknown distance"),
     ("decay", "linear", "unknown decay"), ("queries", 0, "queries=0"), ("k", 1, "k=1"),
     ("rate", -1.0, "rate=-1.0"), ("purity_threshold", 2, "purity_threshold"),
     ("oracle", "crowd", "unknown oracle"), ("answers_file", "a.txt", "answers_file"),
     ("hidden", (), "hidden"), ("net", "lstm", "unknown net"),
     ("train_fraction", 0.0, "train_fraction"), ("train_fraction", 1.5, "train_fraction")],
)  # fmt: skip
def test_every_setting_is_validated_up_front(tmp_path, field, value, message):
    with pytest.raises(UserError, match=message):
        run_active(ActiveConfig(**{**TINY, field: value}), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_the_loop_sees_a_seeded_share_of_the_training_rows_and_no_labels():
    from ppl_ssvae.active import load_unlabelled

    whole = load_unlabelled(ActiveConfig(dataset="digits"))
    part = load_unlabelled(ActiveConfig(dataset="digits", train_fraction=0.7))
    again = load_unlabelled(ActiveConfig(dataset="digits", train_fraction=0.7))
    assert len(part.x_train) == round(0.7 * len(whole.x_train)) and len(part.x_val) == 0
    assert not part.labelled_mask.any() and torch.equal(part.x_train, again.x_train)
    rows = {tuple(r) for r in whole.x_train.tolist()}
    assert all(tuple(r) in rows for r in part.x_train.tolist())  # a subset, not new rows


def test_the_paper_s_conv_network_runs_the_loop(tmp_path):
    config = ActiveConfig(**{**TINY, "net": "conv", "net_args": {"channels": [4]}})
    records = run_active(config, tmp_path / "run")
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["active"]["net"] == "conv" and stored["active"]["net_args"] == {"channels": [4]}
    assert records[-1]["queries_total"] == 4

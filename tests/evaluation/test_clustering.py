import json
import math
import subprocess
import sys

import numpy as np
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F

from ppl_ssvae import models
from ppl_ssvae.cli import main
from ppl_ssvae.errors import UserError
from ppl_ssvae.evaluation.clustering import (
    UNMAPPED,
    choose_mapping,
    contingency,
    hungarian_mapping,
    majority_mapping,
    split_accuracy,
    unit_activity,
)
from ppl_ssvae.nn import MIN_SCALE

TINY = ["--dataset", "digits", "--z-dim", "4", "--hidden", "32", "--epochs", "1",
        "--batch-size", "100", "--no-progress"]  # fmt: skip
CLUSTER_KEYS = {"elbo", "val_accuracy", "test_accuracy", "test_accuracy_visible",
                "test_accuracy_hidden", "cluster_mapping"}  # fmt: skip


def test_contingency_counts_model_by_true_class():
    counts = contingency([0, 0, 1, 2], [1, 1, 0, 1], num_model_classes=3, num_classes=2)
    assert counts.tolist() == [[0, 2], [1, 0], [0, 1]]


def test_majority_mapping_known_answer():
    # Model class 0 holds true classes {2, 2, 1}; 1 holds {0}; 2 holds {1, 1, 0};
    # 3 and 4 are empty: 3 keeps its own id (a true class), 4 (>= K) is unmapped.
    predicted = [0, 0, 0, 1, 2, 2, 2]
    true = [2, 2, 1, 0, 1, 1, 0]
    mapping = majority_mapping(predicted, true, num_model_classes=5, num_classes=4)
    assert mapping.tolist() == [2, 0, 1, 3, UNMAPPED]
    # Several model classes may share a true class (the point of |y| > K).
    assert majority_mapping([0, 1, 2], [1, 1, 1], 3, 2).tolist() == [1, 1, 1]
    # Ties go to the smallest true class.
    assert majority_mapping([0, 0], [1, 0], 1, 2).tolist() == [0]


def test_hungarian_mapping_is_one_to_one_and_optimal():
    # Majority would send both model classes 0 and 1 to true class 0; the one-to-one
    # optimum gives 0 -> 0 (3 points) and 1 -> 1 (1 point), 2 -> 2.
    predicted = [0, 0, 0, 1, 1, 1, 2, 2]
    true = [0, 0, 0, 0, 0, 1, 2, 2]
    assert majority_mapping(predicted, true, 3, 3).tolist() == [0, 0, 2]
    mapping = hungarian_mapping(predicted, true, 3, 3)
    assert mapping.tolist() == [0, 1, 2]
    # A permuted clustering is recovered exactly.
    perm = np.array([2, 0, 1])
    labels = np.repeat(np.arange(3), 4)
    assert hungarian_mapping(perm[labels], labels, 3, 3)[perm].tolist() == [0, 1, 2]
    # More model classes than true ones: only K get a class.
    wide = hungarian_mapping([0, 1, 2, 3], [0, 0, 1, 1], 4, 2)
    assert sorted(wide.tolist()) == [UNMAPPED, UNMAPPED, 0, 1]


def test_split_accuracy_visible_and_hidden():
    true = [0, 0, 1, 1, 2, 2, 3, 3]
    pred = [0, 1, 1, 1, 0, 2, 3, 3]  # wrong on rows 1 and 4
    parts = split_accuracy(pred, true, hidden_classes=(0, 2))
    # Hidden rows: true class 0 or 2 -> rows 0, 1, 4, 5, of which 0 and 5 are right.
    assert parts == {"overall": 0.75, "visible": 1.0, "hidden": 0.5}
    assert split_accuracy(pred, true) == {"overall": 0.75, "visible": 0.75, "hidden": None}
    assert split_accuracy([UNMAPPED], [0], (0,))["hidden"] == 0.0


def test_choose_mapping():
    class Data:
        num_classes = 3
        y_train = torch.tensor([0, 1, 2, -1])

    assert choose_mapping(3, Data) == "identity"
    assert choose_mapping(4, Data) == "majority"
    Data.y_train = torch.tensor([0, 1, -1, -1])  # class 2 never labelled
    assert choose_mapping(3, Data) == "majority"


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_semi_unsupervised_run_records_cluster_metrics(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--model", "gmdgm", *TINY, "--hidden-classes", "0,1",
            "--label-fraction", "0.5", "--extra-classes", "2", "--out", str(run)]  # fmt: skip
    assert main(argv) == 0
    (record,) = _records(run)
    assert set(record) >= CLUSTER_KEYS
    assert record["cluster_mapping"] == "majority"
    assert "test_accuracy_hungarian" not in record  # |y| = 12 != K = 10
    for key in ("test_accuracy", "test_accuracy_visible", "test_accuracy_hidden", "val_accuracy"):
        assert 0.0 <= record[key] <= 1.0
    config = json.loads((run / "config.json").read_text())
    assert config["spec"]["model"]["extra_classes"] == 2
    assert config["model"]["num_classes"] == 12
    assert config["fit"]["labelled_share"] == "1:1"  # Willetts App. B batches under the protocol
    # Eq. 34-35 prior: 1/N_gt for the 8 labelled classes, the rest shared by 2 + 2.
    prior = config["model"]["prior"]
    assert prior[2:10] == pytest.approx([0.1] * 8)
    assert prior[:2] + prior[10:] == pytest.approx([0.05] * 4)
    for name in ("confusion_matrix.csv", "confusion_matrix.png", "unit_activity.json"):
        assert (run / name).is_file()
    csv_rows = (run / "confusion_matrix.csv").read_text().splitlines()
    assert len(csv_rows) == 11 and len(csv_rows[0].split(",")) == 13  # header + K rows, |y| cols
    written = json.loads((run / "unit_activity.json").read_text())
    activity = written["activity"]
    assert len(activity) == 4 and all(a >= 0 for a in activity)
    # App. C's pairwise KL of p(z|y): per unit, over the 12 * 11 ordered pairs.
    assert len(written["component_kl_mean"]) == 4
    assert all(
        0 <= m <= x
        for m, x in zip(written["component_kl_mean"], written["component_kl_max"], strict=True)
    )

    # --resume rebuilds the 12-class model from the saved settings.
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert [r["epoch"] for r in _records(run)] == [1, 2]
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "majority mapping" in printed and "hidden classes" in printed


def test_pure_clustering_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "m2", *TINY, "--labels", "0", "--out", str(run)]) == 0
    (record,) = _records(run)
    assert record["cluster_mapping"] == "majority"
    # |y| == K: the one-to-one accuracy is reported too.
    assert 0.0 <= record["test_accuracy_hungarian"] <= 1.0
    # Without labels every class is learnt unsupervised.
    assert record["test_accuracy_visible"] is None
    assert record["test_accuracy_hidden"] == pytest.approx(record["test_accuracy"])
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["prior"] == pytest.approx([0.1] * 10)
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    assert "test accuracy" in capsys.readouterr().out


def test_plain_semi_supervised_run_keeps_default_evaluator(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--model", "m2", *TINY, "--labels", "50", "--out", str(run)]) == 0
    (record,) = _records(run)
    assert "cluster_mapping" not in record and "test_log_loss" in record
    assert json.loads((run / "config.json").read_text())["fit"]["labelled_share"] == "natural"
    assert not (run / "confusion_matrix.csv").exists()


def test_prior_can_be_overridden(tmp_path):
    run = tmp_path / "run"
    uniform = json.dumps([1 / 12] * 12)
    argv = ["train", "--model", "gmdgm", *TINY, "--hidden-classes", "0,1", "--label-fraction",
            "0.5", "--extra-classes", "2", "--model-arg", f"prior={uniform}", "--out", str(run)]  # fmt: skip
    assert main(argv) == 0
    prior = json.loads((run / "config.json").read_text())["model"]["prior"]
    assert prior == pytest.approx([1 / 12] * 12)


def _ignore_unit(model: models.M2, unit: int) -> None:
    """Make q(z_unit|x, y) = N(0, 1) = p(z_unit) whatever x and y are."""
    head = model.q.q_z.head
    with torch.no_grad():
        head.loc.weight[unit].zero_()
        head.loc.bias[unit].zero_()
        head.scale.weight[unit].zero_()
        # softplus(b) + MIN_SCALE = 1, with softplus^-1(v) = log(expm1(v)).
        head.scale.bias[unit] = math.log(math.expm1(1.0 - MIN_SCALE))


def test_unit_activity_is_per_unit_kl_and_zero_for_an_ignored_unit():
    model = models.build("m2", input_dim=6, num_classes=3, z_dim=5, hidden=(8,))
    x = torch.rand(40, 6)
    _ignore_unit(model, 2)
    activity = unit_activity(model, x, batch_size=16)
    assert activity.shape == (5,)
    assert activity[2].item() == pytest.approx(0.0, abs=1e-6)
    assert (activity[[0, 1, 3, 4]] > 1e-4).all()

    # Against a direct computation of eq. 36 for M2, where p(z|y) = N(0, I).
    probs = model.classify(x)
    q_z = model.q.q_z(x, probs.argmax(-1)).base_dist
    expected = torch.distributions.kl_divergence(q_z, torch.distributions.Normal(0.0, 1.0))
    assert torch.allclose(activity, expected.mean(0), atol=1e-5)


def test_unit_activity_uses_the_class_conditional_prior():
    # GM-DGM: p(z|y) differs per class, so eq. 36 weights each class's KL by q(y|x).
    model = models.build("gmdgm", input_dim=6, num_classes=3, z_dim=4, hidden=(8,))
    x = torch.rand(10, 6)
    activity = unit_activity(model, x)
    probs = model.classify(x)
    q_z = model.q.q_z(x, probs.argmax(-1)).base_dist
    expected = sum(
        probs[:, k : k + 1]
        * torch.distributions.kl_divergence(
            q_z, model.p_z(torch.full((10,), k, dtype=torch.long)).base_dist
        )
        for k in range(3)
    )
    assert torch.allclose(activity, expected.mean(0), atol=1e-5)
    # Models with an auxiliary latent trace too (a is replayed into the model).
    adgm = models.build("adgm", input_dim=6, num_classes=3, z_dim=4, hidden=(8,))
    assert unit_activity(adgm, x).shape == (4,)


def test_unit_activity_refuses_non_gaussian_z():
    model = models.build("m2", input_dim=6, num_classes=3, z_dim=4, hidden=(8,))

    class Laplace(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, y):
            normal = self.inner(x, y).base_dist
            return dist.Laplace(normal.loc, F.softplus(normal.scale)).to_event(1)

    model.q.q_z = Laplace(model.q.q_z)
    with pytest.raises(UserError, match="diagonal Gaussian"):
        unit_activity(model, torch.rand(3, 6))


def test_no_matplotlib_at_import():
    code = ("import sys, ppl_ssvae, ppl_ssvae.cli, ppl_ssvae.evaluation.clustering; "
            "assert 'matplotlib' not in sys.modules")  # fmt: skip
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_identity_mapping_matches_default_report():
    from ppl_ssvae import data
    from ppl_ssvae.evaluation.clustering import clustering_report
    from ppl_ssvae.evaluation.metrics import classification_report

    split = data.semi_supervised_split(data.load("digits"), labels=50, seed=0)
    model = models.build("m2", input_dim=split.input_dim, num_classes=10, z_dim=4, hidden=(16,))
    report = clustering_report(model, split)
    default = classification_report(model, split)
    assert report["cluster_mapping"] == "identity"
    assert report["test_accuracy"] == pytest.approx(default["test_accuracy"])
    assert report["val_accuracy"] == pytest.approx(default["val_accuracy"])
    assert report["test_accuracy_hidden"] is None


def test_a_python_cluster_and_label_run_writes_the_artifacts_and_keeps_the_trained_weights(
    tmp_path,
):
    """The confusion matrix and unit activity come from the callback, not the CLI: a Python
    run gets them too, from the best checkpoint loaded into a copy of the model."""
    from ppl_ssvae.data import load, semi_supervised_split
    from ppl_ssvae.protocol import build_for_data
    from ppl_ssvae.runs.directory import CHECKPOINT, RunDir
    from ppl_ssvae.training import fit
    from ppl_ssvae.training.callbacks import EVALUATE, Callback

    class FirstEpochBest(Callback):  # so that best.pt and the trained weights differ
        order = EVALUATE + 1

        def on_epoch_end(self, trainer, record):
            record["val_accuracy"] = 1.0 if record["epoch"] == 1 else 0.0

    split = semi_supervised_split(load("digits"), label_fraction=0.5, hidden_classes=(0, 1),
                                  seed=0)  # fmt: skip
    model = build_for_data("m2", split, 0, extra_classes=2, z_dim=4, hidden=(32,))
    result = fit(model, split, epochs=2, seed=0, out=tmp_path / "run", progress=False,
                 callbacks=[FirstEpochBest()])  # fmt: skip
    last = RunDir(tmp_path / "run").load_checkpoint(CHECKPOINT)["model"]
    written = {p.name for p in result.artifacts["files"]}
    assert written == {"confusion_matrix.csv", "confusion_matrix.png", "unit_activity.json"}
    assert result.artifacts["source"] == "best.pt (epoch 1)"
    assert all((tmp_path / "run" / name).is_file() for name in written)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in last.items())  # not best.pt's
    # A run with every class labelled is scored by accuracy: nothing is written.
    labelled = semi_supervised_split(load("digits"), labels=100, seed=0)
    plain = build_for_data("m2", labelled, 0, z_dim=4, hidden=(32,))
    assert (
        fit(plain, labelled, epochs=1, seed=0, out=tmp_path / "plain", progress=False).artifacts
        is None
    )
    assert not (tmp_path / "plain" / "confusion_matrix.csv").exists()

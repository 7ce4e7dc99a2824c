import pytest
import torch

from ppl_ssvae.data import SemiSupervisedBatches
from ppl_ssvae.errors import UserError


def _data(n_l=30, n_u=170):
    x = torch.rand(n_l + n_u, 3)
    y = torch.cat([torch.arange(n_l) % 3, torch.full((n_u,), -1)])
    return x, y


def test_epoch_is_one_pass_over_unlabelled_with_labelled_cycled():
    x, y = _data()
    batches = SemiSupervisedBatches(x, y, batch_size=20, labelled_share=0.5, seed=0)
    assert (batches.labelled_per_step, batches.unlabelled_per_step) == (10, 10)
    seen_u, n_labelled = [], 0
    for xb, yb in batches.epoch(1):
        assert (yb >= 0).sum() == 10 and len(xb) == 20
        n_labelled += int((yb >= 0).sum())
        seen_u.append(xb[yb < 0])
    seen_u = torch.cat(seen_u)
    assert len(seen_u) == 170 and len(torch.unique(seen_u, dim=0)) == 170  # every row once
    assert len(batches) == 17 and n_labelled == 170  # labelled rows cycled ~5.7 times


def test_natural_share_follows_the_data():
    x, y = _data(n_l=30, n_u=170)
    batches = SemiSupervisedBatches(x, y, batch_size=20)
    assert batches.labelled_per_step == 3 and batches.unlabelled_per_step == 17


def test_epochs_are_deterministic_and_differ():
    x, y = _data()
    b = SemiSupervisedBatches(x, y, batch_size=20, seed=5)
    first = [yb for _, yb in b.epoch(1)]
    again = [yb for _, yb in SemiSupervisedBatches(x, y, batch_size=20, seed=5).epoch(1)]
    other = [xb for xb, _ in b.epoch(2)]
    assert all(torch.equal(a, c) for a, c in zip(first, again, strict=True))
    assert not torch.equal(torch.cat(other), torch.cat([xb for xb, _ in b.epoch(1)]))


def test_fully_labelled_and_fully_unlabelled():
    x = torch.rand(50, 3)
    labelled = SemiSupervisedBatches(x, torch.arange(50) % 2, batch_size=20)
    assert len(labelled) == 3 and all((yb >= 0).all() for _, yb in labelled.epoch(1))
    unlabelled = SemiSupervisedBatches(x, torch.full((50,), -1), batch_size=20)
    assert len(unlabelled) == 3 and all((yb < 0).all() for _, yb in unlabelled.epoch(1))


def test_dynamic_binarisation_draws_fresh_binary_images():
    x, y = _data()
    b = SemiSupervisedBatches(x, y, batch_size=200, binarize=True)
    ((x1, _),) = list(b.epoch(1))
    ((x2, _),) = list(b.epoch(2))
    assert set(x1.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(x1.sort(0).values, x2.sort(0).values)


@pytest.mark.parametrize("share", ["2:1", 1.0, -0.1, "abc"])
def test_bad_share(share):
    x, y = _data()
    with pytest.raises(UserError, match="share"):
        SemiSupervisedBatches(x, y, labelled_share=share)


def test_labels_must_match_rows():
    x, y = _data()
    with pytest.raises(UserError, match=r"y has shape \(200,\) but x has 150 rows"):
        SemiSupervisedBatches(x[:150], y)
    with pytest.raises(UserError, match="one label per row"):
        SemiSupervisedBatches(x, y[:-1])


@pytest.mark.parametrize(
    "n_u, share, last",  # last: (labelled, unlabelled) rows of the last, short batch
    [(175, "natural", (1, 5)), (171, "natural", (1, 1)), (165, 0.5, (5, 5)), (178, 0.5, (8, 8))],
)
def test_last_short_batch_gets_labelled_rows_in_proportion(n_u, share, last):
    torch.manual_seed(0)
    x, y = _data(n_l=30, n_u=n_u)
    batches = SemiSupervisedBatches(x, y, batch_size=20, labelled_share=share, seed=3)
    full = (batches.labelled_per_step, batches.unlabelled_per_step)
    sizes = [(int((yb >= 0).sum()), int((yb < 0).sum())) for _, yb in batches.epoch(1)]
    assert sizes == [full] * (len(batches) - 1) + [last]
    assert batches.batch_sizes() == sizes
    seen = torch.cat([xb[yb < 0] for xb, yb in batches.epoch(1)])
    assert len(torch.unique(seen, dim=0)) == n_u  # still every unlabelled row once
    again = SemiSupervisedBatches(x, y, batch_size=20, labelled_share=share, seed=3)
    for (xa, ya), (xb, yb) in zip(batches.epoch(4), again.epoch(4), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)

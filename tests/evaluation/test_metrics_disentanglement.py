import numpy as np
import pytest
import torch
from torch import nn

from ppl_ssvae.data.shapes import Shapes
from ppl_ssvae.errors import UserError
from ppl_ssvae.evaluation.metrics import beta_vae_score

FAST = {"batch_size": 32, "num_train": 400, "num_test": 400}


@pytest.fixture(scope="module")
def shapes():
    return Shapes(image_size=16, num_scales=3, num_rotations=4, num_positions=4)


def _oracle(shapes, one_hot=False):
    """An encoder that copies the true factors of a rendered image (looked up by its pixels)."""
    codes = {row.tobytes(): f for row, f in zip(shapes.images, shapes.factors, strict=True)}
    sizes = np.array(shapes.factor_sizes)

    def encode(x):
        f = np.stack([codes[row.tobytes()] for row in x.numpy()])
        if one_hot:
            return torch.as_tensor(
                np.concatenate([np.eye(s)[f[:, k]] for k, s in enumerate(sizes)], 1)
            )
        return torch.as_tensor(f / (sizes - 1), dtype=torch.float32)

    return encode


@pytest.mark.parametrize("one_hot", [False, True])
def test_true_factors_score_one(shapes, one_hot):
    result = beta_vae_score(_oracle(shapes, one_hot), shapes, seed=0, **FAST)
    assert result["beta_vae_score"] > 0.95 and result["beta_vae_train_accuracy"] > 0.95


def test_random_encoder_scores_chance(shapes):
    generator = torch.Generator().manual_seed(0)

    def random_encoder(x):
        return torch.randn(len(x), 10, generator=generator)

    score = beta_vae_score(random_encoder, shapes, seed=0, **FAST)["beta_vae_score"]
    assert abs(score - 1 / shapes.num_factors) < 0.1


def test_entangled_factors_score_below_one(shapes):
    # one coordinate mixes two factors: a shared shape no longer leaves a block at zero
    oracle = _oracle(shapes)

    def mixed(x):
        z = oracle(x)
        return torch.stack([z[:, 0] + z[:, 1], z[:, 2], z[:, 3], z[:, 4]], 1)

    score = beta_vae_score(mixed, shapes, seed=0, **FAST)["beta_vae_score"]
    assert 0.4 < score < 0.95


def test_score_is_seeded_and_accepts_modules_and_distributions(shapes):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(256, 8))
    net.train()

    def gaussian(x):
        return torch.distributions.Normal(net(x), 1.0)

    a = beta_vae_score(net, shapes, seed=1, **FAST)
    b = beta_vae_score(net, shapes, seed=1, **FAST)
    assert a == b and net.training  # restored after eval-mode scoring
    assert beta_vae_score(gaussian, shapes, seed=1, **FAST) == a  # the mean is used
    # a small chunk splits points over several encoder calls without changing the draw
    assert beta_vae_score(net, shapes, seed=1, chunk=100, **FAST) == a


def test_bad_arguments(shapes):
    with pytest.raises(UserError, match="batch_size must be a positive integer"):
        beta_vae_score(lambda x: x, shapes, batch_size=0)
    with pytest.raises(UserError, match="num_train=1 drew a single factor"):
        beta_vae_score(lambda x: x, shapes, num_train=1, num_test=1, batch_size=2)

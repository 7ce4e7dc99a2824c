"""Generation figures (Berkhahn et al. Figs 2, 3): one row per class, tiled in order."""

import matplotlib.image
import numpy as np
import pytest
import torch

from ppl_ssvae.errors import UserError
from ppl_ssvae.inspect import generation_grid
from ppl_ssvae.models import build

K, H, W, Z = 3, 3, 4, 2


def _pi_vae(**kw):
    return build("pi-vae", input_dim=H * W, num_classes=K, z_dim=Z, hidden=(8,), **kw)


def test_grid_rows_are_classes_and_png_is_written(tmp_path):
    torch.manual_seed(0)
    model, n = _pi_vae(), 5
    model.train()
    path = tmp_path / "figs" / "grid.png"
    grid = generation_grid(model, n, path, image_shape=(H, W), class_names=["a", "b", "c"])

    assert grid.shape == (K * H, n * W) and grid.min() >= 0.0 and grid.max() <= 1.0
    assert model.training  # the caller's mode comes back
    png = matplotlib.image.imread(path)
    assert png.ndim == 3 and png.shape[2] in (3, 4) and png.shape[0] > K * H

    torch.manual_seed(0)
    for c in range(K):  # block (c, j) is the j-th mean image of class c, same draws of z
        expected = model.sample(n, y=c, mean=True).reshape(n, H, W)
        blocks = grid[c * H : (c + 1) * H].reshape(H, n, W).transpose(1, 0, 2)
        np.testing.assert_allclose(blocks, expected.numpy(), rtol=1e-6)


def test_grid_is_seeded_and_leaves_the_global_rng_alone(tmp_path):
    model = _pi_vae()
    state = torch.get_rng_state()
    first = generation_grid(model, 2, tmp_path / "a.png", (H, W), seed=4)
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(
        first, generation_grid(model, 2, tmp_path / "b.png", (H, W), seed=4)
    )
    assert not np.array_equal(first, generation_grid(model, 2, tmp_path / "c.png", (H, W), seed=5))


def test_label_latent_models_and_colour_images(tmp_path):
    model = build("m2", input_dim=3 * H * W, num_classes=K, z_dim=Z, hidden=(8,))
    grid = generation_grid(model, 2, tmp_path / "m2.png", image_shape=(3, H, W), mean=False)
    assert grid.shape == (K * H, 2 * W, 3)
    assert set(np.unique(grid)) <= {0.0, 1.0}  # pixels sampled from the Bernoulli


@pytest.mark.parametrize(
    "config, kwargs, match",
    [
        ({"variant": "eu"}, {}, "does not read pi"),
        ({"pi_to_decoder": False}, {}, "does not read pi"),
        ({"variant": "es"}, {}, "no decoder"),
        ({}, {"image_shape": (4, 4)}, "input_dim"),
        ({}, {"class_names": ["a"]}, "class_names"),
        ({}, {"n_per_class": 0}, "n_per_class"),
    ],
)
def test_bad_requests_raise_user_errors(tmp_path, config, kwargs, match):
    kwargs = {"n_per_class": 2, "image_shape": (H, W), **kwargs}
    with pytest.raises(UserError, match=match):
        generation_grid(_pi_vae(**config), path=tmp_path / "x.png", **kwargs)

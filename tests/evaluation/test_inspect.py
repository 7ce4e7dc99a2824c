"""Generation figures (Berkhahn et al. Figs 2, 3): one row per class, tiled in order."""

import matplotlib.image
import numpy as np
import pytest
import torch

from ppl_ssvae.errors import UserError
from ppl_ssvae.evaluation.inspect import generation_grid
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


# -- posterior as InferenceData, encode/decode, pictures -------------------------------------

D_IMG, K_IMG = 16, 3  # 4 x 4 images, three classes


def _tiny(name="m2", **kw):
    return build(name, input_dim=D_IMG, num_classes=K_IMG, z_dim=2, hidden=(8,), **kw)


def _rows(n=6):
    x = torch.rand(n, D_IMG, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, -1, 2, -1, 1, -1][:n])
    return x, y


@pytest.mark.parametrize("name, guide", [("m2", "gaussian"), ("adgm", "gaussian"),
                                         ("gmdgm", "maf"), ("latent", "gaussian")])  # fmt: skip
def test_posterior_groups_dims_and_observed_labels(name, guide):
    from ppl_ssvae.evaluation.inspect import posterior

    model, (x, y) = _tiny(name, guide=guide), _rows()
    exact = name != "latent"
    idata = posterior(model, x, y, num_samples=7, exact_y=exact, class_names=["a", "b", "c"])
    post = idata.posterior
    assert set(idata.groups()) >= {"posterior", "posterior_predictive", "log_likelihood",
                                   "observed_data", "constant_data"}  # fmt: skip
    assert post["y"].dims == ("chain", "draw", "row") and post["y"].shape == (1, 7, 6)
    assert post["z"].dims == ("chain", "draw", "row", "z_dim") and post["z"].shape == (1, 7, 6, 2)
    assert ("a" in post) == (name == "adgm")
    assert idata.posterior_predictive["x"].shape == (1, 7, 6, D_IMG)
    assert idata.log_likelihood["x"].shape == (1, 7, 6)
    assert list(idata.constant_data["class"].values) == ["a", "b", "c"]
    draws = post["y"].values[0]
    labelled = y.numpy() >= 0
    assert (draws[:, labelled] == y.numpy()[labelled]).all()  # observed rows keep their label
    if exact:
        assert (post["y_exact"].values[0][:, labelled] == y.numpy()[labelled]).all()
    assert ((draws >= 0) & (draws < K_IMG)).all()


def test_posterior_is_seeded_and_netcdf_round_trips(tmp_path):
    import arviz as az

    from ppl_ssvae.evaluation.inspect import posterior

    model, (x, y) = _tiny(), _rows()
    first = posterior(model, x, y, num_samples=5, seed=3)
    again = posterior(model, x, y, num_samples=5, seed=3)
    np.testing.assert_array_equal(first.posterior["z"].values, again.posterior["z"].values)
    first.to_netcdf(str(tmp_path / "p.nc"))
    back = az.from_netcdf(str(tmp_path / "p.nc"))
    np.testing.assert_array_equal(back.posterior["y"].values, first.posterior["y"].values)


def test_latent_label_draws_follow_a_hand_set_q_y():
    """With the classifier head's weights zeroed and its bias set, q(y|x) is known exactly:
    the unlabelled rows' draws must match it within sampling error."""
    from ppl_ssvae.evaluation.inspect import posterior

    model, (x, y) = _tiny(), _rows()
    probs = torch.tensor([0.6, 0.3, 0.1])
    last = [m for m in model.q.q_y.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(probs.log())
    np.testing.assert_allclose(model.classify(x).numpy(), probs.expand(6, 3).numpy(), rtol=1e-5)
    s = 2000
    draws = posterior(model, x, y, num_samples=s, seed=0).posterior["y"].values[0]
    latent = draws[:, (y < 0).numpy()].ravel()  # 3 rows x 2000 draws
    freq = np.bincount(latent, minlength=3) / latent.size
    sd = np.sqrt(probs.numpy() * (1 - probs.numpy()) / latent.size)
    assert (np.abs(freq - probs.numpy()) < 4 * sd).all(), freq


def test_encode_and_decode_shapes_for_every_model():
    x, _ = _rows()
    for name in ["m2", "adgm", "gmdgm", "agmdgm", "latent", "latent-simplified", "pi-vae"]:
        model = _tiny(name)
        enc = model.encode(x)
        assert enc["z_mean"].shape == (6, 2) and enc["y_probs"].shape == (6, K_IMG)
        assert ("a_mean" in enc) == (name in ("adgm", "agmdgm"))
        p_x = model.decode(enc["z_mean"], torch.zeros(6, dtype=torch.long))
        assert p_x.mean.shape == (6, D_IMG)


def test_kl_activity_per_class():
    from ppl_ssvae.evaluation.inspect import kl_activity

    model, (x, _) = _tiny(), _rows()
    act = kl_activity(model, x, torch.tensor([0, 0, 1, 1, 1, 2]))
    assert sorted(act) == [0, 1, 2] and all(
        a.shape == (2,) and (a >= 0).all() for a in act.values()
    )


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny M2 trained for one epoch on digits, as a run directory."""
    import pyro

    from ppl_ssvae import data
    from ppl_ssvae.training import fit

    pyro.set_rng_seed(0)
    split = data.semi_supervised_split(data.load("digits"), labels=50, seed=0)
    model = build("m2", input_dim=split.input_dim, num_classes=split.num_classes, z_dim=3,
                  hidden=(16,))  # fmt: skip
    out = tmp_path_factory.mktemp("run")
    fit(model, split, epochs=1, out=out, overwrite=True, progress=False)
    return out, model, split


def test_every_picture_returns_a_figure(trained_run):
    from matplotlib.figure import Figure

    from ppl_ssvae.evaluation import inspect

    run, model, split = trained_run
    x, y = split.x_test[:60], split.y_test[:60]
    scores = {"m2": torch.randn(60)}
    figures = [
        inspect.confusion_figure(model, x, y, split.class_names),
        inspect.latent_figure(model, x, y, "pca"),
        inspect.latent_figure(model, x, y, "tsne"),
        inspect.samples_figure(model, 3, (8, 8)),
        inspect.analogy_figure(model, x[:4], (8, 8)),
        inspect.roc_figure(scores, y == 0),
        inspect.training_figure(run),
    ]
    assert all(isinstance(f, Figure) for f in figures)


def test_render_model_without_graphviz_is_one_clear_error(trained_run, monkeypatch):
    import builtins

    from ppl_ssvae.evaluation import inspect

    _, model, split = trained_run
    real_import = builtins.__import__

    def no_graphviz(name, *args, **kwargs):
        if name == "graphviz":
            raise ImportError("No module named 'graphviz'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_graphviz)
    with pytest.raises(UserError, match="needs graphviz"):
        inspect.render_model_figure(model, split.x_test[:2], torch.tensor([0, -1]))


def test_render_model_draws_the_observed_and_enumerated_label_in_one_plate(trained_run):
    import numpy as np
    import pyro

    from ppl_ssvae.evaluation import inspect

    _, model, split = trained_run
    x, y = split.x_test[:2], torch.tensor([0, -1])
    source = pyro.render_model(model.model, model_args=(x, y)).source
    # obs_mask splits y into its observed and latent halves, inside the data plate
    assert "y_observed" in source and "y_unobserved" in source and "cluster_data" in source
    figure = inspect.render_model_figure(model, x, y)
    image = np.asarray(figure.axes[0].images[0].get_array())
    assert image.shape[0] > 50 and image.std() > 0  # a drawn graph, not a blank canvas


def test_write_inspection_writes_pngs_and_netcdf(trained_run, tmp_path):
    from ppl_ssvae.evaluation.inspect import write_inspection

    run, _, _ = trained_run
    written = write_inspection(run, tmp_path / "out", rows=4, num_samples=3, embed_rows=60)
    for name in ("training_curves", "confusion", "latent_tsne", "samples", "analogies"):
        assert written[name].stat().st_size > 0
    assert written["posterior"].stat().st_size > 0

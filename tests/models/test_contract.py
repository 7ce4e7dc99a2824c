"""One contract, every model in the registry (Willetts/Kingma models, pi-VAE, ...)."""

import json
import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

from ppl_ssvae.data import Dataset, semi_supervised_split
from ppl_ssvae.errors import UserError
from ppl_ssvae.models import MODELS, build, from_config
from ppl_ssvae.training import fit

D, K = 10, 3
SMALL = {"z_dim": 3, "hidden": (8,)}


def _model(name, **config):
    pyro.set_rng_seed(0)
    return build(name, input_dim=D, num_classes=K, **SMALL, **config)


def _batch(kind):
    x = torch.bernoulli(torch.full((6, D), 0.4))
    y = {"labelled": [0, 1, 2, 0, 1, 2], "unlabelled": [-1] * 6, "mixed": [0, -1, 2, -1, 1, -1]}[
        kind
    ]
    return x, torch.tensor(y)


@pytest.fixture(params=sorted(MODELS))
def name(request):
    return request.param


@pytest.mark.parametrize("kind", ["labelled", "unlabelled", "mixed"])
def test_svi_step_on_any_batch(name, kind):
    model = _model(name)
    svi = pyro.infer.SVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-2}), model.make_elbo())
    losses = [svi.step(*_batch(kind)) for _ in range(3)]
    assert all(math.isfinite(loss) for loss in losses)


def test_every_parameter_gets_a_gradient(name):
    model = _model(name)
    model.make_elbo().loss_and_grads(model.model, model.guide, *_batch("mixed"))
    missing = [
        n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert missing == []


def test_classify_and_sample(name):
    """As far as the model's capabilities say: M1, an unsupervised VAE, refuses both."""
    model = _model(name)
    if model.can_classify:
        probs = model.classify(torch.rand(7, D))
        assert probs.shape == (7, K) and torch.allclose(probs.sum(-1), torch.ones(7))
    else:
        with pytest.raises(UserError, match="cannot classify"):
            model.classify(torch.rand(7, D))
    assert model.sample(4).shape == (4, D)
    if not model.generates_by_class:
        with pytest.raises(UserError, match="no class"):
            model.sample(4, y=2)
        return
    assert model.sample(4, y=2).shape == (4, D)
    assert model.sample(4, y=torch.tensor([0, 1, 2, 0]), mean=True).shape == (4, D)


def _same_predictions(a, b, x):
    """Same class probabilities, or for a model that cannot classify the same latent means."""
    if a.can_classify:
        return torch.equal(a.classify(x), b.classify(x))
    return torch.equal(a.encode(x)["z_mean"], b.encode(x)["z_mean"])


def test_save_load_round_trip(name, tmp_path):
    model = _model(name)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    config = json.loads(json.dumps(model.to_config()))
    rebuilt = from_config(config)
    rebuilt.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert _same_predictions(rebuilt, model, torch.rand(5, D))


def test_bf16_autocast_keeps_every_log_density_float32(name):
    """Under bf16 autocast (fit(precision="bf16")) the layers compute in bfloat16, but every
    sample site's log-density, the loss and every gradient stay float32, and the loss is
    the float32 loss up to bfloat16 rounding of the layers' outputs."""
    model = _model(name)
    x, y = _batch("mixed")
    elbo = model.make_elbo()
    pyro.set_rng_seed(1)
    exact = elbo.differentiable_loss(model.model, model.guide, x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        guide_trace = poutine.trace(model.guide).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(x, y)
        pyro.set_rng_seed(1)
        mixed = elbo.differentiable_loss(model.model, model.guide, x, y)
        mixed.backward()
    wrong = [
        site["name"]
        for trace in (guide_trace, model_trace)
        for site in trace.nodes.values()
        if site["type"] == "sample" and site["fn"].log_prob(site["value"]).dtype != torch.float32
    ]
    assert wrong == []
    assert mixed.dtype == torch.float32
    assert torch.allclose(mixed, exact, rtol=0.02)
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("labels", [0, None])  # no labels at all / every label
def test_trains_with_no_labels_and_all_labels(name, labels):
    rng = np.random.default_rng(0)
    x = (rng.random((120, D)) < 0.3).astype(np.float32)
    y = rng.integers(0, K, 120)
    data = semi_supervised_split(
        Dataset("toy", x, y, x[:20], y[:20], ["a", "b", "c"], default_validation_size=20),
        labels=labels,
    )
    result = fit(_model(name), data, epochs=1, batch_size=50, progress=False)
    assert math.isfinite(result.history[0]["train_loss"])


def _kernels_after_checking_zero_biases(model):
    """``(module, kernel)`` pairs of every non-normalisation layer; asserts biases are 0."""
    kernels = []
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._NormBase):
            continue
        for p_name, p in module.named_parameters(recurse=False):
            if p_name.startswith("bias"):
                assert not p.any(), f"{module_name}.{p_name}"
            else:
                kernels.append((module, p.detach()))
    return kernels


def test_init_std_reaches_every_kernel_and_bias(name):
    """Willetts et al. App. B initialisation as its text reads: kernels ~ N(0, 0.001^2),
    biases 0."""
    torch.manual_seed(0)
    model = _model(name, init_std=1e-3, init_layers="all")
    values = torch.cat([p.flatten() for _, p in _kernels_after_checking_zero_biases(model)])
    assert values.abs().max() < 0.01 and 0.8e-3 < values.std() < 1.2e-3


def test_init_layers_heads_draws_only_output_layers_small(name):
    """The authors' code (Willetts et al.): N(0, 0.001^2) for the layers that output a
    distribution's parameters, Glorot-normal for every other kernel, zero biases."""
    torch.manual_seed(0)
    model = _model(name, init_std=1e-3, init_layers="heads")
    heads, hidden = 0, 0
    for module, p in _kernels_after_checking_zero_biases(model):
        if getattr(module, "is_head", False):
            heads += 1
            assert p.abs().max() < 0.01, f"{module} is an output layer"
        elif p.dim() == 2:
            hidden += 1
            glorot = (2.0 / sum(p.shape)) ** 0.5
            assert p.abs().max() > 0.5 * glorot, f"{module} is not Glorot-normal"
    assert heads and hidden


def test_unknown_init_layers_is_a_user_error():
    from ppl_ssvae.errors import UserError

    with pytest.raises(UserError, match="init_layers"):
        _model("m2", init_std=1e-3, init_layers="middle")
    with pytest.raises(UserError, match="init_layers"):  # not ignored without init_std
        _model("m2", init_layers="middle")


# -- every guide family on every model that takes it ------------------------------------------
# Pairs come from the registries: a new model or guide family is picked up with no edits here.
from ppl_ssvae.guides import GUIDES, build_latent_guide  # noqa: E402

ALLOWED = [(m, g) for m in sorted(MODELS) for g in GUIDES if MODELS[m].guide_latents]
REFUSED = [(m, g) for m in sorted(MODELS) for g in GUIDES
           if not MODELS[m].guide_latents and g != "gaussian"]  # fmt: skip


def _ids(pair):
    return "-".join(pair)


@pytest.fixture(params=ALLOWED, ids=_ids)
def pair(request):
    return request.param


def _guided(pair, **config):
    name, guide = pair
    return _model(name, guide=guide, **config)


def test_every_pair_has_a_finite_loss_on_any_batch(pair):
    model = _guided(pair)
    elbo = model.make_elbo()  # the model's default objective
    for kind in ("labelled", "unlabelled", "mixed"):
        pyro.set_rng_seed(1)
        assert math.isfinite(elbo.loss(model.model, model.guide, *_batch(kind))), kind


def test_every_guide_parameter_gets_a_gradient(pair):
    """After one step: a flow starts as the identity with its last layers at zero, so the
    layers before them get their gradient from the second step on."""
    model = _guided(pair)
    svi = pyro.infer.SVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-2}), model.make_elbo())
    svi.step(*_batch("mixed"))
    model.zero_grad()
    model.make_elbo().loss_and_grads(model.model, model.guide, *_batch("mixed"))
    missing = [
        n for n, p in model.q.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert missing == []


def test_latent_guides_broadcast_over_the_enumerated_label(pair):
    """With y as class ids (K, 1) and x as (B, D), q(z|.) has batch shape (K, B)."""
    model = _guided(pair)
    q, c = model.q, model.config
    x, labels = torch.rand(5, D), torch.arange(K)[:, None]
    inputs = {"x": x}
    if "a" in model.guide_latents:
        q_a = q.q_a(x=x)
        assert q_a.batch_shape == (5,) and q_a.event_shape == (c.a_dim,)
        inputs["a"] = q_a.rsample()
        assert inputs["a"].shape == (5, c.a_dim)
    if hasattr(q, "q_y") and "y" in q.q_z.inputs:
        inputs["y"] = labels
    q_z = q.q_z(**inputs)
    batch = (K, 5) if "y" in inputs else (5,)
    assert q_z.batch_shape == batch and q_z.event_shape == (c.z_dim,)
    z = q_z.rsample()
    assert z.shape == (*batch, c.z_dim) and q_z.log_prob(z).shape == batch


def test_every_pair_round_trips_through_its_config(pair, tmp_path):
    model = _guided(pair)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    config = json.loads(json.dumps(model.to_config()))
    assert config["guide"] == pair[1] and isinstance(config["guide_args"], dict)
    rebuilt = from_config(config)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    rebuilt.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    assert _same_predictions(rebuilt, model, torch.rand(5, D))


@pytest.mark.parametrize("refused", REFUSED, ids=_ids)
def test_refused_pairs_raise_a_user_error(refused):
    with pytest.raises(UserError, match="takes no guide"):
        _model(refused[0], guide=refused[1])


def test_a_model_with_a_fixed_guide_refuses_a_module_too():
    fixed = [m for m in MODELS if not MODELS[m].guide_latents]
    assert fixed  # the pi-VAE
    for name in fixed:
        with pytest.raises(UserError, match="takes no guide module"):
            _model(name, guide=build_latent_guide("gaussian", 3, {"x": D}, (8,)))


def test_unknown_guides_and_guide_args_are_one_line_user_errors():
    with pytest.raises(UserError, match="unknown guide 'nope'; choose one of gaussian"):
        _model("m2", guide="nope")
    with pytest.raises(UserError, match=r"no guide_args \['depth'\]; valid: transforms"):
        _model("m2", guide="maf", guide_args={"depth": 2})
    with pytest.raises(UserError, match="transforms must be an integer >= 1"):
        _model("m2", guide="maf", guide_args={"transforms": 0})
    with pytest.raises(UserError, match="valid: none"):
        _model("m2", guide="gaussian", guide_args={"rank": 2})
    model = _model("m2", guide="lowrank-gaussian", guide_args={"rank": 2})
    assert model.to_config()["guide_args"] == {"rank": 2}
    assert model.q.q_z.head.rank == 2


def _custom_z(name):
    """A user's q(z|.) module for model ``name``: here built by hand from the registry."""
    default = _model(name)
    c = default.config
    sizes = {"x": D, "y": K, "a": getattr(c, "a_dim", None)}
    # What the model's own q(z|.) reads: a user's module must read the same.
    inputs = {n: sizes[n] for n in default.q.q_z.inputs}
    return build_latent_guide("realnvp", c.z_dim, inputs, (8,))


@pytest.mark.parametrize("name", [m for m in sorted(MODELS) if MODELS[m].guide_latents])
def test_a_custom_module_is_used_recorded_and_needed_again(name, tmp_path):
    module = _custom_z(name)
    model = _model(name, guide=module)
    assert model.q.q_z is module
    config = json.loads(json.dumps(model.to_config()))
    assert config["guide"] == "custom" and config["guide_args"] == {}
    pyro.set_rng_seed(1)
    assert math.isfinite(model.make_elbo().loss(model.model, model.guide, *_batch("mixed")))
    with pytest.raises(UserError, match="pass the same module again"):
        from_config(config)
    again = from_config(config, guide=_custom_z(name))
    assert again.state_dict().keys() == model.state_dict().keys()
    again.load_state_dict(model.state_dict())
    assert _same_predictions(again, model, torch.rand(5, D))
    with pytest.raises(UserError, match="goes with a 'custom' config only"):
        from_config({**config, "guide": "maf"}, guide=module)
    cls = MODELS[name]
    fields = {k: v for k, v in config.items() if k not in ("model", "guide", "guide_args")}
    with pytest.raises(UserError, match="not both"):
        cls(cls.config_class.from_dict({**fields, "guide": "maf"}), guide=module)


def test_auxiliary_models_take_one_module_per_continuous_latent():
    c = _model("adgm").config
    q_z = build_latent_guide("maf", c.z_dim, {"x": D, "a": c.a_dim, "y": K}, (8,))
    q_a = build_latent_guide("nsf", c.a_dim, {"x": D}, (8,))
    model = _model("adgm", guide={"z": q_z, "a": q_a})
    assert model.q.q_z is q_z and model.q.q_a is q_a
    only_z = _model("adgm", guide=q_z)
    assert only_z.q.q_z is q_z and type(only_z.q.q_a.head).__name__ == "DiagonalGaussian"
    with pytest.raises(UserError, match="discrete latent"):
        _model("adgm", guide={"y": q_z})


# -- the public contract, for a researcher's own model ------------------------------------------
def test_the_public_contract_passes_on_every_registered_model(name):
    from ppl_ssvae.testing import check_model

    done = check_model(name, guides=["gaussian"])
    assert f"{name}/gaussian/round_trip" in done and f"{name}/training" in done


def test_a_registered_user_model_is_checked_and_trained_by_name(tmp_path):
    """A researcher's model (here a subclass of M2 under its own name), registered with
    one decorator: the contract checks it, every guide included, and the CLI trains it."""
    from ppl_ssvae.models import M2, register_model
    from ppl_ssvae.testing import check_model

    @register_model
    class UserM2(M2):
        name = "user-m2"

    try:
        assert len(check_model("user-m2")) > 4
        from ppl_ssvae.cli import main

        args = ["train", "--model", "user-m2", "--dataset", "digits", "--labels", "50",
                "--z-dim", "4", "--hidden", "16", "--epochs", "1", "--no-progress",
                "--out", str(tmp_path / "run")]  # fmt: skip
        assert main(args) == 0
        assert (
            json.loads((tmp_path / "run" / "config.json").read_text())["model"]["model"]
            == "user-m2"
        )
    finally:
        MODELS.pop("user-m2")


def test_a_broken_model_fails_the_contract_with_its_name():
    from ppl_ssvae.models import M2, register_model
    from ppl_ssvae.testing import check_model

    @register_model
    class Silent(M2):
        name = "silent-m2"

        def classify(self, x, batch_size=2048):
            return torch.zeros(len(x), self.config.num_classes)

    try:
        with pytest.raises(AssertionError, match="silent-m2 .*rows not summing to 1"):
            check_model("silent-m2", guides=["gaussian"])
    finally:
        MODELS.pop("silent-m2")

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


# -- every net family on every model that takes nets by name, with every guide ---------------
# Triples come from the registries too. Image nets run on tiny 8x8 images with few channels.
from ppl_ssvae.models.config import NetConfig  # noqa: E402
from ppl_ssvae.nn import NETS  # noqa: E402

NET_MODELS = [m for m in sorted(MODELS) if issubclass(MODELS[m].config_class, NetConfig)]
IMAGE, PIXELS = (1, 8, 8), 64
NET_ARGS = {"conv": {"channels": [4, 8]}}
# dense is every pair above; here the other families that condition on the label.
TRIPLES = [(m, g, n) for m in NET_MODELS for g in GUIDES for n in NETS
           if n != "dense" and NETS[n].conditional and MODELS[m].guide_latents]  # fmt: skip


@pytest.fixture(params=TRIPLES, ids=lambda t: "-".join(t))
def triple(request):
    return request.param


def _netted(triple, **config):
    name, guide, net = triple
    pyro.set_rng_seed(0)
    return build(name, input_dim=PIXELS, num_classes=K, **SMALL, guide=guide, net=net,
                 net_args=NET_ARGS.get(net, {}), image_shape=IMAGE, **config)  # fmt: skip


def _image_batch(kind):
    _, y = _batch(kind)
    return torch.bernoulli(torch.full((len(y), PIXELS), 0.4)), y


def test_every_triple_trains_and_every_parameter_gets_a_gradient(triple):
    model = _netted(triple)
    elbo = model.make_elbo()
    for kind in ("labelled", "unlabelled", "mixed"):
        pyro.set_rng_seed(1)
        assert math.isfinite(elbo.loss(model.model, model.guide, *_image_batch(kind))), kind
    svi = pyro.infer.SVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    svi.step(*_image_batch("mixed"))  # a flow's first layers get gradients from step two
    model.zero_grad()
    elbo.loss_and_grads(model.model, model.guide, *_image_batch("mixed"))
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []
    probs = model.classify(torch.rand(7, PIXELS))
    assert probs.shape == (7, K) and torch.allclose(probs.sum(-1), torch.ones(7))
    assert model.sample(4, y=2).shape == (4, PIXELS)


def test_every_triple_round_trips_through_its_config(triple, tmp_path):
    model = _netted(triple)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    config = json.loads(json.dumps(model.to_config()))
    assert (config["guide"], config["net"]) == triple[1:]
    assert config["net_args"] == NET_ARGS.get(triple[2], {}) and config["image_shape"] == [1, 8, 8]
    rebuilt = from_config(config)
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    rebuilt.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    x = torch.rand(5, PIXELS)
    assert torch.equal(rebuilt.classify(x), model.classify(x))


@pytest.mark.parametrize("name", NET_MODELS)
def test_a_config_from_before_nets_had_names_loads_as_dense(name, tmp_path):
    """A config.json written before the ``net`` fields existed rebuilds the dense networks,
    its checkpoint loads into them and they classify alike."""
    model = _model(name)
    config = json.loads(json.dumps(model.to_config()))
    assert (config["net"], config["net_args"], config["image_shape"]) == ("dense", {}, None)
    old = {k: v for k, v in config.items() if k not in ("net", "net_args", "image_shape")}
    rebuilt = from_config(old)
    assert rebuilt.config.net == "dense"
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(5, D)
    assert torch.equal(rebuilt.classify(x), model.classify(x))


def test_dense_m2_keeps_the_parameter_names_it_always_had():
    """The names of the checkpoints written before nets had names (M2, 10-8-3, 3 classes)."""
    assert [(k, tuple(v.shape)) for k, v in _model("m2").state_dict().items()] == [
        ("prior", (3,)),
        ("p_x.trunk.layers.0.weight", (8, 3)), ("p_x.trunk.layers.0.bias", (8,)),
        ("p_x.trunk.y_layer.weight", (3, 8)),
        ("p_x.head.logits.weight", (10, 8)), ("p_x.head.logits.bias", (10,)),
        ("q.q_y.net.0.0.weight", (8, 10)), ("q.q_y.net.0.0.bias", (8,)),
        ("q.q_y.net.1.weight", (3, 8)), ("q.q_y.net.1.bias", (3,)),
        ("q.q_z.trunk.layers.0.weight", (8, 10)), ("q.q_z.trunk.layers.0.bias", (8,)),
        ("q.q_z.trunk.y_layer.weight", (3, 8)),
        ("q.q_z.head.loc.weight", (3, 8)), ("q.q_z.head.loc.bias", (3,)),
        ("q.q_z.head.scale.weight", (3, 8)), ("q.q_z.head.scale.bias", (3,)),
    ]  # fmt: skip


@pytest.mark.parametrize("name", NET_MODELS)
def test_the_conv_trunks_run_once_per_row_under_enumeration(name):
    """Every conv trunk sees the B data rows once per loss, not K x B: its features enter
    the context encoders' W_x block, which broadcasts over the enumerated label. The
    decoder, after y, does run on K x B rows."""
    model = _netted((name, "gaussian", "conv"))
    rows = {"trunks": [], "decoder": []}
    for module in model.modules():
        if type(module).__name__ == "ConvTrunk":
            module.register_forward_hook(lambda m, i, o: rows["trunks"].append(i[0].shape[:-1]))
    if type(model.p_x).__name__ == "DeconvDecoder":
        model.p_x.deconvs.register_forward_hook(lambda m, i, o: rows["decoder"].append(len(i[0])))
    x, y = _image_batch("unlabelled")
    model.make_elbo().loss(model.model, model.guide, x, y)
    assert rows["trunks"] and set(rows["trunks"]) == {(6,)}
    if model.label_is_latent:
        assert rows["decoder"] == [K * 6]


def test_image_nets_refuse_data_that_is_not_images_in_one_line():
    for shape in (None, (1, 4, 4), (8, 8, 1, 1)):
        with pytest.raises(UserError) as error:
            build("m2", input_dim=PIXELS - 1, num_classes=K, **SMALL, net="conv",
                  image_shape=shape)  # fmt: skip
        message = str(error.value)
        assert "\n" not in message and "needs x as images" in message
        assert "--image-shape" in message and "net='dense'" in message


def test_image_nets_get_the_image_shape_from_the_data_or_refuse_a_feature_mask():
    from ppl_ssvae.data.datasets import load_digits
    from ppl_ssvae.protocol import build_for_data

    digits = semi_supervised_split(load_digits(), labels=50)
    model = build_for_data("m2", digits, net="conv", net_args={"channels": [4]}, **SMALL)
    assert model.config.image_shape == (1, 8, 8)
    masked = semi_supervised_split(load_digits(), labels=50, std_threshold=0.1)
    with pytest.raises(UserError, match="needs x as images.*feature mask"):
        build_for_data("m2", masked, net="conv", **SMALL)


@pytest.mark.parametrize("name", NET_MODELS)
def test_nets_that_cannot_read_the_label_are_refused_in_one_line(name):
    with pytest.raises(UserError, match="net 'pi-vae-cnn' reads one code.*takes: dense, conv"):
        build(name, input_dim=PIXELS, num_classes=K, **SMALL, net="pi-vae-cnn", image_shape=IMAGE)


@pytest.mark.parametrize("name", NET_MODELS)
def test_init_std_reaches_the_conv_kernels_too(name):
    torch.manual_seed(0)
    model = _netted((name, "gaussian", "conv"), init_std=1e-3, init_layers="all")
    kernels = _kernels_after_checking_zero_biases(model)
    assert any(p.dim() == 4 for _, p in kernels)
    values = torch.cat([p.flatten() for _, p in kernels])
    assert values.abs().max() < 0.01 and 0.8e-3 < values.std() < 1.2e-3

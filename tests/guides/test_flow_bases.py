"""Flows refine the Gaussian (ppl_ssvae.guides.flows): at construction every flow family is
the Gaussian guide itself; ``base="standard"`` and configs saved before bases existed
rebuild the flows as they were trained."""

from __future__ import annotations

import json
from pathlib import Path

import pyro
import pytest
import torch

from ppl_ssvae.errors import UserError
from ppl_ssvae.guides import GUIDES, build_latent_guide
from ppl_ssvae.guides.flows import LEGACY_FAMILIES
from ppl_ssvae.models import build, from_config

FLOWS = [name for name in GUIDES if "base" in GUIDES[name].defaults]
LEGACY = Path(__file__).parent / "fixtures" / "legacy_flows.pt"
K, D = 4, 6  # classes (enumerated), latent size


def _guide(name: str, **guide_args):
    torch.manual_seed(0)  # the same trunk and Gaussian head for every family
    return build_latent_guide(name, D, {"x": 5, "y": K}, (16,), **guide_args)


def _tolerance(name: str) -> float:
    # Pyro's spline fixes its end knots' slope at 1 - 1e-3, so its outer bins move the
    # density by up to 1e-3 per unit and step; every other family is exactly the identity.
    return 1e-3 * D * GUIDES[name].defaults["transforms"] if name == "pyro-spline" else 1e-5


def test_every_flow_family_takes_a_base():
    assert set(FLOWS) == set(GUIDES) - {"gaussian", "full-gaussian", "lowrank-gaussian"}
    assert all(GUIDES[name].defaults["base"] == "gaussian" for name in FLOWS)


@pytest.mark.parametrize("name", FLOWS)
def test_a_new_flow_is_the_gaussian_guide_under_enumeration(name):
    """Same trunk and head weights, transforms at the identity: log q(z|x, y) of the flow
    equals the Gaussian guide's on the flow's own draws and on the Gaussian's draws, for
    every enumerated class (batch shape (K, B))."""
    x, y = torch.rand(7, 5), torch.arange(K)[:, None]
    gaussian, flow = _guide("gaussian")(x=x, y=y), _guide(name)(x=x, y=y)
    assert flow.batch_shape == (K, 7)
    torch.manual_seed(1)
    with torch.no_grad():
        z = flow.rsample()
        assert torch.allclose(flow.log_prob(z), gaussian.log_prob(z), atol=_tolerance(name))
        if name not in ("planar", "radial"):  # they score their own draws only
            z = 2.0 * gaussian.sample()
            assert torch.allclose(flow.log_prob(z), gaussian.log_prob(z), atol=_tolerance(name))
        # the same draws too: the flow moves the Gaussian's draw by (nearly) nothing
        torch.manual_seed(2)
        drawn = flow.rsample()
        torch.manual_seed(2)
        assert torch.allclose(drawn, gaussian.rsample(), atol=_tolerance(name))


@pytest.mark.parametrize("name", FLOWS)
def test_a_flow_trained_a_step_is_no_longer_the_gaussian(name):
    """The identity start is a starting point, not a fixed point: one gradient step on
    -log q moves the transforms (their zeroed last layers get a gradient)."""
    q = _guide(name)
    x, y = torch.rand(7, 5), torch.arange(K)[:, None]
    torch.manual_seed(1)
    z = 3.0 * torch.randn(K, 7, D)  # far from the base's mass: a direction to move in
    optimizer = torch.optim.SGD(q.head.parameters(), lr=0.1)
    d = q(x=x, y=y)
    if name in ("planar", "radial"):
        z = d.rsample()
    (-d.log_prob(z).sum()).backward()
    moved = [n for n, p in q.head.named_parameters() if ".base." not in f".{n}" and p.grad.any()]
    assert moved, "no transform parameter has a gradient at the identity"
    optimizer.step()


@pytest.mark.parametrize("name", FLOWS)
def test_init_std_keeps_the_identity_start(name):
    """Willetts et al.'s init_std redraws the kernels, but not a flow's last layers: the
    flow is still exactly its own Gaussian base."""
    for layers in ("all", "heads"):
        pyro.set_rng_seed(0)
        model = build("m2", input_dim=5, num_classes=K, z_dim=D, hidden=(16,), guide=name,
                      init_std=1e-3, init_layers=layers)  # fmt: skip
        x, y = torch.rand(7, 5), torch.arange(K)[:, None]
        head = model.q.q_z.head
        h = model.q.q_z.trunk(x=x, y=y)
        base = (head.flow.base if hasattr(head, "flow") else head.base)(h)
        torch.manual_seed(1)
        with torch.no_grad():
            d = head(h)
            z = d.rsample()
            assert torch.allclose(d.log_prob(z), base.log_prob(z), atol=_tolerance(name))


def test_base_is_checked_by_name():
    with pytest.raises(UserError, match="base must be one of gaussian, standard, got 'normal'"):
        build("m2", input_dim=5, num_classes=3, guide="maf", guide_args={"base": "normal"})
    with pytest.raises(UserError, match="base must be one of"):
        build("m2", input_dim=5, num_classes=3, guide="planar", guide_args={"base": 1})


@pytest.fixture(scope="module")
def legacy():
    return torch.load(LEGACY, weights_only=True)


@pytest.mark.parametrize("name", sorted(LEGACY_FAMILIES))
def test_a_config_saved_before_bases_rebuilds_what_it_trained(legacy, name):
    """tests/guides/fixtures/legacy_flows.pt holds tiny M2 models saved by the library before
    flows had a Gaussian base (tests/guides/fixtures/make_legacy_flows.py): their configs rebuild
    on the standard-normal base, load their weights strictly and give the same draws,
    log-densities and class probabilities."""
    saved = legacy["models"][name]
    config = json.loads(saved["config"])
    assert "base" not in config["guide_args"]
    model = from_config(config)
    assert model.config.guide_args["base"] == "standard"
    model.load_state_dict(saved["state"])  # strict: the same modules, the same keys
    x = legacy["x"]
    q_z = model.q.q_z(x=x, y=torch.arange(3)[:, None])
    torch.manual_seed(1)
    with torch.no_grad():
        z = q_z.rsample()
        # To float32 rounding, not bit for bit: the fixture was written on another CPU, whose
        # matrix kernels round differently (1e-6 here); another base would move z by O(1).
        assert torch.allclose(z, saved["z"], rtol=0, atol=1e-5)
        assert torch.allclose(q_z.log_prob(z), saved["log_q"], atol=1e-6)
    assert torch.allclose(model.classify(x), saved["probs"])
    # written again, the config names its base and rebuilds the same model
    again = from_config(json.loads(json.dumps(model.to_config())))
    assert again.config.guide_args == model.config.guide_args
    again.load_state_dict(saved["state"])


def test_a_new_config_without_base_arguments_is_not_taken_for_an_old_one():
    """Only a saved config holding every other argument (as configs record them) and no
    base is read as written before bases; a partial one takes today's defaults."""
    model = from_config({"model": "m2", "input_dim": 5, "num_classes": 3, "guide": "maf",
                         "guide_args": {"transforms": 1}})  # fmt: skip
    assert model.config.guide_args["base"] == "gaussian"
    model = build("m2", input_dim=5, num_classes=3, guide="maf",
                  guide_args={"transforms": 3, "hidden_features": [64, 64]})  # fmt: skip
    assert model.config.guide_args["base"] == "gaussian"  # build: the user's own arguments

"""Network families by name: the conv trunk and deconvolutional decoder, the registry."""

import pytest
import torch
from torch.nn import functional as F

from ppl_ssvae.errors import UserError
from ppl_ssvae.nn import NETS, BernoulliPixels, ConvTrunk, DeconvDecoder, describe_nets
from ppl_ssvae.nn.nets import NetFamily, family, register_net, resolve_net_args


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (2, 7, 5), (3, 3, 4)])
def test_the_decoder_mirrors_the_trunk_back_to_any_image_size(shape):
    c, h, w = shape
    trunk = ConvTrunk(shape, (4, 6))
    x = torch.rand(5, c * h * w)
    assert trunk(x).shape == (5, trunk.features)
    decoder = DeconvDecoder({"z": 3, "y": 4}, shape, (4, 6))
    p = decoder(torch.randn(5, 3), torch.arange(4)[:, None])  # y enumerated: (K, 1)
    assert isinstance(p, BernoulliPixels)
    assert p.batch_shape == (4, 5) and p.event_shape == (c * h * w,)


def test_the_trunk_is_a_stack_of_strided_convolutions_on_the_unflattened_image():
    torch.manual_seed(0)
    trunk = ConvTrunk((1, 8, 8), (4, 6))
    x = torch.rand(3, 64)
    conv1, conv2 = trunk.convs[0], trunk.convs[2]
    h = F.relu(F.conv2d(x.reshape(3, 1, 8, 8), conv1.weight, conv1.bias, stride=2, padding=1))
    h = F.relu(F.conv2d(h, conv2.weight, conv2.bias, stride=2, padding=1))
    assert torch.allclose(trunk(x), h.flatten(1), atol=1e-6)
    assert trunk(x.expand(2, 3, 64)).shape == (2, 3, 6 * 2 * 2)  # leading dims kept


def test_the_decoder_returns_the_dense_decoders_distributions():
    """The likelihood is unchanged: Bernoulli pixels, or a Normal over the flattened image
    with a fixed variance or a learnt per-pixel scale."""
    z = torch.randn(5, 3)
    fixed = DeconvDecoder({"z": 3}, (1, 4, 4), (2,), "gaussian", sigma2=0.25)(z)
    assert fixed.event_shape == (16,) and torch.allclose(fixed.base_dist.scale, torch.tensor(0.5))
    learnt = DeconvDecoder({"z": 3}, (1, 4, 4), (2,), "gaussian", sigma2=None)
    assert learnt.deconvs[-1].out_channels == 2  # loc and scale per pixel
    p = learnt(z)
    assert p.event_shape == (16,) and not torch.allclose(p.base_dist.scale, p.base_dist.scale[0, 0])


def test_the_registry_builds_both_parts_and_describes_every_family():
    assert set(NETS) >= {"dense", "conv"}
    assert family("dense").trunk(64, None, "relu") is None  # dense reads x as it is
    trunk = family("conv").trunk(64, (1, 8, 8), "relu", channels=(4,))
    assert isinstance(trunk, ConvTrunk) and trunk.features == 4 * 4 * 4
    assert "conv: strided conv trunk" in describe_nets() and "channels=(32, 64)" in describe_nets()
    assert resolve_net_args("conv", {"channels": [8, 16]}) == {"channels": (8, 16)}


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("resnet", {}, "unknown net 'resnet'; choose one of dense, conv"),
        ("conv", {"depth": 2}, r"net 'conv' has no net_args \['depth'\]; valid: channels"),
        ("conv", {"channels": [0]}, "channels must be a list of integers >= 1"),
        ("dense", {"channels": [8]}, "valid: none"),
    ],
)
def test_unknown_nets_and_net_args_are_one_line_user_errors(name, args, message):
    with pytest.raises(UserError, match=message):
        resolve_net_args(name, args)


def test_a_registered_family_is_a_choice_and_cannot_be_replaced():
    mine = NetFamily(family("dense").trunk, family("dense").decoder, "my dense")
    register_net("my-dense", mine)
    try:
        assert family("my-dense") is mine and "my-dense: my dense" in describe_nets()
        with pytest.raises(UserError, match="already registered"):
            register_net("my-dense", NetFamily(mine.trunk, mine.decoder, "another"))
    finally:
        NETS.pop("my-dense")

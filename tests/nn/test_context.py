"""The shared context encoder: W_x x + W_y y, inputs by name, old checkpoints."""

import pytest
import torch
from torch.nn import functional as F

from ppl_ssvae.errors import UserError
from ppl_ssvae.nn import ContextEncoder, LabelConditionedTrunk


def test_label_conditioned_trunk_is_a_layer_on_x_and_onehot_y():
    """``act(W_x x + W_y y + b)`` with ``W_x x`` once per row equals the textbook layer on
    ``[x, onehot(y)]`` for every enumerated label, values and gradients alike."""
    torch.manual_seed(4)
    trunk = LabelConditionedTrunk(6, 3, (5,))
    x = torch.randn(4, 6)
    y = torch.arange(3)[:, None]  # (K, 1): parallel enumeration over K = 3 labels
    trunk(x, y).square().sum().backward()
    ours = [p.grad.clone() for p in (trunk.layers[0].weight, trunk.y_layer.weight)]

    weight = torch.cat([trunk.layers[0].weight, trunk.y_layer.weight.T], 1).detach()
    weight.requires_grad_()
    inputs = torch.cat([x.expand(3, 4, 6), F.one_hot(y.expand(3, 4), 3).float()], -1)
    expected = torch.relu(inputs @ weight.T + trunk.layers[0].bias)
    assert torch.allclose(trunk(x, y), expected, atol=1e-6)
    expected.square().sum().backward()
    assert torch.allclose(ours[0], weight.grad[:, :6], atol=1e-5)
    assert torch.allclose(ours[1], weight.grad[:, 6:].T, atol=1e-5)


def test_context_encoder_binds_named_and_positional_inputs_and_refuses_others():
    torch.manual_seed(6)
    enc = ContextEncoder({"x": 4, "a": 2, "y": 3}, (5,))
    x, a, y = torch.randn(6, 4), torch.randn(6, 2), torch.arange(3)[:, None]
    named = enc(x=x, a=a, y=y)
    assert named.shape == (3, 6, 5)  # (K, B, H): x and a multiplied once per row
    assert torch.equal(enc(x, a, y), named)
    assert torch.equal(enc(x, a=a, y=y), named)
    with pytest.raises(UserError, match=r"takes inputs \(x, a, y\)"):
        enc(x=x, y=y)
    with pytest.raises(UserError, match="takes inputs"):
        enc(x=x, a=a, y=y, z=x)


def test_label_conditioned_trunk_loads_checkpoints_with_the_old_x_layer_keys():
    torch.manual_seed(7)
    trunk = LabelConditionedTrunk(6, 3, (5,))
    old = {k.replace("layers.0.", "x_layer."): v for k, v in trunk.state_dict().items()}
    assert "x_layer.weight" in old
    fresh = LabelConditionedTrunk(6, 3, (5,))
    fresh.load_state_dict(old)
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    assert torch.equal(fresh(x, y), trunk(x, y))

"""``eval_mode``: evaluation inside a training loop leaves the model in the mode it found."""

import pytest
import torch
from torch import nn

from ppl_ssvae.nn import eval_mode


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_switches_off_dropout_and_restores_the_mode(training: bool) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train(training)
    x = torch.randn(3, 4)
    with eval_mode(net):
        assert not net.training and not net[1].training
        assert torch.equal(net(x), net(x))  # dropout off: deterministic
    assert net.training is training and net[1].training is training


def test_eval_mode_restores_the_mode_when_the_block_raises() -> None:
    net = nn.Dropout(0.5).train()
    with pytest.raises(RuntimeError, match="boom"), eval_mode(net):
        raise RuntimeError("boom")
    assert net.training


def test_eval_mode_of_none_is_a_no_op() -> None:
    with eval_mode(None):
        pass

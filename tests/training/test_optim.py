"""SingleOptimizer: one torch optimizer over every parameter, driven by pyro's SVI."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from ppl_ssvae.errors import UserError
from ppl_ssvae.training.optim import SingleOptimizer, optimizer_args

DATA = torch.tensor([0.5, 1.5, 2.0, -0.3])


def model():
    loc = pyro.param("loc", torch.tensor(0.0))
    with pyro.plate("data", len(DATA)):
        pyro.sample("obs", dist.Normal(loc, 1.0), obs=DATA)


def guide():
    pass


def _run(optim, steps):
    svi = SVI(model, guide, optim, Trace_ELBO())
    for _ in range(steps):
        svi.step()
    return pyro.param("loc").item()


@pytest.mark.parametrize("name,cls,options", [
    ("adam", torch.optim.Adam, {}),
    ("rmsprop", torch.optim.RMSprop, {"momentum": 0.9}),
])  # fmt: skip
def test_same_trajectory_as_the_torch_optimizer(name, cls, options):
    pyro.clear_param_store()
    ours = _run(SingleOptimizer(name, 0.05, **options), 20)
    loc = torch.tensor(0.0, requires_grad=True)
    opt = cls([loc], lr=0.05, **options)
    for _ in range(20):
        opt.zero_grad()
        (-dist.Normal(loc, 1.0).log_prob(DATA).sum()).backward()
        opt.step()
    assert ours == pytest.approx(loc.item(), abs=1e-6)


def test_rho_and_eps_give_keras_rmsprop():
    """``rho`` is RMSprop's squared-gradient decay (Keras's name; torch calls it alpha):
    a <- rho a + (1 - rho) g^2, theta <- theta - lr g / (sqrt(a) + eps), no momentum."""
    pyro.clear_param_store()
    args = optimizer_args({"rho": 0.9, "eps": 1e-7, "momentum": None, "lr": 0.05})
    assert args == {"alpha": 0.9, "eps": 1e-7}
    ours = _run(SingleOptimizer("rmsprop", 0.05, **args), 5)
    loc, square_avg = 0.0, 0.0
    for _ in range(5):
        grad = -(DATA - loc).sum().item()  # d/dloc of -sum log N(DATA | loc, 1)
        square_avg = 0.9 * square_avg + 0.1 * grad**2
        loc -= 0.05 * grad / (square_avg**0.5 + 1e-7)
    assert ours == pytest.approx(loc, abs=1e-5)


def test_gradients_are_released_after_each_step():
    """SVI's own zeroing would leave zero tensors that the next backward adds into; the
    optimizer releases them instead, and the trajectory stays the torch optimizer's."""
    pyro.clear_param_store()
    optim = SingleOptimizer("adam", 0.05)
    _run(optim, 2)
    assert pyro.param("loc").unconstrained().grad is None


def test_lr_decays_per_step_and_resumes_exactly():
    pyro.clear_param_store()
    optim = SingleOptimizer("adam", 0.1, lr_decay_per_step=0.5)
    _run(optim, 3)
    assert optim.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)
    state, loc = optim.get_state(), pyro.param("loc").item()
    uninterrupted = _run(optim, 4)

    pyro.clear_param_store()
    pyro.param("loc", torch.tensor(loc))
    resumed = SingleOptimizer("adam", 0.1, lr_decay_per_step=0.5)
    resumed.set_state(state)
    assert _run(resumed, 4) == uninterrupted


def test_bad_arguments():
    with pytest.raises(UserError, match="unknown optimizer 'sgdd'"):
        SingleOptimizer("sgdd", 0.1)
    with pytest.raises(UserError, match="lr_decay_per_step"):
        SingleOptimizer("adam", 0.1, lr_decay_per_step=1.5)

import pytest
import torch


@pytest.fixture
def float64():
    """Double precision, so exact-bound comparisons measure the maths, not rounding."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)

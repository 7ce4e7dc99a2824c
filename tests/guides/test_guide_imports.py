"""A guide written outside the library, named by import path (``pkg.module:factory``):
recorded in the config, rebuilt from it, and imported only when the user names the module."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pyro
import pytest
import torch

from ppl_ssvae.cli import main
from ppl_ssvae.errors import UserError
from ppl_ssvae.guides import trusted_guide_modules
from ppl_ssvae.models import build, from_config

HEAD = '''
from pathlib import Path

from ppl_ssvae.guides.zuko_flows import realnvp

Path(__file__).with_suffix(".imported").touch()  # says that the module was imported


def coupling(features, out_dim, transforms=1):
    """A user's head: zuko's RealNVP on the Gaussian base."""
    return realnvp(features, out_dim, transforms=transforms)


def needs_more(features, out_dim, depth):
    return realnvp(features, out_dim)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A fresh module of the user's (a new name each time: never imported before)."""
    name = f"user_guides_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(HEAD)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, tmp_path / f"{name}.imported"
    sys.modules.pop(name, None)


def _config(path: str) -> dict:
    return {"model": "m2", "input_dim": 6, "num_classes": 3, "z_dim": 2, "hidden": [8],
            "guide": path, "guide_args": {"transforms": 2}}  # fmt: skip


def test_a_guide_named_by_path_is_built_recorded_and_rebuilt(user_module):
    name, _ = user_module
    pyro.set_rng_seed(0)
    model = build("m2", input_dim=6, num_classes=3, z_dim=2, hidden=(8,),
                  guide=f"{name}:coupling", guide_args={"transforms": 2})  # fmt: skip
    config = json.loads(json.dumps(model.to_config()))
    assert config["guide"] == f"{name}:coupling" and config["guide_args"] == {"transforms": 2}
    assert len(model.q.q_z.head.flow.transform.transforms) == 2
    with trusted_guide_modules(name):
        again = from_config(config)
    again.load_state_dict(model.state_dict())
    x = torch.rand(4, 6)
    assert torch.equal(again.classify(x), model.classify(x))


def test_a_saved_config_never_imports_a_module_by_itself(user_module):
    name, marker = user_module
    with pytest.raises(UserError, match=f"--trust-guide {name}"):
        from_config(_config(f"{name}:coupling"))
    assert name not in sys.modules and not marker.exists()
    with trusted_guide_modules("some.other_module"), pytest.raises(UserError, match="trust"):
        from_config(_config(f"{name}:coupling"))
    assert not marker.exists()
    with trusted_guide_modules(f"{name}:coupling"):  # the path itself names the module
        assert from_config(_config(f"{name}:coupling")).config.guide == f"{name}:coupling"
    assert marker.exists()


@pytest.mark.parametrize("path, message", [
    ("not a path:x", "must look like pkg.module:factory"),
    ("no_such_module_here:head", "cannot import 'no_such_module_here'"),
    ("{mod}:absent", "has no function 'absent'"),
    ("{mod}:needs_more", "whose guide_args all have defaults"),
])  # fmt: skip
def test_bad_import_paths_are_one_line_user_errors(user_module, path, message):
    path = path.format(mod=user_module[0])
    with pytest.raises(UserError, match=message):
        build("m2", input_dim=6, num_classes=3, guide=path)


def test_its_guide_args_are_checked_like_a_family(user_module):
    with pytest.raises(UserError, match="transforms must be an integer >= 1"):
        build("m2", input_dim=6, num_classes=3, guide=f"{user_module[0]}:coupling",
              guide_args={"transforms": 0})  # fmt: skip


def test_cli_round_trip_and_refusal_without_trust(user_module, tmp_path, capsys):
    """train --guide pkg.module:factory records it; evaluate in a fresh process refuses to
    import the module the run names (one line, module untouched) until --trust-guide."""
    name, marker = user_module
    out = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--labels", "50", "--z-dim", "3", "--hidden", "8",
            "--batch-size", "400", "--epochs", "1", "--no-progress", "--guide", f"{name}:coupling",
            "--guide-arg", "transforms=2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["guide"] == f"{name}:coupling"
    marker.unlink()
    env = {
        "PYTHONPATH": f"{tmp_path}:{Path(__file__).resolve().parents[2]}",
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "ppl_ssvae", "evaluate", str(out), "--json"]
    refused = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and not marker.exists()
    assert (
        len(refused.stderr.strip().splitlines()) == 1 and f"--trust-guide {name}" in refused.stderr
    )
    capsys.readouterr()
    assert main(["evaluate", str(out), "--json"]) == 2  # imported here already: still refused
    assert main(["evaluate", str(out), "--json", "--trust-guide", name]) == 0
    assert json.loads(capsys.readouterr().out)["epoch"] == 1

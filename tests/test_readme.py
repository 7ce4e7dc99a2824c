"""Every snippet of the documentation's "Training" page (docs/training.md, which was the
README's "Changing how a model trains") runs, on small data; the README keeps pointing
there.

Each snippet is the fenced block after a ``<!-- snippet: NAME -->`` line. It is run as
written but for its budget (``epochs=N`` becomes 2 epochs), its paths (``runs/`` goes to
a temporary directory) and the dataset (Fashion-MNIST becomes scikit-learn's digits).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ppl_ssvae.cli import main
from ppl_ssvae.data import load, semi_supervised_split
from ppl_ssvae.models import MODELS, build

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGE = ROOT / "docs" / "training.md"
SNIPPETS = ("kl-warmup", "early-stopping", "tensorboard", "cosine-adamw", "custom-callback",
            "config-file", "user-model")  # fmt: skip


def snippet(name: str) -> list[str]:
    """The fenced blocks that follow ``<!-- snippet: name -->`` (a block and, where the
    snippet has one, the shell line that goes with it)."""
    text = PAGE.read_text()
    start = text.index(f"<!-- snippet: {name} -->")
    rest = text[start:].split("\n", 1)[1]
    blocks = re.findall(
        r"```\w*\n(.*?)```", rest.split("<!-- snippet:", 1)[0].split("\n## ", 1)[0], re.S
    )
    assert blocks, name
    return blocks


def small(code: str, tmp_path: Path) -> str:
    code = re.sub(r"epochs=\d+", "epochs=2", code)
    code = re.sub(r"epochs = \d+", "epochs = 2", code)
    code = code.replace('"T_max": 30', '"T_max": 2').replace("T_max = 30", "T_max = 2")
    code = code.replace('"fashion-mnist"', '"digits"').replace("fashion-mnist", "digits")
    code = code.replace("z_dim = 50, hidden = [500]", "z_dim = 4, hidden = [16]")
    return code.replace("runs/", f"{tmp_path}/")


@pytest.fixture
def quick_start():
    split = semi_supervised_split(load("digits"), labels=50, seed=0)
    model = build("m2", input_dim=split.input_dim, num_classes=10, z_dim=4, hidden=(16,), seed=0)
    return {"model": model, "split": split}


@pytest.mark.parametrize("name", SNIPPETS)
def test_each_snippet_is_short_and_public(name):
    for block in snippet(name):
        lines = [line for line in block.splitlines() if line.strip()]
        assert len(lines) <= 5, (name, lines)
        assert not re.search(r"(\.|import |from \S+ import .*\b)_[a-z]", block), (name, block)


@pytest.mark.parametrize("name", ["kl-warmup", "early-stopping", "tensorboard", "cosine-adamw",
                                  "custom-callback"])  # fmt: skip
def test_python_snippets_run(name, quick_start, tmp_path, capsys):
    scope = dict(quick_start)
    exec(small(snippet(name)[0], tmp_path), scope)  # noqa: S102 - the docs' own code
    printed = capsys.readouterr().out
    if name == "kl-warmup":
        weights = json.loads(printed.strip().splitlines()[-1])
        assert len(weights) == 2 and 0 < weights[0] < weights[1] < 1  # warm-up over 2 epochs
    if name == "tensorboard":
        assert list((tmp_path / "m2-tb" / "tensorboard").glob("events.out.tfevents.*"))
    if name == "custom-callback":
        mine = [line.split()[0] for line in printed.splitlines() if not line.startswith("epoch")]
        assert mine == ["1", "2"]


def test_config_file_snippet_trains_and_flags_override_it(tmp_path):
    toml, shell = snippet("config-file")
    (tmp_path / "run.toml").write_text(small(toml, tmp_path))
    argv = small(shell.split("#")[0], tmp_path).split()[1:]
    argv = [tmp_path / "run.toml" if a == "run.toml" else a for a in argv]
    assert main([*map(str, argv), "--no-progress"]) == 0
    config = json.loads((tmp_path / "m2-file" / "config.json").read_text())
    assert (
        config["spec"]["fit"]["seed"] == 1 and config["fit"]["lr_scheduler"] == "CosineAnnealingLR"
    )
    assert config["callbacks"] == [{"name": "kl_warmup", "args": {"epochs": 2, "schedule": "linear",
                                    "start": 0.0, "cycles": 4, "ratio": 0.5}}]  # fmt: skip


def test_print_config_round_trips(tmp_path, capsys):
    argv = ["train", "--dataset", "digits", "--labels", "50", "--z-dim", "4", "--hidden", "16",
            "--lr-scheduler", "StepLR", "--lr-scheduler-arg", "step_size=2",
            "--callback", "early_stopping:patience=3", "--print-config"]  # fmt: skip
    assert main(argv) == 0
    (tmp_path / "spec.toml").write_text(capsys.readouterr().out)
    assert main(["train", "--config", str(tmp_path / "spec.toml"), "--print-config"]) == 0
    again = capsys.readouterr().out
    assert again == (tmp_path / "spec.toml").read_text()
    assert "lr_scheduler_args = { step_size = 2 }" in again and 'name = "early_stopping"' in again


PLUGIN = """
from ppl_ssvae.models import M2

class MyM2(M2):
    name = "my-m2"
"""


def test_user_model_snippet_checks_and_an_installed_plugin_trains_by_name(tmp_path):
    python, shell = snippet("user-model")
    try:
        exec(python, {})  # noqa: S102 - the docs' own code
    finally:
        MODELS.pop("my-m2", None)
    # An installed package: its module and its dist-info with the entry point.
    (tmp_path / "my_package").mkdir()
    (tmp_path / "my_package" / "__init__.py").write_text("")
    (tmp_path / "my_package" / "models.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "my_package-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-package\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[ppl_ssvae.models]\nmy-m2 = my_package.models:MyM2\n")
    argv = small(shell, tmp_path).split()[1:] + ["--z-dim", "4", "--hidden", "16", "--epochs",
                                                 "1", "--no-progress"]  # fmt: skip
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "ppl_ssvae", *argv], capture_output=True,
                          text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads((tmp_path / "my-m2" / "config.json").read_text())
    assert config["model"]["model"] == "my-m2"


def test_readme_links_to_the_training_page():
    assert "docs/training.md" in README.read_text()

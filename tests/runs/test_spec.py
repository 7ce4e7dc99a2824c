"""RunSpec: argv -> spec -> JSON -> spec over every model x guide, files, refusals."""

from __future__ import annotations

import json

import pytest

from ppl_ssvae.cli import build_parser
from ppl_ssvae.cli.train import spec_from_args, spec_values
from ppl_ssvae.errors import UserError
from ppl_ssvae.guides import GUIDES
from ppl_ssvae.models import MODELS
from ppl_ssvae.runs import RunSpec, read_spec_file, to_toml

PAIRS = [
    (m, g) for m in sorted(MODELS) for g in GUIDES if MODELS[m].guide_latents or g == "gaussian"
]


def _spec(argv: list[str]) -> RunSpec:
    return spec_from_args(build_parser().parse_args(["train", *argv]))


@pytest.mark.parametrize("model, guide", PAIRS, ids=["-".join(p) for p in PAIRS])
def test_argv_spec_json_spec_round_trip_and_the_model_builds(model, guide, tmp_path):
    argv = ["--model", model, "--guide", guide, "--dataset", "digits", "--labels", "50",
            "--z-dim", "3", "--hidden", "8", "--epochs", "2", "--lr", "0.002", "--seed", "4",
            "--callback", "early_stopping:patience=2"]  # fmt: skip
    spec = _spec(argv)
    assert spec.model.name == model and spec.model.guide == guide
    assert spec.model.options == {"z_dim": 3, "hidden": (8,)} and spec.fit.lr == 0.002
    again = RunSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again.to_dict() == json.loads(json.dumps(spec.to_dict()))
    (tmp_path / "spec.toml").write_text(to_toml(spec.to_dict()))
    from_file = RunSpec.from_dict(read_spec_file(tmp_path / "spec.toml"))
    assert json.loads(json.dumps(from_file.to_dict())) == json.loads(json.dumps(spec.to_dict()))
    built = spec.build_model(spec.load_data())
    assert built.name == model and built.config.z_dim == 3 and built.config.guide == guide


def test_flags_override_a_config_file_section_by_section(tmp_path):
    (tmp_path / "run.toml").write_text(
        'data = { dataset = "digits", labels = 50 }\n'
        'model = { name = "gmdgm", options = { z_dim = 5 } }\n'
        "fit = { epochs = 7, lr = 0.01 }\n"
    )
    spec = _spec(["--config", str(tmp_path / "run.toml"), "--lr", "0.02", "--hidden", "12"])
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "run.toml")])
    base = RunSpec.from_dict(spec_values(args, read_spec_file(tmp_path / "run.toml")))
    assert base.fit.lr == 0.01 and base.fit.epochs == 7
    assert spec.fit.lr == 0.02 and spec.fit.epochs == 7
    assert spec.model.options == {"z_dim": 5, "hidden": (12,)} and spec.model.name == "gmdgm"


@pytest.mark.parametrize(
    "values, message",
    [
        ({"fit": {"epoch": 3}}, r"unknown settings \['epoch'\] in \[fit\]"),
        ({"trainer": {}}, r"unknown run spec sections \['trainer'\]"),
        ({"fit": {"lr": -1}}, "lr=-1 must be a finite number > 0"),
        ({"fit": {"seed": -1}}, "seed=-1 must be an integer"),
        ({"callbacks": [{"name": "nope"}]}, "unknown callback 'nope'"),
        ({"callbacks": [{"name": "early_stopping", "args": {"patience": 0}}]}, "patience=0"),
        ({"version": 99}, "version 99"),
        ({"data": []}, r"section \[data\] must be a mapping"),
    ],
)
def test_bad_specs_are_refused_in_one_line(values, message):
    with pytest.raises(UserError, match=message):
        RunSpec.from_dict(values)


def test_bad_config_files_are_refused_in_one_line(tmp_path):
    (tmp_path / "bad.toml").write_text("fit = { epochs = \n")
    with pytest.raises(UserError, match="does not parse"):
        read_spec_file(tmp_path / "bad.toml")
    with pytest.raises(UserError, match="no such file"):
        read_spec_file(tmp_path / "missing.toml")
    (tmp_path / "x.ini").write_text("")
    with pytest.raises(UserError, match=r"use a \.toml, \.yaml or \.json"):
        read_spec_file(tmp_path / "x.ini")


def test_a_yaml_spec_reads_as_its_toml_twin(tmp_path):
    pytest.importorskip("yaml")
    (tmp_path / "run.yaml").write_text(
        "data: {dataset: digits, labels: 50}\nmodel: {name: m2, options: {z_dim: 4}}\n"
        "fit: {epochs: 3}\ncallbacks: [{name: kl_warmup, args: {epochs: 2}}]\n"
    )
    (tmp_path / "run.toml").write_text(
        'data = { dataset = "digits", labels = 50 }\nmodel = { name = "m2", options = { z_dim = 4 } }\n'
        'fit = { epochs = 3 }\ncallbacks = [{ name = "kl_warmup", args = { epochs = 2 } }]\n'
    )
    a = RunSpec.from_dict(read_spec_file(tmp_path / "run.yaml")).to_dict()
    assert a == RunSpec.from_dict(read_spec_file(tmp_path / "run.toml")).to_dict()
    assert a["callbacks"] == [{"name": "kl_warmup", "args": {"epochs": 2}}]


def test_a_none_option_is_a_setting_that_reaches_the_model_and_is_never_dropped(tmp_path):
    # sigma2 = None is a learned pixel variance, init_std = None the layers' own init:
    # neither may silently become the default (1.0, 0.001).
    spec = _spec(["--model", "gmdgm", "--dataset", "digits", "--labels", "50", "--z-dim", "2",
                  "--hidden", "8", "--model-arg", "sigma2=null", "--model-arg",
                  "init_std=null", "--likelihood", "gaussian"])  # fmt: skip
    assert spec.model.options["sigma2"] is None and spec.model.options["init_std"] is None
    (tmp_path / "spec.json").write_text(json.dumps(spec.to_dict()))
    again = RunSpec.from_dict(read_spec_file(tmp_path / "spec.json"))
    model = again.build_model(again.load_data())
    assert model.config.sigma2 is None and model.config.init_std is None
    assert _spec(["--dataset", "digits"]).build_model(spec.load_data()).config.sigma2 == 1.0
    with pytest.raises(UserError, match=r"model\.options\.sigma2 = None has no TOML form"):
        to_toml(spec.to_dict())
    loose = _spec(["--dataset", "digits", "--divergence-factor", "5"]).to_dict()
    loose["fit"]["divergence_factor"] = None  # the default is 1e4: dropping it would change it
    with pytest.raises(UserError, match=r"fit\.divergence_factor = None"):
        to_toml(loose)
    to_toml(_spec(["--dataset", "digits"]).to_dict())  # None defaults are simply left out

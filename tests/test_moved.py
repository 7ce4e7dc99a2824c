"""Old module paths stay importable for one release: the same module, with a warning."""

import importlib
import sys

import pytest

from ppl_ssvae.moved import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_is_the_new_module_and_warns(old: str, monkeypatch) -> None:
    new = importlib.import_module(MOVED[old])
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=f"{old} moved to {MOVED[old]}") as caught:
        aliased = importlib.import_module(old)
    assert aliased is new
    assert new.__spec__.name == MOVED[old]  # the real module keeps its own spec
    assert caught[0].filename == __file__  # the warning names the importing line


def test_from_import_of_an_old_path_gives_the_same_objects(monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, "ppl_ssvae.rundir", raising=False)
    with pytest.warns(DeprecationWarning):
        from ppl_ssvae.rundir import RunDir as old_rundir
    from ppl_ssvae.runs.directory import RunDir

    assert old_rundir is RunDir


def test_unmoved_names_are_not_found_by_the_alias_finder() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("ppl_ssvae.no_such_module")


def test_the_split_nets_module_still_exports_every_network(monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, "ppl_ssvae.nets", raising=False)
    with pytest.warns(DeprecationWarning, match="ppl_ssvae.nn"):
        nets = importlib.import_module("ppl_ssvae.nets")
    from ppl_ssvae.models.pi_vae_nets import PiEncoder
    from ppl_ssvae.nn import ContextEncoder, init_normal_

    assert (nets.ContextEncoder, nets.init_normal_, nets.PiEncoder) == (
        ContextEncoder,
        init_normal_,
        PiEncoder,
    )

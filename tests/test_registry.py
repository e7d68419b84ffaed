import types

import pytest

from gandid import hookimpl
from gandid.errors import UnknownNameError
from gandid.registry import Registry


def make_plugin(name, **hooks):
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


def test_kinds_are_registered(registry):
    assert registry.names("generator") == ["tiny"]
    assert registry.names("segmenter") == ["tiny"]
    assert registry.names("analysis") == ["count", "failing", "unitstats"]
    entry = registry.get("analysis", "unitstats")
    assert entry.plugin.name == "unitstats" and "example plugin" in entry.description


def test_duplicate_name_is_refused_naming_both(registry):
    def gandid_register_generators(register):
        register("tiny", object, description="impostor")

    info = registry.add_plugin(make_plugin("impostor", gandid_register_generators=gandid_register_generators),
                               "impostor")
    assert info.status == "broken"
    assert "'impostor'" in info.error and "'testkit'" in info.error and "'tiny'" in info.error
    # the first registration is kept, untouched
    assert registry.get("generator", "tiny").plugin.name == "testkit"


def test_registration_is_all_or_nothing_per_hook(registry):
    def gandid_register_analyses(register):
        register("fresh", object)
        register("count", object)  # duplicate: the whole hook call is refused

    registry.add_plugin(make_plugin("half", gandid_register_analyses=gandid_register_analyses), "half")
    assert "fresh" not in registry.names("analysis")


def test_plugin_raising_while_registering_is_isolated(registry):
    def gandid_register_segmenters(register):
        raise RuntimeError("no weights")

    info = registry.add_plugin(make_plugin("bad", gandid_register_segmenters=gandid_register_segmenters), "bad")
    assert info.status == "broken" and "RuntimeError: no weights" in info.error
    assert registry.names("segmenter") == ["tiny"]
    rows = {(r["name"], r["kind"]): r for r in registry.rows()}
    assert rows[("bad", "plugin")]["status"] == "broken"
    assert rows[("tiny", "generator")]["status"] == "ok"


def test_hook_with_wrong_signature_is_reported():
    def gandid_register_generators(registr):  # typo in the argument name
        pass

    reg = Registry(load_entry_points=False)
    info = reg.add_plugin(make_plugin("typo", gandid_register_generators=gandid_register_generators), "typo")
    assert info.status == "broken" and "registr" in info.error


def test_unknown_name_suggests_closest(registry):
    with pytest.raises(UnknownNameError) as exc:
        registry.get("analysis", "unitstat")
    assert "did you mean 'unitstats'" in str(exc.value)
    with pytest.raises(UnknownNameError, match="did you mean 'generator'"):
        registry.names("generater")


def test_factory_options_reach_the_object(registry):
    assert registry.create("analysis", "unitstats", top=2).top == 2

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# In-process tests import the test plugins directly; the entry-point path is tested by installing them.
sys.path.insert(0, str(ROOT / "tests" / "testkit"))
sys.path.insert(0, str(ROOT / "examples" / "gandid-unitstats"))


@pytest.fixture
def registry():
    """A registry with the test kit and the example plugin, registered in-process."""
    import gandid_testkit.tiny
    import gandid_unitstats

    from gandid.registry import Registry

    reg = Registry(load_entry_points=False)
    reg.add_plugin(gandid_testkit.tiny, "testkit")
    reg.add_plugin(gandid_unitstats, "unitstats")
    return reg

"""The long QMP fuzz campaign script works (CI runs a short one; docs/reliability.md has the
figures of the long run)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "fuzz_qmp_campaign.py"


def test_short_campaign_never_crashes_the_server() -> None:
    spec = importlib.util.spec_from_file_location("fuzz_qmp_campaign", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    result = module.campaign(count=500, seed=7, compat="10.0")
    assert result["server_alive"]
    assert result["inputs"] == 500
    assert result["returns"] + result["errors"] >= 500  # every sync request was answered

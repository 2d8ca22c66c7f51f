"""A short run of the corrupted-stream campaign (tools/corrupt_stream_campaign.py): damaged
precopy and multifd migrations are refused or load exactly the source's guest; never a crash,
never a different guest.  The long run (100,000 inputs) is in docs/reliability.md."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import corrupt_stream_campaign as campaign


def test_damaged_streams_are_refused_or_harmless() -> None:
    result = campaign.run(400, seed=7)
    assert result["failed"] == 0, result["failures"]
    assert result["outcomes"].get("refused", 0) > 300
    assert set(result["outcomes"]) <= {"refused", "same guest"}

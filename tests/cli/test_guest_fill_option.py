"""``--guest-fill``: the four fills parse; anything else is a usage error naming them."""

from __future__ import annotations

import pytest

from qmp_server.cli import parse_args
from qmp_server.errors import UsageError


@pytest.mark.parametrize("fill", ["idle", "zero", "random", "text"])
def test_fills_parse(fill: str) -> None:
    opts = parse_args(["--guest-fill", fill])
    assert opts is not None and opts.guest_fill == fill


def test_unknown_fill_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="expected 'idle', 'zero', 'random' or 'text'"):
        parse_args(["--guest-fill", "lorem"])

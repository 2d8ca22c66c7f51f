"""schemathesis over the OpenAPI document, in-process through ASGI: no 5xx, well-formed errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CheckContext

from qmp_server.cli import parse_args
from qmp_server.rest.app import create_app
from qmp_server.runtime.runtime import Runtime

TOKEN = "fuzz-token"
_options = parse_args(["--http", "127.0.0.1:0"])
assert _options is not None
RUNTIME = Runtime(_options)
APP = create_app(RUNTIME, token=TOKEN)

schema = (
    schemathesis.openapi.from_asgi("/api/openapi.json", APP)
    .exclude(path="/api/v1/events")  # an endless stream: covered by test_rest_events
    .exclude(path="/api/v1/schema")  # large and argument-free: covered by test_rest_mirror
)


@schemathesis.check
def error_body_well_formed(ctx: CheckContext, response: schemathesis.Response,
                           case: schemathesis.Case) -> bool | None:  # fmt: skip
    if response.status_code < 400:
        return None
    body = json.loads(response.content)
    if not (isinstance(body, dict) and set(body) == {"class", "desc"}
            and isinstance(body["class"], str) and isinstance(body["desc"], str)):
        raise AssertionError(f"malformed error body: {response.content[:200]!r}")
    return True


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))  # fmt: skip
def test_openapi_fuzz(case: schemathesis.Case) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {TOKEN}"},
        additional_checks=[error_body_well_formed],
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )


def test_document_is_served_and_parses(tmp_path: Path) -> None:
    doc = APP.openapi()
    assert doc["openapi"].startswith("3.1")
    assert len([p for p in doc["paths"] if p.startswith("/api/v1/qmp/")]) == len(
        RUNTIME.vm.schema.commands)
    with pytest.raises(KeyError):
        doc["components"]["schemas"]["$defs"]

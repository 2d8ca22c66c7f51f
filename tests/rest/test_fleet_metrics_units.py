"""The fleet's metrics in-process (a fleet built, not served): the text exposition, and the
Grafana dashboard in examples/ naming only metric families the fleet exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from qmp_server.cli import parse_args
from qmp_server.fleet.cli import parse_fleet_command_line
from qmp_server.rest.fleet_metrics import exposition
from qmp_server.rest.fleet_state import FleetRest
from qmp_server.rest.policy import UriPolicy
from qmp_server.runtime.fleet import Fleet

GRAFANA = Path(__file__).resolve().parents[2] / "examples" / "grafana-fleet.json"


@pytest.fixture(scope="module")
def rest() -> Iterator[FleetRest]:
    line = parse_fleet_command_line(["--fleet-size", "3", "--link-bandwidth", "100M",
                                     "--", "-m", "64M"])  # fmt: skip
    options = parse_args(list(line.process_args))
    assert options is not None
    fleet = Fleet(line.spec, options, link_bandwidth=line.link_bandwidth)
    state = FleetRest(fleet, None, UriPolicy())
    yield state
    state.detach()


def test_exposition_is_generate_latests_text(rest: FleetRest) -> None:
    rest.counts_for("vm1").observe('odd"name\\with\nescapes', False)
    rest.counts_for("vm2").observe("query-status", True)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(rest.collector)
    assert exposition(rest.collector.collect()) == generate_latest(registry)


def _exported(rest: FleetRest) -> set[str]:
    text = exposition(rest.collector.collect()).decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def _exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _exprs(value)


def test_grafana_dashboard_names_only_exported_metrics(rest: FleetRest) -> None:
    dashboard = json.loads(GRAFANA.read_text(encoding="utf-8"))
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["vm"]["type"] == "query" and variables["vm"]["multi"]
    exported = _exported(rest)
    exprs = list(_exprs(dashboard))
    assert len(exprs) >= 10
    used: set[str] = set()
    for expr in exprs:
        names = set(re.findall(r"\bqmpmig_[a-z_]+\b", expr))
        assert names, expr
        assert names <= exported, (expr, names - exported)
        used |= names
    assert {"qmpmig_fleet_vms", "qmpmig_fleet_migrations_in_flight",
            "qmpmig_fleet_link_bandwidth_bytes"} <= used  # fmt: skip
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}

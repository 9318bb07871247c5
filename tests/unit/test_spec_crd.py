"""The CRD file and `spec` share their vocabulary: enums, limits and defaults.

A quick check without an API server; tests/cluster/test_crd_agreement.py walks the whole case
table through a real one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lvs_operator import model
from lvs_operator.api import spec
from lvs_operator.model import Protocol

CRD = Path(__file__).resolve().parents[2] / "crds" / "lvs.dev_virtualservers.yaml"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    found: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return found


def _at(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for part in path.split("."):
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


@pytest.mark.parametrize(("path", "values"), [
    ("forwarding", set(spec.FORWARDING)),
    ("tunnel.type", set(spec.TUNNEL_TYPES)),
    ("tunnel.checksum", set(spec.TUNNEL_CHECKSUMS)),
    ("scheduler.name", set(model.SCHEDULERS)),
    ("scheduler.flags.[]", set(spec.SCHEDULER_FLAGS)),
    ("ports.[].protocol", {p.name for p in Protocol}),
])
def test_enums(schema, path, values):
    assert set(_at(schema, path)["enum"]) == values


@pytest.mark.parametrize(("path", "most"), [
    ("ports", spec.MAX_PORTS),
    ("backend.addresses", spec.MAX_ADDRESSES),
    ("healthCheck.http.statusCodes", spec.MAX_STATUS_CODES),
])
def test_list_limits(schema, path, most):
    assert _at(schema, path)["maxItems"] == most


@pytest.mark.parametrize(("path", "low", "high"), [
    ("weight", 0, model.MAX_WEIGHT),
    ("backend.addresses.[].weight", 0, model.MAX_WEIGHT),
    ("connectionLimits.upper", 0, model.MAX_THRESHOLD),
    ("connectionLimits.lower", 0, model.MAX_THRESHOLD),
    ("persistence.timeoutSeconds", 1, spec.MAX_PERSISTENCE_SECONDS),
    ("drain.timeoutSeconds", 0, spec.MAX_DRAIN_SECONDS),
])
def test_ranges(schema, path, low, high):
    node = _at(schema, path)
    assert (node["minimum"], node["maximum"]) == (low, high)


def test_netmasks(schema):
    rule = _at(schema, "persistence.netmask")["x-kubernetes-validations"][0]["rule"]
    listed = {part.strip(" '\n") for part in rule.split("[", 1)[1].split("]")[0].split(",")}
    assert listed == set(spec.DOTTED_NETMASKS)


def test_defaults(schema):
    """What spec assumes for a missing field is the CRD's default for it."""
    vs = spec.parse({"metadata": {"name": "d"}, "spec": {
        "vip": "192.0.2.1", "ports": [{"port": 53}], "forwarding": "Tunnel", "tunnel": {},
        "persistence": {}, "backend": {"addresses": [{"ip": "10.0.0.1"}]},
        "healthCheck": {"http": {}}}})
    default: dict[str, Any] = {path: _at(schema, path)["default"] for path in [
        "forwarding", "scheduler.name", "ports.[].protocol", "weight", "onePacket",
        "tunnel.type", "tunnel.checksum", "persistence.timeoutSeconds",
        "connectionLimits.upper", "connectionLimits.lower", "drain.timeoutSeconds",
        "healthCheck.intervalSeconds", "healthCheck.timeoutSeconds",
        "healthCheck.failureThreshold", "healthCheck.successThreshold", "healthCheck.http.path",
        "healthCheck.http.statusCodes"]}
    assert _at(schema, "scheduler")["default"] == {}
    assert spec.FORWARDING[default["forwarding"]] is model.Forwarding.DIRECT_ROUTING
    assert vs.scheduler == default["scheduler.name"]
    assert vs.ports[0].protocol.name == default["ports.[].protocol"]
    assert (vs.weight, vs.one_packet) == (default["weight"], default["onePacket"])
    assert vs.tunnel == model.Tunnel(type=spec.TUNNEL_TYPES[default["tunnel.type"]],
                                     checksum=spec.TUNNEL_CHECKSUMS[default["tunnel.checksum"]])
    assert vs.persistence is not None
    assert vs.persistence.timeout == default["persistence.timeoutSeconds"]
    assert (vs.upper_threshold, vs.lower_threshold) == (default["connectionLimits.upper"],
                                                        default["connectionLimits.lower"])
    assert vs.drain_timeout_seconds == default["drain.timeoutSeconds"]
    check = vs.health_check
    assert check is not None
    assert (check.interval_seconds, check.timeout_seconds, check.failure_threshold,
            check.success_threshold, check.path, list(check.status_codes)) == (
        default["healthCheck.intervalSeconds"], default["healthCheck.timeoutSeconds"],
        default["healthCheck.failureThreshold"], default["healthCheck.successThreshold"],
        default["healthCheck.http.path"], default["healthCheck.http.statusCodes"])


def _walk(node: dict[str, Any], path: str):
    """Yield (path, node) for `node` and every schema below it."""
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{name}")
    if "items" in node:
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}.<key>")


def test_every_status_list_string_and_map_is_bounded():
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    unbounded = [path for path, node in _walk(status, "status")
                 if (node.get("type") == "array" and "maxItems" not in node)
                 or (node.get("type") == "string" and "maxLength" not in node
                     and "enum" not in node)
                 or ("additionalProperties" in node and "maxProperties" not in node)]
    assert unbounded == []


def test_status_bounds_are_the_writers():
    from lvs_operator.agent import report as agent_report
    from lvs_operator.controller import report as controller_report

    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    entry = status["properties"]["directors"]["additionalProperties"]["properties"]
    assert status["properties"]["realServers"]["maxItems"] == controller_report.MAX_REAL_SERVERS
    assert _at(status, "conditions.[].message")["maxLength"] == \
        controller_report.MAX_CONDITION_MESSAGE
    assert entry["unhealthy"]["maxItems"] == agent_report.MAX_UNHEALTHY
    assert entry["error"]["maxLength"] == entry["warning"]["maxLength"] == \
        agent_report.MAX_MESSAGE
    assert status["properties"]["directors"]["maxProperties"] == agent_report.MAX_DIRECTORS

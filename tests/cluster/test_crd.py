"""The VirtualServer CRD itself against a real API server: it installs cleanly, documents
every field (`kubectl explain`), and `kubectl get lvs` shows its printer columns."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from controlplane import ControlPlane
from crd_support import CRD, CRD_NAME, install_crd, module_namespace, names_field

from spec_cases import base

COLUMNS = ["NAME", "VIP", "PORTS", "MODE", "SCHEDULER", "READY", "ACTIVE", "AGE"]


@pytest.fixture(scope="module")
def ns(cluster: ControlPlane) -> Iterator[str]:
    install_crd(cluster)
    with module_namespace(cluster, "crd") as name:
        yield name


@pytest.fixture(scope="module")
def crd(cluster: ControlPlane, ns: str) -> dict[str, Any]:
    """The CRD as the API server stores it."""
    found: dict[str, Any] = json.loads(
        cluster.kubectl("get", "crd", CRD_NAME, "-o", "json").stdout)
    return found


def _explain(cluster: ControlPlane, field: str) -> str:
    """`kubectl explain FIELD`, retried while the API server publishes the new schema."""
    deadline = time.monotonic() + 30
    while True:
        r = cluster.kubectl("explain", field, check=False)
        if r.returncode == 0 or time.monotonic() > deadline:
            assert r.returncode == 0, r.stderr
            return r.stdout
        time.sleep(0.5)


def test_crd_is_accepted_without_warnings(cluster, ns, crd):
    # Re-applying the unchanged file: accepted as it is, nothing for the server to warn about.
    r = cluster.kubectl("apply", "--dry-run=server", "-f", str(CRD))
    assert "Warning" not in r.stderr, r.stderr
    status = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert status["Established"] == "True" and status["NamesAccepted"] == "True"


def test_names_short_name_and_category(cluster, crd):
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"], names["categories"]) == (
        "VirtualServer", "virtualservers", ["lvs"], ["lvs"])
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    # NAME SHORTNAMES APIVERSION NAMESPACED KIND VERBS CATEGORIES, as discovery serves them.
    resources = cluster.kubectl("api-resources", "--api-group=lvs.dev", "-o", "wide").stdout
    (row,) = [line.split() for line in resources.splitlines() if line.startswith("virtualservers")]
    assert row[1:5] == ["lvs", "lvs.dev/v1alpha1", "true", "VirtualServer"], resources
    assert row[-1] == "lvs", resources


def _undescribed(schema: dict[str, Any], path: str) -> Iterator[str]:
    for name, prop in schema.get("properties", {}).items():
        if name != "metadata" and not prop.get("description", "").strip():
            yield f"{path}.{name}"
        yield from _undescribed(prop, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _undescribed(schema[key], f"{path}[]" if key == "items" else f"{path}.*")


def test_every_field_has_a_description(crd):
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["description"].strip()
    assert list(_undescribed(schema, "virtualserver")) == []


def test_explain_forwarding_explains_the_modes_and_their_needs(cluster, ns):
    text = _explain(cluster, "virtualserver.spec.forwarding")
    for needed in [
        # DirectRouting: same L2 segment, silent VIP on loopback, done by realserver-init
        "DirectRouting", "L2 segment", "loopback", "arp_ignore", "arp_announce",
        "realserver-init",
        # Tunnel: encapsulations, decapsulating real servers, tunl0, rp_filter, MTU
        "Tunnel", "ipip", "gue", "gre", "decapsulate", "tunl0", "rp_filter", "MTU",
        # NAT: the director is the gateway, replies come back, ip_forward, port remapping
        "NAT", "gateway", "Replies must come back through the director", "ip_forward",
        "targetPort",
    ]:
        assert needed in text, f"`kubectl explain virtualserver.spec.forwarding` lacks {needed!r}"


def test_explain_by_short_name(cluster, ns):
    text = _explain(cluster, "lvs.spec.tunnel")
    assert "Tunnel only" in text and "checksum" in text and "port" in text


def test_get_shows_the_printer_columns(cluster, ns):
    doc = base()
    doc["metadata"] = {"name": "columns", "namespace": ns}
    doc["spec"]["ports"] = [{"port": 80}, {"port": 53, "protocol": "UDP"}]
    cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))
    # What the controller and the active director's agent write; users cannot (see below).
    status = {"ports": "80/TCP,53/UDP", "ready": "2/2", "activeDirector": "node-a"}
    cluster.kubectl("patch", "virtualserver", "columns", "-n", ns, "--subresource=status",
                    "--type=merge", "-p", json.dumps({"status": status}))
    header, *rows = cluster.kubectl("get", "lvs", "-n", ns).stdout.splitlines()
    assert header.split() == COLUMNS
    (row,) = rows
    assert row.split()[:-1] == ["columns", "192.0.2.10", "80/TCP,53/UDP", "DirectRouting",
                                "wrr", "2/2", "node-a"]


def test_status_is_a_subresource(cluster, ns):
    doc = base()
    doc["metadata"] = {"name": "status", "namespace": ns}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))
    # A status in the main resource is dropped; a spec change bumps the generation.
    doc["status"] = {"ready": "9/9"}
    doc["spec"]["weight"] = 5
    cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))
    stored = json.loads(cluster.kubectl("get", "lvs", "status", "-n", ns, "-o", "json").stdout)
    assert stored.get("status", {}).get("ready") is None
    assert stored["metadata"]["generation"] == 2
    cluster.kubectl("patch", "virtualserver", "status", "-n", ns, "--subresource=status",
                    "--type=merge", "-p", json.dumps({"status": {"observedGeneration": 2}}))
    stored = json.loads(cluster.kubectl("get", "lvs", "status", "-n", ns, "-o", "json").stdout)
    assert stored["status"]["observedGeneration"] == 2
    assert stored["metadata"]["generation"] == 2, "a status write is not a spec change"


def _reals(n: int) -> list[dict[str, Any]]:
    return [{"ip": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "port": 8080, "weight": 1,
             "ready": True, "node": "node-a", "pod": f"web-{i}"} for i in range(n)]


# (id, the status field's path in the API server's error, its bound, status of that size)
STATUS_BOUNDS = [
    ("error", "status.directors.node-a.error", 1024,
     lambda n: {"directors": {"node-a": {"role": "Active", "error": "x" * n}}}),
    ("unhealthy", "status.directors.node-a.unhealthy", 1000,
     lambda n: {"directors": {"node-a": {"role": "Active",
                                         "unhealthy": [f"10.0.0.1:{p + 1}" for p in range(n)]}}}),
    ("directors", "status.directors", 128,
     lambda n: {"directors": {f"node-{i}": {"role": "Standby"} for i in range(n)}}),
    ("realServers", "status.realServers", 5000, lambda n: {"realServers": _reals(n)}),
    ("condition-message", "status.conditions[0].message", 32768,
     lambda n: {"conditions": [{"type": "Ready", "status": "True", "message": "x" * n}]}),
    ("activeDirector", "status.activeDirector", 253, lambda n: {"activeDirector": "a" * n}),
]


@pytest.mark.parametrize(("path", "bound", "status"), [case[1:] for case in STATUS_BOUNDS],
                         ids=[case[0] for case in STATUS_BOUNDS])
def test_an_over_long_status_is_refused(cluster, ns, tmp_path, path, bound, status):
    """The writers cut their status at these bounds (agent.report, controller.report): one
    more is what a bug or a forged agent would write, and the API server refuses it."""
    name = f"bounds-{path.rsplit('.', 1)[-1].replace('[0]', '').lower()}"
    doc = base()
    doc["metadata"] = {"name": name, "namespace": ns}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))

    def patch(size: int) -> Any:
        # From a file: 5,000 real servers are more than one command-line argument may hold.
        body = tmp_path / f"status-{size}.json"
        body.write_text(json.dumps({"status": status(size)}))
        return cluster.kubectl("patch", "virtualserver", name, "-n", ns, "--subresource=status",
                               "--type=merge", "--patch-file", str(body), check=False)

    over = patch(bound + 1)
    assert over.returncode != 0, f"{path} longer than {bound} was accepted"
    assert names_field(over.stderr, path), over.stderr
    at = patch(bound)
    assert at.returncode == 0, at.stderr

"""The examples in crds/examples/: each is applied with `kubectl apply` to the real API server
and parsed by `spec`; what the server stores (with its defaults) parses to the same
VirtualServer as the file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import ControlPlane
from crd_support import EXAMPLES, install_crd, module_namespace, parse

from lvs_operator.api import spec
from lvs_operator.model import Forwarding

FILES = sorted(EXAMPLES.glob("*.yaml"))


@pytest.fixture(scope="module")
def ns(cluster: ControlPlane) -> Iterator[str]:
    install_crd(cluster)
    with module_namespace(cluster, "crd-examples") as name:
        yield name


def _virtual_servers(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text())
            if d and d.get("kind") == "VirtualServer"]


def _parsed(path: Path) -> list[spec.VirtualServer]:
    return [spec.parse(d, default_namespace="example") for d in _virtual_servers(path)]


def test_the_examples_cover_every_mode_and_feature():
    parsed = [vs for path in FILES for vs in _parsed(path)]
    assert {vs.forwarding for vs in parsed} == set(Forwarding)
    assert any(isinstance(vs.backend, spec.ServiceBackend) for vs in parsed), "a Service"
    assert any(not isinstance(vs.backend, spec.ServiceBackend) for vs in parsed), "addresses"
    assert any(vs.vip.version == 6 for vs in parsed), "an IPv6 VIP"
    assert any(vs.persistence for vs in parsed), "a persistent service"
    assert len({vs.name for vs in parsed}) == len(parsed), "names must differ (one namespace)"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_example_applies_and_parses(cluster, ns, path):
    cluster.kubectl("apply", "-n", ns, "-f", str(path))
    for doc, vs in zip(_virtual_servers(path), _parsed(path), strict=True):
        out = cluster.kubectl("get", "virtualserver", doc["metadata"]["name"], "-n", ns,
                              "-o", "json").stdout
        stored = parse(json.loads(out), ns)
        assert stored == parse(doc, ns), f"{path.name}: the stored {vs.name} parses differently"

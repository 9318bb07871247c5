"""spec.parse and spec.services."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from lvs_operator import documents
from lvs_operator.api import spec
from lvs_operator.model import (
    Forwarding,
    Protocol,
    SchedulerFlag,
    ServiceKey,
    TunnelChecksum,
    TunnelType,
)
from spec_cases import INVALID, VALID, base


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.id)
def test_valid(case):
    spec.parse(case.document())


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_invalid_names_the_field(case):
    with pytest.raises(spec.SpecError) as caught:
        spec.parse(case.document())
    assert caught.value.path == case.error_path
    assert str(caught.value).startswith(f"{case.error_path}: ")


def test_parse_base():
    vs = spec.parse(base())
    assert vs.id == "shop/web"
    assert vs.vip == ip_address("192.0.2.10")
    assert vs.forwarding is Forwarding.DIRECT_ROUTING
    assert vs.keys == [ServiceKey.inet(Protocol.TCP, ip_address("192.0.2.10"), 80)]


def test_services_dr_uses_virtual_port_and_weights():
    vs = spec.parse(base())
    (service,) = documents.desired_table([vs]).values()
    assert service.scheduler == "wrr"
    weights = {str(r.address): (r.port, r.weight, r.forwarding) for r in service.reals.values()}
    assert weights == {"10.0.0.1": (80, 3, Forwarding.DIRECT_ROUTING),
                       "10.0.0.2": (80, 1, Forwarding.DIRECT_ROUTING)}


def test_services_nat_target_port_per_port():
    doc = base()
    doc["spec"].update(forwarding="NAT", ports=[{"port": 80, "targetPort": 8080},
                                                {"port": 443, "protocol": "TCP"}])
    vs = spec.parse(doc)
    http, https = documents.desired_table([vs]).values()
    assert {r.port for r in http.reals.values()} == {8080}
    assert {r.port for r in https.reals.values()} == {443}


def test_services_tunnel_settings_reach_real_servers():
    doc = base()
    doc["spec"].update(forwarding="Tunnel", tunnel={"type": "gue", "port": 6080,
                                                    "checksum": "remote"})
    vs = spec.parse(doc)
    (service,) = documents.desired_table([vs]).values()
    tunnel = next(iter(service.reals.values())).tunnel
    assert tunnel is not None
    assert (tunnel.type, tunnel.port, tunnel.checksum) == (TunnelType.GUE, 6080,
                                                           TunnelChecksum.REMOTE)


def test_services_skip_other_family_unless_tunnel():
    vs = spec.parse(base())
    endpoints = [spec.Endpoint(ip_address("10.0.0.1")), spec.Endpoint(ip_address("2001:db8::1"))]
    (service,) = spec.services(vs, endpoints)
    assert [str(r.address) for r in service.reals.values()] == ["10.0.0.1"]


def test_persistence_and_flags():
    doc = base()
    doc["spec"].update(scheduler={"name": "mh", "flags": ["mh-port"]},
                       persistence={"timeoutSeconds": 60, "netmask": "255.255.255.0"})
    vs = spec.parse(doc)
    assert vs.scheduler_flags == frozenset({SchedulerFlag.PORT})
    assert vs.persistence is not None
    assert (vs.persistence.timeout, vs.persistence.prefix) == (60, 24)


def test_wrong_kind():
    doc = base()
    doc["kind"] = "Service"
    with pytest.raises(spec.SpecError, match=r"^kind: "):
        spec.parse(doc)


def test_default_namespace():
    doc = base()
    del doc["metadata"]["namespace"]
    assert spec.parse(doc, default_namespace="ops").id == "ops/web"

"""resolve.resolve: a VirtualServer's backend -> status.realServers, table-driven."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

import pytest

from lvs_operator.api import conditions, spec
from lvs_operator.api.realservers import RealServerStatus
from lvs_operator.controller import resolve


def vs(*, forwarding: str = "DirectRouting", ports: list[dict[str, Any]] | None = None,
       port: str | int | None = "http", vip: str = "192.0.2.10", weight: int = 5,
       addresses: list[dict[str, Any]] | None = None) -> spec.VirtualServer:
    backend: dict[str, Any]
    if addresses is not None:
        backend = {"addresses": addresses}
    else:
        backend = {"service": {"name": "web"} if port is None else {"name": "web", "port": port}}
    return spec.parse({"metadata": {"name": "lb", "namespace": "shop"}, "spec": {
        "vip": vip, "ports": ports or [{"port": 80}], "forwarding": forwarding,
        "backend": backend, "weight": weight}})


def service(*ports: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "web", "namespace": "shop"}, "spec": {"ports": list(ports)}}


HTTP = {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}
WEB = service(HTTP)


def ep(ip: str, *, ready: bool | None = True, serving: bool | None = None,
       terminating: bool | None = None, node: str | None = "n1",
       pod: str | None = None) -> dict[str, Any]:
    conditions = {k: v for k, v in (("ready", ready), ("serving", serving),
                                    ("terminating", terminating)) if v is not None}
    endpoint: dict[str, Any] = {"addresses": [ip], "conditions": conditions}
    if node:
        endpoint["nodeName"] = node
    endpoint["targetRef"] = {"kind": "Pod", "name": pod or f"web-{ip.split('.')[-1]}",
                             "namespace": "shop"}
    return endpoint


def eps(*endpoints: dict[str, Any], port: int | None = 80, name: str = "http",
        family: str = "IPv4") -> dict[str, Any]:
    ports = [] if port is None and not name else [{"name": name, "port": port,
                                                   "protocol": "TCP"}]
    return {"metadata": {"name": "web-abc", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": family, "ports": ports, "endpoints": list(endpoints)}


def real(ip: str, weight: int = 5, *, port: int | None = 80, ready: bool = True,
         node: str | None = "n1", pod: str | None = "") -> RealServerStatus:
    if pod == "":
        pod = f"web-{ip.split('.')[-1]}"
    return RealServerStatus(ip_address(ip), port, weight, ready, node, pod)


CASES = [
    pytest.param(vs(), None, [], conditions.SERVICE_NOT_FOUND, (), id="service-not-found"),
    pytest.param(vs(), WEB, [], conditions.NO_READY_ENDPOINTS, (), id="no-slices"),
    pytest.param(vs(), WEB, [eps()], conditions.NO_READY_ENDPOINTS, (), id="empty-slice"),
    pytest.param(
        vs(), WEB, [eps(ep("10.0.0.2"), ep("10.0.0.1"))], conditions.RESOLVED,
        (real("10.0.0.1"), real("10.0.0.2")), id="ready-get-the-weight-sorted"),
    pytest.param(
        vs(), WEB, [eps(ep("10.0.0.1", ready=None))], conditions.RESOLVED,
        (real("10.0.0.1"),), id="nil-ready-means-ready"),
    pytest.param(
        vs(), WEB, [eps(ep("10.0.0.1"), ep("10.0.0.2", ready=False, serving=False))],
        conditions.RESOLVED, (real("10.0.0.1"), real("10.0.0.2", 0, ready=False)),
        id="not-ready-listed-at-weight-0"),
    pytest.param(
        vs(), WEB, [eps(ep("10.0.0.1"),
                        ep("10.0.0.2", ready=False, serving=True, terminating=True))],
        conditions.RESOLVED, (real("10.0.0.1"), real("10.0.0.2", 0, ready=False)),
        id="terminating-serving-drains-at-weight-0"),
    pytest.param(
        vs(), WEB, [eps(ep("10.0.0.2", ready=False, serving=True, terminating=True),
                        ep("10.0.0.3", ready=False, serving=False))],
        conditions.NO_READY_ENDPOINTS,
        (real("10.0.0.2", 5, ready=False), real("10.0.0.3", 0, ready=False)),
        id="nothing-ready-terminating-serving-keep-weight"),
    pytest.param(
        vs(), WEB, [eps(ep("10.0.0.1"),
                        ep("10.0.0.2", ready=False, serving=False, terminating=True))],
        conditions.RESOLVED, (real("10.0.0.1"),), id="terminating-not-serving-left-out"),
    pytest.param(
        vs(), WEB, [eps(ep("10.0.0.1", ready=False, terminating=True))],
        conditions.NO_READY_ENDPOINTS, (), id="terminating-nil-serving-follows-ready"),
    pytest.param(
        vs(), WEB, [eps(ep("10.0.0.1", ready=False, serving=False)),
                    eps(ep("10.0.0.1", pod="web-new"))],
        conditions.RESOLVED, (real("10.0.0.1", pod="web-new"),), id="duplicate-best-wins"),
    pytest.param(
        vs(), WEB, [eps(ep("10.0.0.1"), ep("2001:db8::1"), family="IPv4"),
                    eps(ep("2001:db8::2", node=None), family="IPv6")],
        conditions.RESOLVED, (real("10.0.0.1"),), id="other-family-left-out"),
    pytest.param(
        vs(forwarding="Tunnel"), WEB, [eps(ep("10.0.0.1")),
                                        eps(ep("2001:db8::2"), family="IPv6")],
        conditions.RESOLVED, (real("10.0.0.1"), real("2001:db8::2", pod="web-2001:db8::2")),
        id="tunnel-mixes-families"),
    pytest.param(
        vs(), WEB, [{**eps(ep("10.0.0.1")), "addressType": "FQDN"}],
        conditions.NO_READY_ENDPOINTS, (), id="fqdn-ignored"),
    pytest.param(
        vs(), WEB, [eps(ep("10.0.0.1"), name="other")], conditions.NO_READY_ENDPOINTS, (),
        id="slice-without-the-port-ignored"),
    pytest.param(
        vs(port=80), WEB, [eps(ep("10.0.0.1"))], conditions.RESOLVED, (real("10.0.0.1"),),
        id="port-by-number"),
    pytest.param(
        vs(port="https"), WEB, [eps(ep("10.0.0.1"))], conditions.PORT_NOT_FOUND, (),
        id="port-name-unknown"),
    pytest.param(
        vs(port=443), WEB, [eps(ep("10.0.0.1"))], conditions.PORT_NOT_FOUND, (),
        id="port-number-unknown"),
    pytest.param(
        vs(port=None), WEB, [eps(ep("10.0.0.1"))], conditions.RESOLVED, (real("10.0.0.1"),),
        id="default-the-only-port"),
    pytest.param(
        vs(port=None), service(HTTP, {"name": "https", "port": 443}), [eps(ep("10.0.0.1"))],
        conditions.PORT_NOT_FOUND, (), id="default-ambiguous"),
    pytest.param(
        vs(port=None), service(), [eps(ep("10.0.0.1"), port=None, name="")],
        conditions.RESOLVED, (real("10.0.0.1", port=None),), id="headless-no-ports"),
    pytest.param(
        vs(port=None), service({"port": 80}), [eps(ep("10.0.0.1"), name="")],
        conditions.RESOLVED, (real("10.0.0.1"),), id="unnamed-single-port"),
    pytest.param(
        vs(), WEB, [eps(ep("10.0.0.1"), port=8080)], conditions.PORT_MISMATCH, (),
        id="dr-cannot-remap"),
    pytest.param(
        vs(), WEB, [eps(ep("10.0.0.1"), port=8080), eps(ep("10.0.0.2"), port=80)],
        conditions.RESOLVED, (real("10.0.0.2"),), id="dr-wrong-port-endpoints-left-out"),
    pytest.param(
        vs(forwarding="NAT"), WEB, [eps(ep("10.0.0.1"), port=8080)], conditions.RESOLVED,
        (real("10.0.0.1", port=8080),), id="nat-remaps"),
    pytest.param(
        vs(ports=[{"port": 80}, {"port": 443}]), WEB, [eps(ep("10.0.0.1"), port=80)],
        conditions.RESOLVED, (real("10.0.0.1", port=None),), id="dr-several-virtual-ports"),
    pytest.param(
        vs(addresses=[{"ip": "10.0.5.8"}, {"ip": "10.0.5.7", "weight": 3}]), None, [],
        conditions.RESOLVED,
        (real("10.0.5.7", 3, port=None, node=None, pod=None),
         real("10.0.5.8", port=None, node=None, pod=None)), id="static-addresses"),
    pytest.param(
        vs(forwarding="NAT", addresses=[{"ip": "10.0.5.7", "port": 8080}]), None, [],
        conditions.RESOLVED, (real("10.0.5.7", port=8080, node=None, pod=None),),
        id="static-address-with-port"),
]


@pytest.mark.parametrize(("server", "svc", "slices", "reason", "expected"), CASES)
def test_resolve(server, svc, slices, reason, expected):
    result = resolve.resolve(server, svc, slices)
    assert (result.reason, result.real_servers) == (reason, expected), result.message
    assert result.resolved == (reason == conditions.RESOLVED)
    # Deterministic: the order of slices and endpoints does not matter.
    again = resolve.resolve(server, svc, [{**s, "endpoints": s["endpoints"][::-1]}
                                          for s in slices[::-1]])
    assert again == result


MESSAGES = [
    pytest.param(vs(), None, [], "Service shop/web does not exist", id="not-found"),
    pytest.param(vs(port="https"), WEB, [], "has no port 'https' (its ports: http)",
                 id="no-such-port"),
    pytest.param(vs(port=None), service(HTTP, {"name": "https", "port": 443}), [],
                 "has 2 ports (http, https): set spec.backend.service.port", id="ambiguous"),
    pytest.param(vs(), WEB, [], "Service shop/web has no endpoints", id="no-endpoints"),
    pytest.param(vs(), WEB, [eps(ep("10.0.0.1", ready=False),
                                 ep("10.0.0.2", ready=False, serving=True, terminating=True))],
                 "none of the 2 endpoints of Service shop/web is ready (1 not ready, "
                 "1 terminating); the terminating ones keep serving", id="none-ready"),
    pytest.param(vs(), WEB, [eps(ep("10.0.0.1"), ep("10.0.0.2", ready=False))],
                 "1 of 2 endpoints of Service shop/web ready", id="counts"),
    pytest.param(vs(), WEB, [eps(ep("10.0.0.1"), port=8080)],
                 "listen on port 8080, but DirectRouting cannot remap the virtual port 80",
                 id="mismatch"),
    pytest.param(vs(), WEB, [eps(ep("2001:db8::1"), family="IPv6")],
                 "1 endpoint of the other address family left out: only forwarding: Tunnel",
                 id="family"),
    pytest.param(vs(addresses=[{"ip": "10.0.5.7"}]), None, [], "1 static address",
                 id="static"),
]


@pytest.mark.parametrize(("server", "svc", "slices", "text"), MESSAGES)
def test_messages(server, svc, slices, text):
    assert text in resolve.resolve(server, svc, slices).message


def test_json_round_trip_and_endpoint():
    entry = real("10.0.0.1", 3)
    raw = entry.to_json()
    assert raw == {"ip": "10.0.0.1", "port": 80, "weight": 3, "ready": True, "node": "n1",
                   "pod": "web-1"}
    assert RealServerStatus.from_json(raw) == entry
    static = real("10.0.5.7", port=None, node=None, pod=None)
    assert static.to_json() == {"ip": "10.0.5.7", "weight": 5, "ready": True}
    assert static.endpoint() == spec.Endpoint(ip_address("10.0.5.7"), None, 5)
    with pytest.raises(ValueError):
        RealServerStatus.from_json({"ip": "nope"})


def test_service_of():
    assert resolve.service_of(eps()) == "web"
    assert resolve.service_of({"metadata": {}}) is None

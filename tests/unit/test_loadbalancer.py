"""controller.loadbalancer: which Services are served, their annotations, the addresses they
may have, the generated VirtualServer and status.loadBalancer (pure)."""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any

import pytest

from lvs_operator.api import claims, pools, spec
from lvs_operator.controller import loadbalancer as lb
from lvs_operator.controller import objects

NS = "shop"


def service(name: str = "web", *, annotations: dict[str, str] | None = None,
            ports: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    body = {"type": "LoadBalancer", "loadBalancerClass": lb.DEFAULT_CLASS,
            "ports": ports or [{"name": "http", "port": 80, "targetPort": 80,
                                "protocol": "TCP"}],
            "ipFamilies": ["IPv4"], **fields}
    return {"metadata": {"namespace": NS, "name": name, "uid": f"uid-{name}",
                         "annotations": annotations or {}}, "spec": body}


def pool(name: str, *addresses: str, **fields: Any) -> pools.Pool:
    return pools.parse({"metadata": {"name": name}, "spec": {
        "addresses": list(addresses), "namespaces": [NS], **fields}})


@pytest.mark.parametrize(("fields", "default", "expected"), [
    ({}, False, True),
    ({"loadBalancerClass": "example.com/lb"}, True, False),
    ({"loadBalancerClass": None}, False, False),
    ({"loadBalancerClass": None}, True, True),
    ({"type": "ClusterIP"}, True, False),
])
def test_served(fields, default, expected):
    assert lb.served(service(**fields), load_balancer_class=lb.DEFAULT_CLASS,
                     default=default) is expected


def test_request_defaults_and_the_generated_virtualserver():
    req = lb.request(service(ports=[{"name": "http", "port": 80, "targetPort": 80},
                                    {"port": 53, "protocol": "UDP", "targetPort": 53}]))
    assert (req.families, req.addresses, req.pool, req.sharing_key) == ((4,), {}, "", "")
    doc = lb.virtual_server(req, 4, ip_address("192.0.2.7"))
    assert doc["metadata"]["name"] == "web-ipv4"
    assert doc["metadata"]["labels"][lb.SERVICE_LABEL] == "web"
    assert doc["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Service",
                                                   "name": "web", "uid": "uid-web",
                                                   "controller": True}]
    assert doc["spec"] == {"vip": "192.0.2.7", "forwarding": "DirectRouting",
                           "ports": [{"port": 80, "protocol": "TCP"},
                                     {"port": 53, "protocol": "UDP"}],
                           "backend": {"service": {"name": "web", "port": "http"}}}
    assert lb.parse(req, 4, ip_address("192.0.2.7")).forwarding is spec.FORWARDING[
        "DirectRouting"]


def test_annotations_become_the_virtualservers_settings():
    req = lb.request(service(annotations={
        lb.FORWARDING: "Tunnel", lb.SCHEDULER: "mh", lb.SCHEDULER_FLAGS: "mh-port",
        lb.PERSISTENCE: "600", lb.HEALTH_CHECK: "http", lb.HEALTH_CHECK_PATH: "/healthz",
        lb.SHARING_KEY: "front", lb.POOL: "blue"}))
    assert (req.pool, req.sharing_key) == ("blue", "front")
    vs = lb.parse(req, 4, ip_address("192.0.2.7"))
    assert (vs.scheduler, vs.persistence and vs.persistence.timeout, vs.sharing_key,
            vs.health_check and vs.health_check.path) == ("mh", 600, "front", "/healthz")


@pytest.mark.parametrize(("annotations", "fields", "message"), [
    ({lb.FORWARDING: "Teleport"}, {}, "lvs.dev/forwarding: must be one of DirectRouting"),
    ({lb.SCHEDULER: "fastest"}, {}, "lvs.dev/scheduler: unknown scheduler 'fastest'"),
    ({lb.SCHEDULER: "wrr", lb.SCHEDULER_FLAGS: "sh-port"}, {}, "lvs.dev/scheduler-flags: "),
    ({lb.PERSISTENCE: "soon"}, {}, "lvs.dev/persistence-timeout: must be a number"),
    ({lb.HEALTH_CHECK: "icmp"}, {}, "lvs.dev/health-check: must be tcp or http"),
    ({lb.HEALTH_CHECK_PATH: "/x"}, {}, "lvs.dev/health-check-path: needs lvs.dev/health-check"),
    ({lb.SHARING_KEY: "Not_A_Key"}, {}, "lvs.dev/sharing-key: "),
    ({lb.VIP: "300.1.1.1"}, {}, "lvs.dev/vip: '300.1.1.1' is not an IPv4 or IPv6 address"),
    ({lb.VIP: "2001:db8::1"}, {}, "lvs.dev/vip: 2001:db8::1 is IPv6, but the Service's"),
    ({lb.VIP: "192.0.2.1,192.0.2.2"}, {}, "lvs.dev/vip: gives two IPv4 addresses"),
    ({}, {"loadBalancerIP": "127.0.0.1"}, "spec.loadBalancerIP: 127.0.0.1 cannot be used"),
    ({lb.FORWARDING: "NAT"}, {"ports": [{"port": 80, "targetPort": "http"},
                                        {"port": 81, "targetPort": "admin"}]},
     "lvs.dev/forwarding: NAT with several ports needs numeric targetPorts"),
    ({}, {"ports": [{"port": 80, "protocol": "ICMP"}]}, "spec.ports[0].protocol: IPVS serves"),
])
def test_bad_values_name_the_annotation(annotations, fields, message):
    with pytest.raises(lb.AnnotationError) as caught:
        lb.request(service(annotations=annotations, **fields))
    assert str(caught.value).startswith(message), caught.value


def test_requested_addresses_per_family_and_nat_target_ports():
    req = lb.request(service(annotations={lb.VIP: "2001:db8::5, 192.0.2.5"},
                             ipFamilies=["IPv6", "IPv4"]))
    assert req.families == (6, 4)
    assert req.addresses == {4: ip_address("192.0.2.5"), 6: ip_address("2001:db8::5")}
    assert req.requested_by == lb.VIP
    assert lb.request(service(loadBalancerIP="192.0.2.9")).requested_by == \
        "spec.loadBalancerIP"
    nat = lb.request(service(annotations={lb.FORWARDING: "NAT"}, ports=[
        {"port": 80, "targetPort": 8080}, {"port": 443, "targetPort": 443}]))
    assert nat.spec["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 8080},
                                 {"port": 443, "protocol": "TCP"}]


def claim(address: str, namespace: str = NS, **fields: Any) -> claims.Claim:
    return claims.Claim(ip_address(address), namespace, **fields)


def test_chosen_reads_the_allocation_from_the_claims():
    req = lb.request(service())
    mine = [claim("192.0.2.9", service="web"), claim("192.0.2.3", service="web"),
            claim("2001:db8::1", service="web"), claim("192.0.2.1", service="other")]
    # Two allocators racing may each have made one: every replica picks the lowest.
    assert lb.chosen(req, 4, mine) == ip_address("192.0.2.3")
    assert lb.chosen(req, 6, mine) is None  # not one of its families
    named = lb.request(service(annotations={lb.POOL: "blue"}))
    assert lb.chosen(named, 4, [claim("192.0.2.3", service="web", pool="red"),
                                claim("192.0.2.8", service="web", pool="blue")]) == \
        ip_address("192.0.2.8")
    shared = lb.request(service("dns", annotations={lb.SHARING_KEY: "k"}))
    assert lb.chosen(shared, 4, [claim("192.0.2.4", service="web", sharing_key="k")]) == \
        ip_address("192.0.2.4")
    assert lb.chosen(shared, 4, [claim("192.0.2.4", "other", service="web",
                                       sharing_key="k")]) is None


def test_a_requested_address_and_whose_it_is():
    req = lb.request(service(annotations={lb.VIP: "192.0.2.5"}))
    assert lb.chosen(req, 4, [claim("192.0.2.5", service="web")]) == ip_address("192.0.2.5")
    assert lb.chosen(req, 4, [claim("192.0.2.5")]) == ip_address("192.0.2.5")  # a VS's
    assert lb.refusal(req, claim("192.0.2.5", "other")) == (
        "lvs.dev/vip: 192.0.2.5 belongs to another namespace: request another address")
    assert "give both Services the same lvs.dev/sharing-key" in lb.refusal(
        req, claim("192.0.2.5", service="db"))
    assert lb.chosen(req, 4, [claim("192.0.2.5", service="db")]) is None


def test_sources_and_free_addresses():
    req = lb.request(service())
    found = [pool("b-auto", "192.0.2.0/30", autoAssign=True),
             pool("a-auto", "2001:db8::/126", "192.0.2.8-192.0.2.9", autoAssign=True),
             pool("c-nat", "192.0.2.16/30", autoAssign=True, forwarding=["NAT"]),
             pool("d-manual", "192.0.2.32/30")]
    source = lb.sources(req, 4, found, None)
    assert [p.name for p in source] == ["a-auto", "b-auto"]  # by name; DR allowed
    taken = {ip_address("192.0.2.8")}
    assert [str(a) for a, _ in lb.free(source, 4, taken)] == [
        "192.0.2.9", "192.0.2.0", "192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert [str(a) for a, _ in lb.free(lb.sources(req, 6, found, None), 6, set())][:2] == [
        "2001:db8::", "2001:db8::1"]
    named = lb.request(service(annotations={lb.POOL: "d-manual"}))
    assert [p.name for p in lb.sources(named, 4, found, None)] == ["d-manual"]
    with pytest.raises(lb.AllocationError, match="may not use a VIPPool 'nope'"):
        lb.sources(lb.request(service(annotations={lb.POOL: "nope"})), 4, found, None)
    with pytest.raises(lb.AllocationError, match="no VIPPool with autoAssign"):
        lb.sources(req, 4, [found[3]], None)


def test_a_huge_pool_is_walked_lazily():
    big = pool("v6", "2001:db8::/64", autoAssign=True)
    first = next(lb.free([big], 6, set()))
    assert str(first[0]) == "2001:db8::" and first[1] is big


def test_load_balancer_status():
    assert lb.load_balancer_status((6, 4), {4: ip_address("192.0.2.1"),
                                            6: ip_address("2001:db8::1")}) == {"ingress": [
        {"ip": "2001:db8::1", "ipMode": "VIP"}, {"ip": "192.0.2.1", "ipMode": "VIP"}]}
    assert lb.load_balancer_status((4,), {}) == {}


def test_the_compact_service_keeps_what_serving_it_takes():
    full = service(annotations={lb.VIP: "192.0.2.5", "other.io/x": "y"},
                   selector={"app": "web"}, clusterIP="10.96.0.9")
    full["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.5"}]}}
    compact = objects.compact_service(full)
    assert compact["metadata"]["annotations"] == {lb.VIP: "192.0.2.5"}
    assert "clusterIP" not in compact["spec"]
    assert lb.request(compact) == lb.request(full)
    assert compact["status"] == full["status"]
    plain = objects.compact_service({"spec": {"type": "ClusterIP", "ports": []}})
    assert plain == {"spec": {"type": "ClusterIP", "ports": []}}


def test_every_annotation_is_documented_in_the_readme():
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for annotation in lb.ANNOTATIONS:
        assert f"`{annotation}`" in readme, annotation

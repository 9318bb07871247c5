"""Real traffic through a director programmed by `lvs-operator ipvs apply`.

Every test builds its own hosts (network namespaces on a bridge): a client, a director and
real servers made with `lvs-operator realserver-init`, and drives them only through the CLI,
as a user would. Assertions are on what the client receives and what the kernel reports.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections import Counter
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import yaml
from netlab import Lab, Lan, Netns, http_get, udp_query

from lvs_operator import realserver

pytestmark = pytest.mark.usefixtures("ipvs_module")

VIP4 = "10.200.0.100"
VIP6 = "fd00:200::100"
LVS = str(Path(sys.executable).with_name("lvs-operator"))
# A CLI call is a new Python process: under software emulation on a busy machine, start-up
# alone (and pyroute2's import, for --interface) can take tens of seconds.
CLI_TIMEOUT = 600.0
# Longest wait for service counters to show traffic (see Director.counted).
STATS_SECONDS = 10.0


# -- helpers ---------------------------------------------------------------------------------


def virtual_server(name: str, vip: str, reals: list[dict[str, Any]],
                   **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "lvs.dev/v1alpha1",
        "kind": "VirtualServer",
        "metadata": {"name": name, "namespace": "test"},
        "spec": {"vip": vip, "ports": [{"port": 80}], "forwarding": "DirectRouting",
                 "scheduler": {"name": "rr"}, "backend": {"addresses": reals}, **spec},
    }


class Director:
    """The director host and the CLI calls a user would make on it."""

    def __init__(self, ns: Netns, workdir: Path) -> None:
        self.ns = ns
        self.workdir = workdir
        self.state = workdir / f"{ns.name}.owned.json"

    def apply(self, *docs: dict[str, Any], interface: str | None = "eth0",
              extra: tuple[str, ...] = (), check: bool = True) -> subprocess.CompletedProcess[str]:
        path = self.workdir / "vs.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        argv = [LVS, "ipvs", "apply", "-f", str(path), "--state-file", str(self.state), *extra]
        if interface:
            argv += ["--interface", interface]
        return self.ns.run(argv, check=check, timeout=CLI_TIMEOUT)

    def table(self) -> list[dict[str, Any]]:
        out = self.ns.run([LVS, "ipvs", "show", "-o", "json"], timeout=CLI_TIMEOUT).stdout
        table: list[dict[str, Any]] = json.loads(out)
        return table

    def counted(self, protocol: str, conns: int) -> dict[str, int]:
        """Return the stats of the `protocol` service once they count `conns` connections.

        Kernels before 6.2 publish a service's counters when the rate estimator runs, every
        2 s: read right after the traffic, they may still be those of before it (zeros,
        under which "OutPkts stay 0" would prove nothing).
        """
        deadline = time.monotonic() + STATS_SECONDS
        while True:
            stats = service_stats(self.table(), protocol)
            if stats["conns"] >= conns or time.monotonic() > deadline:
                return stats
            time.sleep(0.2)

    def ipvsadm_save(self) -> str:
        return self.ns.run(["ipvsadm", "-S", "-n"]).stdout


def make_real_servers(lab: Lab, lan: Lan, roles: list[str], *, vips: list[str],
                      mode: realserver.Mode,
                      udp: bool = False) -> dict[str, str]:
    """Turn bare hosts into real servers with realserver-init; return {server name: role}.

    The setup runs in-process (in a thread inside each namespace): the CLI itself, confined
    to CAP_NET_ADMIN, is tested in test_realserver.py, and a process per server would only
    add interpreter start-up time under emulation.
    """
    names = {}
    for role in roles:
        ns = lan[role]
        ns.call(realserver.setup, [ip_address(vip) for vip in vips], mode)
        names[lab.http_server(ns).name] = role
        if udp:
            lab.udp_server(ns, port=5353)
    return names


def spread(client: Netns, url: str, count: int) -> Counter[str]:
    return Counter(http_get(client, url) for _ in range(count))


def get_from(client: Netns, source: str, vip: str, port: int = 80) -> str:
    """One HTTP GET on a new connection from a given source address; return the body."""

    def fetch() -> str:
        with socket.socket(socket.AF_INET6 if ":" in vip else socket.AF_INET) as sock:
            sock.settimeout(10)
            sock.bind((source, 0))
            sock.connect((vip, port))
            sock.sendall(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        return data.split(b"\r\n\r\n", 1)[1].decode()

    return client.call(fetch)


def service_stats(table: list[dict[str, Any]], protocol: str = "TCP") -> dict[str, int]:
    (service,) = [s for s in table if s["protocol"] == protocol]
    stats: dict[str, int] = service["stats"]
    return stats


@pytest.fixture
def dr_lan(lab: Lab) -> Lan:
    return lab.lan(["client", "director", "rs1", "rs2", "rs3"])


@pytest.fixture
def director(dr_lan: Lan, tmp_path: Path) -> Director:
    return Director(dr_lan["director"], tmp_path)


def reals_of(lan: Lan, roles: list[str], **fields: Any) -> list[dict[str, Any]]:
    return [{"ip": lan.ip4(role), **fields} for role in roles]


RS = ["rs1", "rs2", "rs3"]


# -- the three forwarding modes --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["DirectRouting", "Tunnel"])
def test_dr_and_tunnel_carry_tcp_and_udp_and_replies_bypass_the_director(
        lab, dr_lan, director, mode):
    names = make_real_servers(lab, dr_lan, RS, vips=[VIP4],
                              mode="dr" if mode == "DirectRouting" else "tunnel", udp=True)
    vs = virtual_server("web", VIP4, reals_of(dr_lan, RS), forwarding=mode,
                        ports=[{"port": 80}, {"port": 5353, "protocol": "UDP"}])
    director.apply(vs)

    answers = spread(dr_lan["client"], f"http://{VIP4}/", 30)
    assert sorted(answers.values()) == [10, 10, 10], answers
    assert set(answers) == set(names)
    udp_answers = {udp_query(dr_lan["client"], VIP4, 5353) for _ in range(6)}
    assert len(udp_answers) == 3, udp_answers

    tcp = director.counted("TCP", 30)
    assert tcp["conns"] == 30 and tcp["inPackets"] > 0
    assert tcp["outPackets"] == 0, "replies must go straight to the client"
    udp = director.counted("UDP", 3)
    assert udp["conns"] >= 3 and udp["inPackets"] > 0 and udp["outPackets"] == 0


def test_nat_remaps_ports_and_carries_tcp_and_udp(lab, tmp_path):
    client_lan = lab.lan(["client", "director"])
    director_ns = client_lan["director"]
    servers = lab.switch("back")
    director_ns_ip = "10.201.0.1"
    servers.connect(director_ns, "eth1", [f"{director_ns_ip}/24"])
    names = {}
    reals = []
    for i in range(1, 3):
        ns = lab.netns(f"nat{i}")
        address = f"10.201.0.{10 + i}"
        servers.connect(ns, "eth0", [f"{address}/24"])
        ns.add_route("default", via=director_ns_ip)
        names[lab.http_server(ns, port=8080).name] = ns
        lab.udp_server(ns, port=5300)
        reals.append({"ip": address})
    director = Director(director_ns, tmp_path)
    vs = virtual_server("nat", VIP4, reals, forwarding="NAT",
                        ports=[{"port": 80, "targetPort": 8080},
                               {"port": 53, "protocol": "UDP", "targetPort": 5300}])
    director.apply(vs)

    assert director_ns.sysctl("net.ipv4.ip_forward") == "1", "NAT needs forwarding"
    answers = spread(client_lan["client"], f"http://{VIP4}/", 10)
    assert sorted(answers.values()) == [5, 5] and set(answers) == set(names)
    assert len({udp_query(client_lan["client"], VIP4, 53) for _ in range(4)}) == 2
    assert director.counted("TCP", 10)["outPackets"] > 0, "NAT replies pass through"


def test_ipv6_direct_routing(lab, dr_lan, director):
    make_real_servers(lab, dr_lan, ["rs1", "rs2"], vips=[VIP6], mode="dr")
    reals = [{"ip": dr_lan.ip6(role)} for role in ["rs1", "rs2"]]
    director.apply(virtual_server("web6", VIP6, reals))
    answers = spread(dr_lan["client"], f"http://[{VIP6}]/", 10)
    assert sorted(answers.values()) == [5, 5]
    stats = director.counted("TCP", 10)
    assert stats["conns"] == 10 and stats["outPackets"] == 0


# -- schedulers and persistence --------------------------------------------------------------


def test_wrr_follows_weights(lab, dr_lan, director):
    names = make_real_servers(lab, dr_lan, RS, vips=[VIP4], mode="dr")
    reals = [{"ip": dr_lan.ip4(role), "weight": w} for role, w in zip(RS, [3, 2, 1], strict=True)]
    director.apply(virtual_server("web", VIP4, reals, scheduler={"name": "wrr"}))
    answers = spread(dr_lan["client"], f"http://{VIP4}/", 60)
    by_role = {names[name]: count for name, count in answers.items()}
    assert by_role == {"rs1": 30, "rs2": 20, "rs3": 10}


CLIENT_SOURCES = [f"10.200.0.{50 + i}" for i in range(8)]


@pytest.mark.parametrize("spec", [
    pytest.param({"scheduler": {"name": "sh"}}, id="sh"),
    pytest.param({"scheduler": {"name": "mh"}}, id="mh"),
    pytest.param({"scheduler": {"name": "rr"}, "persistence": {"timeoutSeconds": 300}},
                 id="rr-persistent"),
])
def test_a_client_stays_on_one_server(lab, dr_lan, director, spec):
    make_real_servers(lab, dr_lan, RS, vips=[VIP4], mode="dr")
    client = dr_lan["client"]
    for source in CLIENT_SOURCES:
        client.add_address("eth0", f"{source}/24")
    director.apply(virtual_server("web", VIP4, reals_of(dr_lan, RS), **spec))
    chosen = {}
    for source in CLIENT_SOURCES:
        answers = {get_from(client, source, VIP4) for _ in range(4)}
        assert len(answers) == 1, f"client {source} was sent to {answers}"
        chosen[source] = answers.pop()
    assert len(set(chosen.values())) > 1, "every client on one server: nothing was balanced"


# -- drain -----------------------------------------------------------------------------------


def test_drain_keeps_established_connection_and_avoids_new_ones(lab, dr_lan, director):
    names = make_real_servers(lab, dr_lan, RS, vips=[VIP4], mode="dr")
    client = dr_lan["client"]
    director.apply(virtual_server("web", VIP4, reals_of(dr_lan, RS)))
    session = lab.http_session(client, VIP4)
    pinned = session.get()
    pinned_role = names[pinned]
    remaining = [role for role in RS if role != pinned_role]

    out = director.apply(virtual_server("web", VIP4, reals_of(dr_lan, remaining)),
                         extra=("--drain",)).stdout
    assert "1 SetReal" in out, out
    (service,) = director.table()
    weights = {r["address"]: r["weight"] for r in service["realServers"]}
    assert weights[dr_lan.ip4(pinned_role)] == 0, "the removed server is drained, not deleted"

    for _ in range(3):
        assert session.get() == pinned, "the established connection keeps its server"
    answers = spread(client, f"http://{VIP4}/", 12)
    assert pinned not in answers and sum(answers.values()) == 12

    # Without --drain the withdrawal is immediate.
    director.apply(virtual_server("web", VIP4, reals_of(dr_lan, remaining)))
    (service,) = director.table()
    assert {r["address"] for r in service["realServers"]} == {dr_lan.ip4(r) for r in remaining}


# -- ownership: repair what we own, never touch the rest -------------------------------------


def test_external_flush_is_repaired_and_foreign_services_survive(lab, dr_lan, director):
    make_real_servers(lab, dr_lan, RS, vips=[VIP4], mode="dr")
    vs = virtual_server("web", VIP4, reals_of(dr_lan, RS))
    director.apply(vs)
    director.ns.run(["ipvsadm", "-C"])
    assert director.table() == []
    out = director.apply(vs).stdout
    assert "applied 4 operations" in out, out
    assert len(spread(dr_lan["client"], f"http://{VIP4}/", 6)) == 3

    director.ns.run(["ipvsadm", "-A", "-t", "10.200.0.200:80", "-s", "wlc"])
    director.ns.run(["ipvsadm", "-a", "-t", "10.200.0.200:80", "-r", "10.200.0.12", "-g"])
    assert "no changes" in director.apply(vs).stdout
    director.apply(interface=None)  # an empty file: withdraw everything we own
    remaining = director.table()
    assert [(s["address"], s["port"]) for s in remaining] == [("10.200.0.200", 80)]
    assert len(remaining[0]["realServers"]) == 1
    assert director.ns.ip("-o", "addr", "show", "dev", "eth0").count(VIP4) == 0


def test_reapply_is_a_noop_and_dry_run_changes_nothing(lab, dr_lan, director):
    vs = virtual_server("web", VIP4, reals_of(dr_lan, RS))
    dry = director.apply(vs, extra=("--dry-run",)).stdout
    assert "add service TCP 10.200.0.100:80" in dry and "would apply 4 operations" in dry
    assert director.table() == []
    director.apply(vs)
    assert "no changes" in director.apply(vs).stdout


# -- bad input -------------------------------------------------------------------------------


def _edit(change):
    def make(lan: Lan) -> dict[str, Any]:
        doc = virtual_server("bad", "10.200.0.101", reals_of(lan, RS))
        change(doc["spec"])
        return doc
    return make


BAD_INPUT = [
    pytest.param(_edit(lambda s: s.update(scheduler={"name": "fastest"})),
                 "spec.scheduler.name", id="unknown-scheduler"),
    pytest.param(_edit(lambda s: s.update(vip="10.200.0.300")), "spec.vip", id="bad-vip"),
    pytest.param(_edit(lambda s: s["backend"]["addresses"].append({"ip": "10.0.0.1.5"})),
                 "spec.backend.addresses[3].ip", id="bad-real-address"),
    pytest.param(_edit(lambda s: s.update(ports=[{"port": 65536}])), "spec.ports[0].port",
                 id="port-out-of-range"),
    pytest.param(_edit(lambda s: s.update(ports=[{"port": 80, "targetPort": 8080}])),
                 "spec.ports[0].targetPort", id="dr-remapped-port"),
    pytest.param(_edit(lambda s: s.update(forwarding="Tunnel",
                                          ports=[{"port": 80, "targetPort": 8080}])),
                 "spec.ports[0].targetPort", id="tunnel-remapped-port"),
]


@pytest.mark.parametrize(("make_bad", "field"), BAD_INPUT)
def test_bad_input_names_the_field_and_changes_nothing(dr_lan, director, make_bad, field):
    good = virtual_server("web", VIP4, reals_of(dr_lan, RS))
    director.apply(good)
    before = director.ipvsadm_save()
    result = director.apply(good, make_bad(dr_lan), check=False)
    assert result.returncode == 2, result
    assert f"VirtualServer test/bad: {field}: " in result.stderr, result.stderr
    assert "nothing was changed" in result.stderr
    assert director.ipvsadm_save() == before


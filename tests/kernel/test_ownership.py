"""Never touch what is not ours, in a real kernel: an IPVS service that something else made
(here `ipvsadm`, as kube-proxy in IPVS mode or keepalived's virtual_server would) on the same
key a desired table asks for is left exactly as it was, while desired and after, and the
conflict is reported; by `lvs-operator ipvs apply` and by the agent's sync path.

"Exactly" is `ipvsadm -L -n` of the service, byte for byte: scheduler and its flags,
persistence, every real server's forwarding, weight and thresholds.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import yaml
from netlab import Lab, Netns

from lvs_operator import documents, syncer
from lvs_operator.agent.drain import DrainStore, TimedDrain
from lvs_operator.api import spec
from lvs_operator.ipvs.kernel import KernelIPVS
from lvs_operator.model import Protocol, ServiceKey
from lvs_operator.ownership import OwnershipStore

pytestmark = pytest.mark.usefixtures("ipvs_module")

VIP = "10.200.0.100"
TAKEN = ServiceKey.inet(Protocol.TCP, ip_address(VIP), 80)
FREE = ServiceKey.inet(Protocol.TCP, ip_address(VIP), 8080)
LVS = str(Path(sys.executable).with_name("lvs-operator"))
# A CLI call is a new Python process: slow under software emulation on a busy machine.
CLI_TIMEOUT = 600.0
# What the other tool made on TAKEN: a scheduler flag, persistence, and real servers with
# other forwarding methods, weights and thresholds than the VirtualServer's.
FOREIGN = [
    ["ipvsadm", "-A", "-t", f"{VIP}:80", "-s", "sh", "-b", "sh-port", "-p", "120"],
    ["ipvsadm", "-a", "-t", f"{VIP}:80", "-r", "10.200.0.21:80", "-m", "-w", "7",
     "-x", "100", "-y", "10"],
    ["ipvsadm", "-a", "-t", f"{VIP}:80", "-r", "10.200.0.22:80", "-i", "-w", "0"],
]


def virtual_server() -> dict[str, Any]:
    """A VirtualServer on TAKEN and FREE, with other real servers than the foreign ones."""
    return {
        "apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualServer",
        "metadata": {"name": "web", "namespace": "test"},
        "spec": {"vip": VIP, "ports": [{"port": 80}, {"port": 8080}],
                 "forwarding": "DirectRouting", "scheduler": {"name": "rr"},
                 "backend": {"addresses": [{"ip": "10.200.0.31"}, {"ip": "10.200.0.32"}]}},
    }


@pytest.fixture
def director(lab: Lab) -> Netns:
    """A director holding the foreign service on TAKEN."""
    ns = lab.netns("director")
    ns.ip("link", "add", "eth0", "type", "dummy")
    ns.add_address("eth0", "10.200.0.11/24")
    ns.link_up("eth0")
    for argv in FOREIGN:
        ns.run(argv)
    return ns


def listing(ns: Netns, key: ServiceKey = TAKEN) -> str:
    """`ipvsadm -L -n` of one TCP service: the header, the service and its real servers."""
    return ns.run(["ipvsadm", "-L", "-n", "-t", f"{key.address}:{key.port}"]).stdout


def saved(ns: Netns) -> list[str]:
    """The lines of `ipvsadm -S -n`, sorted (the kernel lists services in hash order)."""
    return sorted(ns.run(["ipvsadm", "-S", "-n"]).stdout.splitlines())


def service_keys(ns: Netns) -> list[str]:
    """The services of `ipvsadm -S -n`, one `-A` line each, sorted."""
    return [line for line in saved(ns) if line.startswith("-A ")]


def apply(ns: Netns, workdir: Path, *docs: dict[str, Any], adopt: bool = False
          ) -> tuple[int, str, str]:
    path = workdir / "vs.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    argv = [LVS, "ipvs", "apply", "-f", str(path), "--state-file", str(workdir / "owned.json")]
    done = ns.run([*argv, *(["--adopt"] if adopt else [])], check=False, timeout=CLI_TIMEOUT)
    return done.returncode, done.stdout, done.stderr


def test_ipvs_apply_leaves_a_foreign_service_as_it_was(director: Netns, tmp_path: Path) -> None:
    before = listing(director)
    code, out, err = apply(director, tmp_path, virtual_server())
    assert (code, err) == (1, f"lvs-operator: error: {syncer.describe_conflicts([TAKEN])}; or "
                              "re-run with --adopt to take it over as FILE describes\n")
    # The director sysctls first (a fresh namespace has the kernel's defaults), then FREE.
    *sysctls, summary = out.splitlines()
    assert all(line.startswith("set net.ipv4.vs.") for line in sysctls), out
    assert summary == "applied 3 operations (2 AddReal, 1 AddService)"
    assert listing(director) == before
    assert service_keys(director) == [f"-A -t {VIP}:80 -s sh -p 120 -b sh-port",
                                      f"-A -t {VIP}:8080 -s rr"]
    # Again: still a conflict, nothing to change.
    assert apply(director, tmp_path, virtual_server())[:2] == (
        1, "no changes: the kernel already matches\n")
    assert listing(director) == before
    # The VirtualServer goes: ours is withdrawn, the other tool's stays as it was.
    assert apply(director, tmp_path) == (0, "applied 1 operations (1 DeleteService)\n", "")
    assert listing(director) == before
    assert service_keys(director) == [f"-A -t {VIP}:80 -s sh -p 120 -b sh-port"]


def test_ipvs_apply_adopt_takes_it_over(director: Netns, tmp_path: Path) -> None:
    code, out, err = apply(director, tmp_path, virtual_server(), adopt=True)
    assert (code, err) == (0, "")
    assert out.splitlines()[-2:] == [f"adopted {TAKEN}",
                                     "applied 8 operations (4 AddReal, 1 AddService, "
                                     "2 DeleteReal, 1 SetService)"]
    assert saved(director) == sorted(
        [f"-A -t {VIP}:{port} -s rr" for port in (80, 8080)]
        + [f"-a -t {VIP}:{port} -r 10.200.0.{n}:{port} -g -w 1" for port in (80, 8080)
           for n in (31, 32)])
    # Ours now: withdrawn with the file's entry.
    assert apply(director, tmp_path)[0] == 0
    assert service_keys(director) == []


@pytest.fixture
def kernel(director: Netns) -> Iterator[KernelIPVS]:
    # As the agent opens it (cli._agent); the socket stays in the director's namespace.
    with director.call(lambda: KernelIPVS(verify_seconds=300.0).connect()) as ipvs:
        yield ipvs


def test_the_agents_sync_leaves_a_foreign_service_as_it_was(
        director: Netns, kernel: KernelIPVS, tmp_path: Path) -> None:
    """The agent's path: syncer.sync with drain, through its TimedDrain, record on disk."""
    store = OwnershipStore(tmp_path / "owned.json")
    drains = DrainStore(tmp_path / "owned.drains.json")
    desired = documents.desired_table([spec.parse(virtual_server())])

    def sync(table: dict[ServiceKey, Any]) -> syncer.SyncResult:
        timed = TimedDrain(kernel, store=drains, owned=lambda: store.load().services,
                           drain_timeouts={})
        return syncer.sync(timed, table, store=store, drain=True)

    before = listing(director)
    for _ in range(2):
        result = sync(desired)
        assert result.conflicts == {TAKEN}
        assert listing(director) == before
    assert store.load().services == {FREE}
    assert drains.load() == {}, "no drain of the other tool's real servers"
    result = sync({})
    assert result.conflicts == frozenset()
    assert listing(director) == before
    assert service_keys(director) == [f"-A -t {VIP}:80 -s sh -p 120 -b sh-port"]
    assert store.load().services == set()

"""The IPVS contract (tests/ipvs_contract.py) against KernelIPVS, one fresh namespace per test.

IPVS tables, timeouts and sync daemons are per network namespace, so no test sees another's
services. Each namespace has `lo` up (the kernel refuses real servers whose address type it
cannot tell, as in a namespace without a local table) and a dummy interface with an IPv4
address for the sync daemon.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from netlab import Lab, Netns

from ipvs_contract import *  # noqa: F403  (the shared test bodies)
from ipvs_contract import TABLES, V4, converge
from lvs_operator.ipvs import procfs
from lvs_operator.ipvs.kernel import PROC_TABLE, KernelIPVS
from lvs_operator.model import table
from lvs_operator.plan import SetReal, plan

pytestmark = pytest.mark.kernel

SYNC_INTERFACE = "sync0"


@pytest.fixture
def director(lab: Lab, ipvs_module: None) -> Netns:
    ns = lab.netns("ipvs")
    ns.ip("link", "add", SYNC_INTERFACE, "type", "dummy")
    ns.add_address(SYNC_INTERFACE, "192.168.250.1/24")
    ns.link_up(SYNC_INTERFACE)
    return ns


@pytest.fixture
def ipvs(director: Netns) -> Iterator[KernelIPVS]:
    # The socket is opened inside the namespace and stays there for its whole life.
    with director.call(lambda: KernelIPVS().connect()) as kernel:
        yield kernel


@pytest.fixture
def sync_interface() -> str:
    return SYNC_INTERFACE


# --- /proc/net/ip_vs as a witness (KernelIPVS(verify_seconds=...); kernel only) ----------------


@pytest.mark.parametrize("name", sorted(TABLES))
def test_proc_signature_matches_the_kernels_text(ipvs: KernelIPVS, director: Netns,
                                                 name: str) -> None:
    services = TABLES[name]
    converge(ipvs, services)
    text = director.call(lambda: Path(PROC_TABLE).read_text())
    expected = procfs.signature(services)
    if name == "fwmark":  # marks 7/IPv4 and 7/IPv6 print alike: no signature at all
        assert expected is None
        expected = procfs.signature([s for s in services if s.key.family == 4])
        assert expected is not None
        expected.update(procfs.signature([s for s in services if s.key.family == 6]) or {})
    assert procfs.parse(text) == expected


def test_verified_table_is_confirmed_from_proc_until_it_changes(director: Netns) -> None:
    services = [s for s in TABLES["dr-nat-tunnel-v4"] + TABLES["every-protocol"]]
    expect = table(services)
    with director.call(lambda: KernelIPVS(verify_seconds=60).connect()) as ipvs, \
            director.call(lambda: KernelIPVS().connect()) as other:
        converge(ipvs, services)
        assert ipvs.dump(expect=expect) == expect  # thorough, and now verified
        netlink_reads = 0
        thorough = ipvs._dump_reals

        def counted(*args, **kwargs):
            nonlocal netlink_reads
            netlink_reads += 1
            return thorough(*args, **kwargs)

        ipvs._dump_reals = counted  # type: ignore[method-assign]
        again = ipvs.dump(expect=table(services))  # equal content, new objects: confirmed
        assert again == expect and netlink_reads == 0
        # A visible change made behind its back (weight): seen at once.
        first = next(iter(expect[V4].reals.values()))
        other.apply([SetReal(V4, replace(first, weight=first.weight + 1))])
        changed = ipvs.dump(expect=expect)
        assert netlink_reads == 1 and changed != expect
        assert plan(expect, changed, owned=lambda key: True) == [
            SetReal(V4, first)]
        ipvs.apply(plan(expect, changed, owned=lambda key: True))
        assert ipvs.dump(expect=expect) == expect and netlink_reads == 2
        assert ipvs.dump(expect=expect) == expect and netlink_reads == 2
        # An expectation that differs only where /proc is blind (a threshold) is never
        # confirmed from /proc: it is not what was verified.
        limited = replace(first, upper_threshold=7)
        want = {**expect, V4: expect[V4].with_reals(
            [limited, *list(expect[V4].reals.values())[1:]])}
        found = ipvs.dump(expect=want)
        assert netlink_reads == 3 and found[V4].reals[first.key].upper_threshold == 0


def test_blind_drift_waits_for_the_next_thorough_dump(director: Netns) -> None:
    services = TABLES["dr-nat-tunnel-v4"]
    expect = table(services)
    with director.call(lambda: KernelIPVS(verify_seconds=0.5).connect()) as ipvs, \
            director.call(lambda: KernelIPVS().connect()) as other:
        converge(ipvs, services)
        assert ipvs.dump(expect=expect) == expect
        first = next(iter(expect[V4].reals.values()))
        other.apply([SetReal(V4, replace(first, upper_threshold=9))])
        assert ipvs.dump(expect=expect) == expect  # /proc cannot show a threshold
        time.sleep(0.6)
        assert ipvs.dump(expect=expect)[V4].reals[first.key].upper_threshold == 9

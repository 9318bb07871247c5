"""The IPVS contract (tests/ipvs_contract.py) against KernelIPVS, one fresh namespace per test.

IPVS tables, timeouts and sync daemons are per network namespace, so no test sees another's
services. Each namespace has `lo` up (the kernel refuses real servers whose address type it
cannot tell, as in a namespace without a local table) and a dummy interface with an IPv4
address for the sync daemon.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from netlab import Lab, Netns

from ipvs_contract import *  # noqa: F403  (the shared test bodies)
from lvs_operator.ipvs.kernel import KernelIPVS

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

"""Fixtures of the full-stack tier: inside the kernel VM, with the control plane and the
controller on the host (tests/fullstack/host.py starts them and boots the VM; `make
test-fullstack`). The `site` fixture is one site per module: the LAN, three DR real servers,
one director with one of the VM's NICs and its agent (`stack.site`); test_ha.py builds its own
with two directors (a module's site is gone before the next module's is built: they share the
VM's NICs). Each test makes its own Service, EndpointSlice and VirtualServer, with a VIP of its
own, and deletes them.

Elsewhere (on the host, or a VM without the stack) the tier is skipped with the reason and how
to run it -- except under CI (CI=true), where it fails.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import stack

VIPS = {"traffic": "10.200.0.100", "drain": "10.200.0.101", "delete": "10.200.0.102",
        "restart": "10.200.0.103", "loadbalancer": "10.200.0.104"}


def pytest_runtest_setup(item: pytest.Item) -> None:
    try:
        stack.GuestConfig.from_env()
    except stack.StackUnavailable as e:
        if stack.IN_CI:
            pytest.fail(f"full-stack tier cannot run under CI: {e}; {stack.HOW_TO_ENABLE}",
                        pytrace=False)
        pytest.skip(f"full-stack tier unavailable: {e}; {stack.HOW_TO_ENABLE}")


@pytest.fixture(scope="session")
def vips() -> dict[str, str]:
    """A VIP per test (every real server answers for all of them)."""
    return dict(VIPS)


@pytest.fixture(scope="module")
def site() -> Iterator[stack.Site]:
    with stack.site(list(VIPS.values())) as the_site:
        yield the_site

"""The full-stack benchmarks run inside the kernel VM with the control plane and controller
on the host, as the full-stack tier does (tests/fullstack/host.py boots the VM; `make bench`).
Outside such a VM they are skipped with the reason (failed under CI)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fullstack import stack

VIP = "10.200.0.110"


def pytest_runtest_setup(item: pytest.Item) -> None:
    try:
        stack.GuestConfig.from_env()
    except stack.StackUnavailable as e:
        if stack.IN_CI:
            pytest.fail(f"full-stack bench cannot run under CI: {e}; {stack.HOW_TO_ENABLE}",
                        pytrace=False)
        pytest.skip(f"full-stack bench unavailable: {e}; {stack.HOW_TO_ENABLE}")


@pytest.fixture(scope="module")
def site() -> Iterator[stack.Site]:
    with stack.site([VIP]) as the_site:
        yield the_site

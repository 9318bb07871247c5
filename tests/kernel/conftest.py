"""Fixtures of the kernel tier: tests that need a real IPVS kernel and root.

They run inside the test VM (``tests/vm/run`` sets ``LVS_IN_VM=1``), never on the host, whose
kernel has no IPVS. Outside the VM the whole tier is skipped with the reason and the way to run
it -- except under CI (``CI=true``), where a tier that cannot run must fail, not vanish.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from netlab import Lab

IN_VM = os.environ.get("LVS_IN_VM") == "1"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

HOW_TO_RUN = (
    "the kernel tier needs the test VM (a kernel with IPVS, root): run `make test-kernel` "
    "or `tests/vm/run .venv/bin/pytest tests/kernel` (after `make venv provision`)"
)


def pytest_runtest_setup(item: pytest.Item) -> None:
    # Per item rather than at collection: `pytest tests` on the host still runs the other
    # tiers, and every kernel test shows up in the summary with this reason.
    if IN_VM:
        return
    if IN_CI:
        pytest.fail(f"not inside the test VM (LVS_IN_VM unset) under CI: {HOW_TO_RUN}",
                    pytrace=False)
    pytest.skip(f"not inside the test VM: {HOW_TO_RUN}")


@pytest.fixture(scope="session")
def ipvs_module() -> None:
    """Load ip_vs once per run: the kernel ships it as a module, not built in."""
    subprocess.run(["modprobe", "ip_vs"], check=True)


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh namespace lab for one test; everything in it is removed afterwards."""
    with Lab() as the_lab:
        yield the_lab

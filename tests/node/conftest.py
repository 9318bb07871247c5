"""Fixtures of the node tier (`make test-node`): the tests run inside the kernel VM, on the
node that tests/node/guest.py started (see nodelab's docstring for the whole picture).

``lab`` (once per session): node-1 Ready, the director prerequisites set on it as the user
guide says (ip_vs loaded, the director sysctls), and the chart installed by helm with the
image built here. A report of what ran (pod phases, restarts, the injected init containers'
exit codes, traffic counts) is printed at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import nodelab
import pytest

REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("node tier")
        for line in REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def lab() -> Iterator[nodelab.NodeLab]:
    """node-1 with the chart installed; fails (never skips) outside the node VM."""
    if os.environ.get("LVS_IN_VM") != "1" or not nodelab.CONFIG.exists():
        pytest.fail("the node tier runs inside the node VM: `make test-node` "
                    "(tests/node/host.py .venv/bin/pytest tests/node)")
    yield nodelab.NodeLab(nodelab.NodeConfig.read())

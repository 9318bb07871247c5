"""Fixtures of the kind end-to-end suite (`make e2e-kind`; not part of `make test`).

``lab`` (once per session): a fresh kind cluster (kind-config.yaml), the image built by
`make image` and `kind load`ed, the director nodes prepared and labelled, the chart installed
with that image, and a client container on kind's Docker network. At the end the client and
the cluster are deleted (``LVS_KIND_KEEP=1`` keeps the cluster and prints its KUBECONFIG).

Where Docker, kind, kubectl, helm or the ip_vs module are missing, every test is skipped with
the reason and how to enable it. That holds under CI too (``CI=true``): the suite is opt-in,
outside `make test`, and CI machines have no Docker engine; run it where they exist.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import kindlab
import pytest

HOW_TO_ENABLE = (
    "It needs a Linux machine with a running Docker engine, kind (https://kind.sigs.k8s.io), "
    "kubectl and helm on PATH (or the ones tests/cluster/build-k8s caches), and the ip_vs "
    "module loaded in the host kernel (`sudo modprobe ip_vs`; `sudo modprobe ipip` too for "
    "the Tunnel test); then run `make e2e-kind`. It is not part of `make test` and skips "
    "even under CI"
)

_report: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _report:
        terminalreporter.section("kind end-to-end suite")
        for line in _report:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kindlab.Lab]:
    """The kind cluster with the chart installed; deleted at the end."""
    reasons = kindlab.missing()
    if reasons:
        message = f"SKIPPED: {'; '.join(reasons)}. {HOW_TO_ENABLE}"
        if message not in _report:
            _report.append(message)
        pytest.skip(f"kind end-to-end suite: {message}")
    # With LVS_KIND_KEEP the kubeconfig must outlive pytest's rotated temp folders.
    workdir = (Path(tempfile.mkdtemp(prefix="lvs-kind-")) if kindlab.KEEP
               else tmp_path_factory.mktemp("kind"))
    lab = kindlab.Lab(workdir)
    try:
        lab.create_cluster()
        lab.build_and_load_image()
        lab.prepare_nodes()
        lab.install_chart()
        lab.start_client()
        yield lab
    finally:
        lab.delete_cluster()

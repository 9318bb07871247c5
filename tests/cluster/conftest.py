"""Fixtures of the cluster tier: a real control plane (etcd, kube-apiserver,
kube-controller-manager) on 127.0.0.1, started once per test session.

``cluster`` yields a :class:`controlplane.ControlPlane` (``kubectl()``, ``kubeconfig``, ``env``,
``bin`` with kubectl and helm, ``server``, ``ca_cert``). Its binaries come from
``tests/cluster/build-k8s`` (cached; a first run builds them, printing progress). If they or
``openssl`` cannot be had, the tier is skipped with the reason and how to enable it -- except
under CI (``CI=true``), where it fails.

``LVS_CLUSTER_KEEP=1`` leaves the control plane running after the session (its folder and how
to use and stop it are printed at the end). If a test failed, the processes' logs are kept
(the folder is printed at the end); otherwise the control plane's folder is removed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from controlplane import ControlPlane, ControlPlaneError, build_binaries, start

HERE = Path(__file__).resolve().parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
KEEP = os.environ.get("LVS_CLUSTER_KEEP", "") not in ("", "0")

HOW_TO_ENABLE = (
    "the cluster tier needs the Kubernetes binaries (tests/cluster/build-k8s builds them from "
    "the Go module proxy: Go >= 1.26; or set LVS_K8S_BIN to a folder of prebuilt ones) and "
    "openssl (`make provision` installs it); run `make test-cluster`, or `make test`"
)

_report: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Called with every item of the session, not only this folder's.
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.cluster)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _report:
        terminalreporter.section("cluster tier")
        for line in _report:
            terminalreporter.write_line(line)


def _unavailable(reason: str) -> NoReturn:
    """Fail (under CI) or skip (elsewhere) the tests needing the cluster; never returns."""
    if IN_CI:
        pytest.fail(f"cluster tier cannot run under CI: {reason}\n{HOW_TO_ENABLE}", pytrace=False)
    pytest.skip(f"cluster tier unavailable: {reason}; {HOW_TO_ENABLE}")


@contextlib.contextmanager
def _uncaptured(request: pytest.FixtureRequest) -> Iterator[None]:
    """Let output through to the terminal (build progress, the start-up report)."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        yield
        return
    with capman.global_and_fixture_disabled():
        yield


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The session's control plane; stopped (and its folder removed) at the end."""
    if shutil.which("openssl") is None:
        _unavailable("no `openssl` on PATH")
    with _uncaptured(request):
        print()  # off the line pytest -v is writing
        try:
            bin_dir = build_binaries()
        except ControlPlaneError as e:
            _unavailable(str(e))
        if KEEP:
            # Outside pytest's rotated temp folders: it outlives the session.
            workdir = Path(tempfile.mkdtemp(prefix="lvs-cluster-"))
        else:
            workdir = tmp_path_factory.mktemp("cluster")
        cp = start(workdir, bin=bin_dir, detach=KEEP)
    _report.append(cp.summary())
    try:
        yield cp
    finally:
        if KEEP:
            _report.append(
                f"LVS_CLUSTER_KEEP=1: still running at {cp.server}\n"
                f"  export KUBECONFIG={cp.kubeconfig} PATH={cp.bin}:$PATH\n"
                f"  stop it: tests/cluster/cluster down {cp.workdir}")
        elif request.session.testsfailed:
            cp.stop(keep_workdir=True)
            _report.append(f"tests failed: the control plane's logs are kept in "
                           f"{cp.workdir / 'logs'}")
        else:
            cp.stop()


@pytest.fixture
def namespace(cluster: ControlPlane) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting for it to go)."""
    name = f"t-{secrets.token_hex(4)}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        if not KEEP:
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)

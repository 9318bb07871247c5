"""The kernel benchmarks need the test VM (a kernel with IPVS, root), like the kernel tier.

Outside the VM every benchmark here is skipped with the reason; under CI (`CI=true`) it
fails instead: a part of `make bench` that cannot run must not vanish.
"""

from __future__ import annotations

import os

import pytest

IN_VM = os.environ.get("LVS_IN_VM") == "1"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REASON = "the benchmark needs the test VM: run `make bench`"


@pytest.fixture(autouse=True)
def _in_vm() -> None:
    if IN_VM:
        return
    if IN_CI:
        pytest.fail(f"not inside the test VM under CI: {REASON}", pytrace=False)
    pytest.skip(REASON)

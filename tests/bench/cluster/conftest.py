"""The cluster benchmarks run on the host against the cluster tier's control plane: its
fixtures (`cluster`, `namespace`) and helpers come from tests/cluster, loaded here under a
module name of their own (two files named conftest.py cannot share one)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

CLUSTER_TESTS = Path(__file__).resolve().parents[2] / "cluster"
sys.path.insert(0, str(CLUSTER_TESTS))  # controlplane, crd_support, controller_support

_spec = importlib.util.spec_from_file_location("lvs_cluster_conftest",
                                               CLUSTER_TESTS / "conftest.py")
assert _spec is not None and _spec.loader is not None
_cluster_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cluster_conftest)

cluster = _cluster_conftest.cluster
namespace = _cluster_conftest.namespace
pytest_terminal_summary = _cluster_conftest.pytest_terminal_summary

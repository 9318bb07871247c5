"""One validation, two places: every case of tests/spec_cases.py goes through the real API
server (the CRD's OpenAPI schema and CEL rules) and through `spec.parse`; they must agree.

- a valid case: both accept it, and the object the API server returns (its defaults filled
  in) parses to the same VirtualServer as the document as written: the defaults agree;
- an invalid case: both refuse it, `spec` naming the case's field path and kubectl's error
  naming it too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from controlplane import ControlPlane
from crd_support import (
    field_errors,
    install_crd,
    module_namespace,
    names_field,
    parse,
    server_dry_run,
)

from lvs_operator.api import spec
from spec_cases import INVALID, VALID, Case


@pytest.fixture(scope="module")
def ns(cluster: ControlPlane) -> Iterator[str]:
    install_crd(cluster)
    with module_namespace(cluster, "crd-agree") as name:
        yield name


def _document(case: Case, ns: str) -> dict[str, object]:
    doc = case.document()
    doc["metadata"]["namespace"] = ns
    return doc


@pytest.mark.parametrize("case", VALID, ids=lambda c: c.id)
def test_valid_in_both(cluster, ns, case):
    doc = _document(case, ns)
    parsed = parse(doc, ns)
    r = server_dry_run(cluster, doc)
    assert not isinstance(parsed, spec.SpecError), f"spec refuses a valid case: {parsed}"
    assert r.returncode == 0, f"the API server refuses a valid case: {r.stderr.strip()}"
    stored = json.loads(r.stdout)
    assert parse(stored, ns) == parsed, (
        "the API server's defaults and spec's differ: the defaulted object "
        f"{json.dumps(stored['spec'])} parses differently from the document as written")


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_invalid_in_both_naming_the_field(cluster, ns, case):
    doc = _document(case, ns)
    parsed = parse(doc, ns)
    r = server_dry_run(cluster, doc)
    problems = []
    if not isinstance(parsed, spec.SpecError):
        problems.append("spec accepts it")
    elif parsed.path != case.error_path:
        problems.append(f"spec names {parsed.path!r}, not {case.error_path!r}: {parsed}")
    if r.returncode == 0:
        problems.append("the API server accepts it")
    elif not names_field(r.stderr, case.error_path):
        found = [e.path for e in field_errors(r.stderr)]
        problems.append(f"the API server's error names {found}, not {case.error_path!r}: "
                        f"{r.stderr.strip()}")
    assert not problems, f"{case.id} (expected: {case.error_path}): " + "; ".join(problems)

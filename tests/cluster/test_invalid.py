"""Bad input: every manifest in tests/cluster/invalid/ is refused by `kubectl apply` against
the real API server with an error naming the field its `# expect: <path>` line gives, and by
`spec.parse` naming the same field."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from controlplane import ControlPlane
from crd_support import field_errors, install_crd, module_namespace, names_field

from lvs_operator.api import spec

INVALID = Path(__file__).resolve().parent / "invalid"
FILES = sorted(INVALID.glob("*.yaml"))
_EXPECT = re.compile(r"^# expect: (\S+)\s*$", re.MULTILINE)


@pytest.fixture(scope="module")
def ns(cluster: ControlPlane) -> Iterator[str]:
    install_crd(cluster)
    with module_namespace(cluster, "crd-invalid") as name:
        yield name


def _expected(path: Path) -> str:
    text = path.read_text()
    found = _EXPECT.findall(text)
    assert len(found) == 1, f"{path.name}: needs one `# expect: <field path>` line"
    what = [line for line in text.splitlines()
            if line.startswith("#") and not _EXPECT.match(line)]
    assert what and what[0].strip("# "), f"{path.name}: needs a comment saying what is wrong"
    expected: str = found[0]
    return expected


def test_enough_bad_manifests():
    assert len(FILES) >= 25


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_spec_refuses_naming_the_field(path):
    expected = _expected(path)
    with pytest.raises(spec.SpecError) as caught:
        spec.parse(yaml.safe_load(path.read_text()))
    assert caught.value.path == expected, str(caught.value)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_kubectl_apply_refuses_naming_the_field(cluster, ns, path):
    expected = _expected(path)
    r = cluster.kubectl("apply", "-n", ns, "-f", str(path), check=False)
    assert r.returncode != 0, f"{path.name} was accepted: {r.stdout}"
    found = [e.path for e in field_errors(r.stderr)]
    assert names_field(r.stderr, expected), (
        f"{path.name}: kubectl's error names {found}, not {expected}: {r.stderr.strip()}")

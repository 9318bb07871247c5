"""Shared by the VirtualServer CRD tests: install the CRD, give a module its namespace, read
the field errors out of kubectl's answers, and parse documents with `spec` for comparison."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane import ControlPlane

import scenarios
from lvs_operator.api import spec

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "lvs.dev_virtualservers.yaml"
CRD_NAME = "virtualservers.lvs.dev"
CRDS = ROOT / "crds"  # every CRD of the product (not examples/: no -R)
CRD_NAMES = (CRD_NAME, "vippools.lvs.dev", "vipclaims.lvs.dev")
EXAMPLES = ROOT / "crds" / "examples"

_installed: set[str] = set()  # servers the CRD went to in this session


def install_crd(cluster: ControlPlane) -> None:
    """Apply the CRDs (once per control plane and session), wait until they serve, and
    create the tests' open VIPPool (`scenarios.open_pool`: deny by default otherwise)."""
    if cluster.server in _installed:
        return
    cluster.kubectl("apply", "-f", str(CRDS))
    # `kubectl wait` fails at once ("status.conditions accessor error: <nil>") when it reads
    # the CRD before the API server has given it any condition: seen on a fresh server.
    deadline = time.monotonic() + 60
    for name in CRD_NAMES:
        while True:
            r = cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                                f"crd/{name}", check=False)
            if r.returncode == 0:
                break
            assert "accessor error" in r.stderr and time.monotonic() < deadline, r.stderr
            time.sleep(0.5)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(scenarios.open_pool()))
    _installed.add(cluster.server)


@contextlib.contextmanager
def module_namespace(cluster: ControlPlane, prefix: str) -> Iterator[str]:
    """A fresh namespace for one test module, deleted afterwards without waiting."""
    name = f"{prefix}-{secrets.token_hex(3)}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@dataclass(frozen=True)
class FieldError:
    """One field error of an API server's answer: `spec.vip: Invalid value: ...`."""

    path: str
    detail: str

    def names(self, path: str) -> bool:
        """Return whether this error names the field `path`.

        Either the error is about `path` itself; or it is about an ancestor and its message
        starts a sentence with `path:` -- what a CEL rule on a list does, since a rule's
        fieldPath cannot index into the list (`spec.ports: Forbidden:
        spec.ports[0].targetPort: only NAT ...`); or it is strict decoding's unknown field
        inside `path` (an object where a list belongs: `unknown field "spec.ports.port"`).
        """
        if self.path == path:
            return True
        if _below(path, self.path):
            return f" {path}: " in f" {self.detail}"
        return self.detail == UNKNOWN_FIELD and _below(self.path, path)


def _below(path: str, ancestor: str) -> bool:
    return path.startswith(ancestor) and path[len(ancestor):][:1] in (".", "[")


UNKNOWN_FIELD = "unknown field"
_UNKNOWN_FIELD = re.compile(r'unknown field "([^"]+)"')
_IGNORED = "<nil>"  # "some validation rules were not checked because the object was invalid"


def field_errors(stderr: str) -> list[FieldError]:
    """Return the field errors in kubectl's stderr for a refused object.

    Understands the API server's two shapes: `The X "n" is invalid: path: detail` (one
    error, or several as `* path: detail` lines) and strict decoding's
    `unknown field "path"`.
    """
    errors = [FieldError(m[1], UNKNOWN_FIELD) for m in _UNKNOWN_FIELD.finditer(stderr)]
    _, invalid, rest = stderr.partition(" is invalid: ")
    if invalid:
        lines = [line.removeprefix("* ") for line in rest.strip().splitlines()]
        for line in lines:
            path, sep, detail = line.partition(": ")
            if sep and path != _IGNORED:
                errors.append(FieldError(path, detail))
    return errors


def names_field(stderr: str, path: str) -> bool:
    """Return whether one of the field errors in `stderr` names `path`."""
    return any(error.names(path) for error in field_errors(stderr))


def parse(document: dict[str, Any], namespace: str) -> spec.VirtualServer | spec.SpecError:
    """Return `spec.parse(document)`, or the SpecError it raised."""
    try:
        return spec.parse(document, default_namespace=namespace)
    except spec.SpecError as e:
        return e


def server_dry_run(cluster: ControlPlane,
                   document: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """`kubectl create --dry-run=server -o json` of `document` (not raising on refusal)."""
    return cluster.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                           input=json.dumps(document), check=False)

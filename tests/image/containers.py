"""Run a command of a local image in a container the way a pod's securityContext runs it.

The engine is the one tests/image/build used (``LVS_IMAGE_ENGINE``, else a running Docker,
else podman, else buildah). Docker and podman have the flags for it (``--read-only``,
``--user``, ``--cap-drop ALL``, ``--cap-add``, ``no-new-privileges``). buildah's own ``run``
has no read-only root and ignores the image's entrypoint, so for buildah the image is mounted
(``buildah from`` + ``buildah mount``) and run by ``runc`` from an OCI bundle written here:
the image's entrypoint, environment and working directory, the user, capabilities and a
read-only root as asked, an emptyDir-like tmpfs on /tmp (the chart mounts one there).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Capabilities are named as in a pod spec (NET_ADMIN); the OCI spec wants CAP_NET_ADMIN.
_CAP_PREFIX = "CAP_"


@dataclass(frozen=True)
class SecurityContext:
    """The parts of a container's securityContext that change how a command runs."""

    user: str  # "uid:gid"
    capabilities: tuple[str, ...] = ()  # added after dropping ALL, e.g. ("NET_ADMIN",)
    read_only_root: bool = True


def engine() -> str:
    """Return the container engine to use; raise RuntimeError when there is none."""
    chosen = os.environ.get("LVS_IMAGE_ENGINE")
    if chosen:
        return chosen
    if shutil.which("docker") and subprocess.run(
            ["docker", "info"], capture_output=True, check=False,
            stdin=subprocess.DEVNULL).returncode == 0:
        return "docker"
    for name in ("podman", "buildah"):
        if shutil.which(name):
            return name
    raise RuntimeError("no container engine (docker with a running engine, podman or buildah)")


def run(image: str, args: Sequence[str], context: SecurityContext, *,
        entrypoint: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``args`` after the image's entrypoint (or ``entrypoint``) in a container of
    ``image`` as ``context`` says; return the finished process (its exit code is the
    command's). Raises subprocess.TimeoutExpired when it does not end within ``timeout`` seconds and
    subprocess.CalledProcessError when the engine cannot set the container up."""
    name = engine()
    if name in ("docker", "podman"):
        argv = [name, "run", "--rm", "--network", "none", "--user", context.user,
                "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                "--tmpfs", "/tmp"]
        argv += [a for cap in context.capabilities for a in ("--cap-add", cap)]
        if context.read_only_root:
            argv.append("--read-only")
        if entrypoint is not None:
            argv += ["--entrypoint", entrypoint]
        return subprocess.run([*argv, image, *args], capture_output=True, text=True,
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    return _run_with_runc(image, args, context, entrypoint=entrypoint, timeout=timeout)


def _buildah(*args: str) -> str:
    return subprocess.run(["buildah", *args], capture_output=True, text=True, check=True,
                          stdin=subprocess.DEVNULL).stdout.strip()


def _run_with_runc(image: str, args: Sequence[str], context: SecurityContext, *,
                   entrypoint: str | None, timeout: float) -> subprocess.CompletedProcess[str]:
    config: dict[str, Any] = json.loads(_buildah("inspect", "--type", "image", image))
    image_config = config["OCIv1"].get("config") or {}
    if entrypoint is not None:
        image_config = {**image_config, "Entrypoint": [entrypoint]}
    container = _buildah("from", "--pull-never", image)
    try:
        rootfs = _buildah("mount", container)
        with tempfile.TemporaryDirectory(prefix="lvs-image-") as bundle:
            spec = _oci_spec(rootfs, image_config, args, context)
            (Path(bundle) / "config.json").write_text(json.dumps(spec))
            return subprocess.run(["runc", "run", "--bundle", bundle,
                                   f"lvs-image-{uuid.uuid4().hex[:12]}"],
                                  capture_output=True, text=True, timeout=timeout,
                                  check=False, stdin=subprocess.DEVNULL)
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)


def _oci_spec(rootfs: str, image_config: dict[str, Any], args: Sequence[str],
              context: SecurityContext) -> dict[str, Any]:
    """Return the OCI runtime spec (config.json) of one container; pure."""
    uid, _, gid = context.user.partition(":")
    caps = [_CAP_PREFIX + c for c in context.capabilities]
    return {
        "ociVersion": "1.0.2",
        "root": {"path": rootfs, "readonly": context.read_only_root},
        "process": {
            "terminal": False,
            "user": {"uid": int(uid), "gid": int(gid or uid)},
            # As docker run: the image's Cmd only when no arguments are given.
            "args": [*(image_config.get("Entrypoint") or []),
                     *(args or image_config.get("Cmd") or [])],
            "env": image_config.get("Env") or [],
            "cwd": image_config.get("WorkingDir") or "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
        },
        "hostname": "lvs-image-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "size=16m"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "linux": {
            # A network namespace of its own: the commands under test need none.
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
        },
    }

"""The images a test node needs, built here and handed to containerd as archives.

No registry is reachable on the project's machines, so nothing is pulled: the product image
comes from tests/image/build (``--archive``), and the pod sandbox ("pause") image is written
here as a ``docker save`` archive holding one layer with the pause program that
tests/node/build-node compiled from the Kubernetes sources. Both are imported with
``ctr -n k8s.io images import`` into a containerd root on the host (:func:`preload`), which
the VM's containerd starts from.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path


def _tar_bytes(files: dict[str, tuple[bytes, int]]) -> bytes:
    """Return an uncompressed tar of ``{name: (content, mode)}``, owned by root; pure."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, (content, mode) in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), mode
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def pause_archive(pause: Path, archive: Path, reference: str) -> None:
    """Write a ``docker save`` archive of an image named ``reference`` whose one layer is
    ``/pause`` (the binary at ``pause``) and whose entrypoint is ``/pause``, as the upstream
    pause image is built (FROM scratch, ADD pause, USER 65535, ENTRYPOINT /pause).

    Raises OSError when ``pause`` cannot be read or ``archive`` written.
    """
    layer = _tar_bytes({"pause": (pause.read_bytes(), 0o755)})
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"User": "65535:65535", "Entrypoint": ["/pause"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "tests/node/images.py: pause from build-node"}],
    }, sort_keys=True).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [reference],
                            "Layers": ["layer.tar"]}]).encode()
    archive.write_bytes(_tar_bytes({
        "layer.tar": (layer, 0o644),
        config_name: (config, 0o644),
        "manifest.json": (manifest, 0o644),
    }))


def preload(archives: list[Path], root: Path, tarball: Path, *,
            log: Callable[[str], None]) -> None:
    """Import ``archives`` into a containerd root at ``root`` on this host and write that
    root (content store, unpacked overlayfs snapshots, metadata) to ``tarball``.

    Why: the same `ctr images import` inside the VM takes ~4 minutes for the product image
    (Go's hashing and unpacking under qemu's software emulation: about 3 MB/s); on the host it
    takes seconds, and the VM only untars the result into a tmpfs at the same path (~20 s).
    The containerd that runs here has no CRI plugin and no socket outside ``root``'s
    folder, and is stopped before this returns. Raises subprocess.CalledProcessError or
    RuntimeError when containerd or an import fails.
    """
    state = root.parent / "state"
    for d in (root, state):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    sock = state / "containerd.sock"
    config = root.parent / "preload.toml"
    config.write_text(f'version = 2\nroot = "{root}"\nstate = "{state}"\n'
                      f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                      f'[grpc]\n  address = "{sock}"\n')
    with (root.parent / "preload.log").open("wb") as out:
        daemon = subprocess.Popen(["containerd", "--config", str(config)], stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run(["ctr", "--address", str(sock), "version"], capture_output=True,
                             check=False).returncode != 0:
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd for the preload did not start: see "
                                   f"{root.parent / 'preload.log'}")
            time.sleep(0.2)
        for archive in archives:
            t0 = time.monotonic()
            subprocess.run(["ctr", "--address", str(sock), "-n", "k8s.io", "images", "import",
                            str(archive)], check=True, capture_output=True, text=True)
            log(f"preloaded {archive.name} in {time.monotonic() - t0:.1f} s")
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    # --xattrs: overlay whiteouts and opaque directories are xattrs and device nodes.
    subprocess.run(["tar", "-C", str(root), "--xattrs", "--xattrs-include=*", "-cf",
                    str(tarball), "."], check=True)
    shutil.rmtree(root)

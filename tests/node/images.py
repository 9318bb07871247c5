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


def preload(archives: list[Path], root: Path, disk: Path, *,
            log: Callable[[str], None]) -> None:
    """Import ``archives`` into a containerd root at ``root`` on this host and write that
    root (content store, unpacked overlayfs snapshots, metadata) as an ext4 file system image
    ``disk``, which the VM attaches as a virtio disk and mounts at the same path.

    Why: `ctr images import` of the product image inside the VM took ~4 minutes (Go's
    hashing and unpacking under qemu's software emulation: about 3 MB/s) and untarring a
    preloaded root there 2.5 minutes (tens of thousands of small files); on the host the
    import takes seconds, and a disk needs no copying at all. The image has 1 GiB of room
    for the containers' writable layers. The containerd that runs here has no CRI plugin
    and its socket in ``root``'s folder, and is stopped before this returns. Raises
    subprocess.CalledProcessError or RuntimeError when containerd, an import or mkfs fails.
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
    used = int(subprocess.run(["du", "-s", "-B1M", str(root)], capture_output=True, text=True,
                              check=True).stdout.split()[0])
    if disk.exists():
        disk.unlink()
    # -d copies the tree with its owners, modes, device nodes and xattrs (overlay whiteouts).
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "lvs-node", "-d", str(root), str(disk),
                    f"{used + 1024}M"], check=True, capture_output=True, text=True)
    shutil.rmtree(root)
    log(f"containerd root: {used} MiB in the disk image {disk}")

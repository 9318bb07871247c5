"""The record of what this director created, so it never touches anything else.

The kernel has no place to tag a virtual service with its creator, so the keys (and the
VIPs) that lvs-operator created are kept in a small JSON file that survives restarts. It is
written *before* the kernel is changed (recording the union of old and new), so a crash in
between can only make us own too much of what we were about to create, never lose track of
something we created.

A service is recorded only when this director is about to create it, or when `ipvs apply
--adopt` takes it over: a service in the kernel but not in the record is somebody else's,
even on a key we want (`plan.conflicts`). A missing file is an empty record (adopt nothing,
withdraw nothing); an unreadable one stops every sync until it is fixed or removed.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, field

from lvs_operator.files import replace_file
from lvs_operator.model import IPAddress, Protocol, ServiceKey

# A plain string: `ipvs apply` runs without loading pathlib.
DEFAULT_STATE_FILE = "/var/lib/lvs-operator/owned.json"


@dataclass(slots=True)
class Owned:
    """Virtual services and VIPs (per interface) this director created."""

    services: set[ServiceKey] = field(default_factory=set)
    vips: dict[str, set[IPAddress]] = field(default_factory=dict)

    def union(self, other: Owned) -> Owned:
        """Return what either record owns."""
        vips = {name: set(addresses) for name, addresses in self.vips.items()}
        for name, addresses in other.vips.items():
            vips.setdefault(name, set()).update(addresses)
        return Owned(services=self.services | other.services, vips=vips)


class OwnershipStore:
    """Loads and saves an `Owned` record as JSON at `path`."""

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_STATE_FILE) -> None:
        self.path = path
        # The last record read or written, with the file's identity then: the agent reads the
        # record several times per sync, and parsing it is the cost (a stat is not).
        self._cached: tuple[tuple[int, int, int], Owned] | None = None

    def load(self) -> Owned:
        """Return the saved record (a copy the caller may change); an empty one when the
        file does not exist yet.

        Raises:
            ValueError: when the file exists but is not a record this code wrote.
        """
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return Owned()
        except OSError:
            stat = None  # let the read below report it
        identity = _identity(stat) if stat else None
        if self._cached is not None and self._cached[0] == identity:
            return _copy(self._cached[1])
        owned = self._read()
        if identity is not None:
            self._cached = (identity, _copy(owned))
        return owned

    def _read(self) -> Owned:
        try:
            with open(self.path, encoding="utf-8") as handle:
                raw = json.loads(handle.read())
        except FileNotFoundError:
            return Owned()
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read the ownership record {self.path}: {error}; "
                             "fix or remove it (removing it forgets what was created)") from None
        try:
            return Owned(
                services={_key_from_json(item) for item in raw["services"]},
                vips={name: {ipaddress.ip_address(a) for a in addresses}
                      for name, addresses in raw.get("vips", {}).items()},
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"the ownership record {self.path} is malformed ({error}); "
                             "fix or remove it") from None

    def update(
        self,
        *,
        services: set[ServiceKey] | None = None,
        vips: dict[str, set[IPAddress]] | None = None,
    ) -> None:
        """Replace the given parts of the saved record, keeping the others; save if changed.

        Raises:
            ValueError: when the saved record is unreadable.
        """
        old = self.load()
        new = Owned(
            services=old.services if services is None else services,
            vips=old.vips if vips is None else {k: v for k, v in vips.items() if v},
        )
        if new != old:
            self.save(new)

    def save(self, owned: Owned) -> None:
        """Write `owned` atomically (see `files.replace_file`).

        Raises:
            OSError: when the record cannot be written.
        """
        data = {
            "services": [
                _key_to_json(key) for key in sorted(owned.services, key=ServiceKey.sort_key)
            ],
            "vips": {name: sorted(str(a) for a in addresses)
                     for name, addresses in sorted(owned.vips.items()) if addresses},
        }
        # One line, and `dumps`: with `indent`, or through `dump`'s chunked writing, json uses
        # its pure-Python encoder, which costs more than the rest of a bulk apply's bookkeeping.
        replace_file(self.path, json.dumps(data))
        try:
            stat = os.stat(self.path)
        except OSError:
            self._cached = None  # read back next time
        else:
            # What was just written is what a load would read: no need to parse it back.
            self._cached = (_identity(stat), _copy(owned))


def _identity(stat: os.stat_result) -> tuple[int, int, int]:
    """Return what tells one version of the record file from another (a save replaces the
    file: a new inode)."""
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _copy(owned: Owned) -> Owned:
    return Owned(services=set(owned.services),
                 vips={name: set(addresses) for name, addresses in owned.vips.items()})


def _key_to_json(key: ServiceKey) -> list[str | int]:
    if key.fwmark:
        return ["FWM", key.fwmark, key.family]
    assert key.protocol is not None and key.address is not None
    return [key.protocol.name, str(key.address), key.port]


def _key_from_json(item: list[str | int]) -> ServiceKey:
    kind, first, second = item
    if kind == "FWM":
        return ServiceKey.mark(int(first), family=int(second))
    return ServiceKey.inet(Protocol[str(kind)], ipaddress.ip_address(first), int(second))

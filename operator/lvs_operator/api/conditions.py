"""Names both binaries use in a VirtualServer's status: condition types, reasons, roles. Pure.

Conditions follow the Kubernetes convention (metav1.Condition). The controller owns three:
- RealServersResolved: there is at least one ready real server to send traffic to;
- Programmed: the active director reports the current generation without error;
- Ready: both, i.e. clients of the VIP are served.
The agents read Ready's reason (an invalid or conflicting VirtualServer is withdrawn) and
write their own entries in `status.directors`, whose `role` is ACTIVE on the holder.
"""

from __future__ import annotations

from datetime import UTC, datetime

READY = "Ready"
REAL_SERVERS_RESOLVED = "RealServersResolved"
PROGRAMMED = "Programmed"
TYPES = (READY, REAL_SERVERS_RESOLVED, PROGRAMMED)

# Reasons of RealServersResolved (the controller's resolution of the backend).
RESOLVED = "Resolved"
SERVICE_NOT_FOUND = "ServiceNotFound"
PORT_NOT_FOUND = "PortNotFound"
PORT_MISMATCH = "PortMismatch"
NO_READY_ENDPOINTS = "NoReadyEndpoints"

# Reasons that any of the three may carry.
INVALID_SPEC = "InvalidSpec"
CONFLICT = "Conflict"
NO_DIRECTORS = "NoDirectors"
NO_ACTIVE_DIRECTOR = "NoActiveDirector"
DIRECTOR_ERROR = "DirectorError"
PROGRAMMING = "Programming"

ACTIVE = "Active"  # the role of the director that holds the VIP (status.directors.<node>.role)


def timestamp(now: datetime) -> str:
    """Return `now` as Kubernetes writes a metav1.Time: RFC 3339 in UTC, whole seconds."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

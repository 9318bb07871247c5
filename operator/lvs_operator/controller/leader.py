"""Leader election among controller replicas on a coordination.k8s.io Lease, as client-go does.

Every replica runs in full (warm caches, the webhook); only the holder of the Lease writes
statuses and Events. A candidate takes the Lease when it is free or has not changed for its
duration (as seen on the candidate's own clock: no clock agreement needed), then renews it
every `retry_period`. The leader stops acting as soon as another holder shows up, or when it
could not renew for `renew_deadline` (shorter than the duration, so it stops before anyone
else starts). The requests are `kube.lease`'s, the same mechanics as the directors' Leases;
only this policy is the controller's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from lvs_operator.controller.settings import Settings
from lvs_operator.kube import client, lease

log = logging.getLogger(__name__)

# Runs a blocking call off the event loop (the controller's API threads).
Call = Callable[..., Awaitable[Any]]


class Leader:
    """Campaigns for, renews and releases the controller's Lease."""

    def __init__(self, api: client.Requester, settings: Settings, *, call: Call) -> None:
        self.leases = lease.Leases(api)
        self.settings = settings
        self._call = call
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    async def run(self, on_change: Callable[[bool], None]) -> None:
        """Campaign and renew forever; call `on_change(True/False)` when leadership changes."""
        leading, renewed = False, 0.0
        while True:
            mine: bool | None
            try:
                mine = await self._call(self.try_acquire_or_renew)
            except client.ApiError as error:
                log.warning("Lease %s/%s: %s", self.settings.lease_namespace,
                            self.settings.lease_name, error)
                mine = None  # unknown: keep leading until the renew deadline
            except Exception:  # a bug must not leave a leader that no longer renews
                log.exception("Lease %s/%s", self.settings.lease_namespace,
                              self.settings.lease_name)
                mine = None
            now = time.monotonic()
            if mine:
                renewed = now
                if not leading:
                    leading = True
                    on_change(True)
            elif leading and (mine is False or now - renewed > self.settings.renew_deadline):
                leading = False
                on_change(False)
            await asyncio.sleep(self.settings.retry_period)

    def try_acquire_or_renew(self) -> bool:
        """Return whether this replica holds the Lease now (blocks on the API server).

        Raises:
            kube.client.ApiError: for an API error other than losing a race (409).
        """
        s = self.settings
        now = lease.micro_time(datetime.now(UTC))
        current = self.leases.get(s.lease_namespace, s.lease_name)
        if current is None:
            fresh = {"apiVersion": lease.API_VERSION, "kind": lease.KIND,
                     "metadata": {"name": s.lease_name, "namespace": s.lease_namespace},
                     "spec": {"holderIdentity": s.identity, "acquireTime": now,
                              "renewTime": now, "leaseTransitions": 0,
                              "leaseDurationSeconds": round(s.lease_duration)}}
            return self.leases.create(s.lease_namespace, fresh) is not None
        spec = dict(current.get("spec") or {})
        record = (spec.get("holderIdentity"), spec.get("renewTime"),
                  spec.get("leaseDurationSeconds"))
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        holder = spec.get("holderIdentity")
        if holder and holder != s.identity:
            duration = spec.get("leaseDurationSeconds") or s.lease_duration
            if time.monotonic() < self._observed_at + duration:
                return False
        if holder != s.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec.update(holderIdentity=s.identity, renewTime=now,
                    leaseDurationSeconds=round(s.lease_duration))
        # The read's resourceVersion (kept in metadata) makes the write fail if anyone else
        # wrote meanwhile.
        return self.leases.replace(s.lease_namespace, s.lease_name,
                                   {**current, "spec": spec}) is not None

    async def release(self) -> None:
        """Give the Lease up (if still held), so that another replica takes it at once."""
        s = self.settings

        def give_up() -> bool:
            current = self.leases.get(s.lease_namespace, s.lease_name)
            spec = dict((current or {}).get("spec") or {})
            if current is None or spec.get("holderIdentity") != s.identity:
                return False
            spec.update(holderIdentity=None, leaseDurationSeconds=1,
                        renewTime=lease.micro_time(datetime.now(UTC)))
            return self.leases.replace(s.lease_namespace, s.lease_name,
                                       {**current, "spec": spec}) is not None
        try:
            if await self._call(give_up):
                log.info("released the Lease %s/%s", s.lease_namespace, s.lease_name)
        except client.ApiError as error:
            log.warning("cannot release the Lease %s/%s (the next leader waits for it to "
                        "expire): %s", s.lease_namespace, s.lease_name, error)

"""Leader election among controller replicas on a coordination.k8s.io Lease.

Every replica runs in full (warm caches, the webhook); only the holder of the Lease writes
statuses and Events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from lvs_operator.controller.errors import brief
from lvs_operator.controller.settings import Settings

log = logging.getLogger(__name__)


class Lease:
    """Leader election on a coordination.k8s.io Lease, as client-go does it.

    A candidate takes the Lease when it is free or has not changed for its duration (as
    seen on the candidate's own clock), then renews it every `retry_period`. The leader
    stops acting as soon as another holder shows up, or when it could not renew for
    `renew_deadline` (shorter than the duration, so it stops before anyone else starts).
    """

    def __init__(self, api: client.CoordinationV1Api, settings: Settings) -> None:
        self.api = api
        self.settings = settings
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    async def run(self, on_change: Callable[[bool], None]) -> None:
        """Campaign and renew forever; call `on_change(True/False)` when leadership changes."""
        leading, renewed = False, 0.0
        while True:
            try:
                mine = await self._try_acquire_or_renew()
            except (ApiException, aiohttp.ClientError, TimeoutError) as error:
                log.warning("Lease %s/%s: %s", self.settings.lease_namespace,
                            self.settings.lease_name, brief(error))
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

    async def _try_acquire_or_renew(self) -> bool:
        """Return whether this replica holds the Lease now.

        Raises:
            ApiException: for an API error other than losing a race (409).
        """
        s = self.settings
        now = datetime.now(UTC)
        try:
            lease = await self.api.read_namespaced_lease(s.lease_name, s.lease_namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            fresh = client.V1Lease(
                metadata=client.V1ObjectMeta(name=s.lease_name, namespace=s.lease_namespace),
                spec=client.V1LeaseSpec(holder_identity=s.identity, acquire_time=now,
                                        renew_time=now, lease_transitions=0,
                                        lease_duration_seconds=round(s.lease_duration)))
            return await self._write(self.api.create_namespaced_lease(s.lease_namespace,
                                                                      fresh))
        lease_spec = lease.spec or client.V1LeaseSpec()
        record = (lease_spec.holder_identity, lease_spec.renew_time,
                  lease_spec.lease_duration_seconds)
        if record != self._observed:
            self._observed, self._observed_at = record, time.monotonic()
        holder = lease_spec.holder_identity
        if holder and holder != s.identity:
            duration = lease_spec.lease_duration_seconds or s.lease_duration
            if time.monotonic() < self._observed_at + duration:
                return False
        if holder != s.identity:
            lease_spec.acquire_time = now
            lease_spec.lease_transitions = (lease_spec.lease_transitions or 0) + 1
        lease_spec.holder_identity = s.identity
        lease_spec.renew_time = now
        lease_spec.lease_duration_seconds = round(s.lease_duration)
        lease.spec = lease_spec
        # The read's resourceVersion makes the write fail if anyone else wrote meanwhile.
        return await self._write(self.api.replace_namespaced_lease(
            s.lease_name, s.lease_namespace, lease))

    async def _write(self, request: Any) -> bool:
        try:
            await request
        except ApiException as error:
            if error.status == 409:
                return False  # another replica won the race
            raise
        return True

    async def release(self) -> None:
        """Give the Lease up (if still held), so that another replica takes it at once."""
        s = self.settings
        try:
            lease = await self.api.read_namespaced_lease(s.lease_name, s.lease_namespace)
            if lease.spec is None or lease.spec.holder_identity != s.identity:
                return
            lease.spec.holder_identity = None
            lease.spec.lease_duration_seconds = 1
            lease.spec.renew_time = datetime.now(UTC)
            await self.api.replace_namespaced_lease(s.lease_name, s.lease_namespace, lease)
            log.info("released the Lease %s/%s", s.lease_namespace, s.lease_name)
        except (ApiException, aiohttp.ClientError, TimeoutError) as error:
            log.warning("cannot release the Lease %s/%s (the next leader waits for it to "
                        "expire): %s", s.lease_namespace, s.lease_name, brief(error))

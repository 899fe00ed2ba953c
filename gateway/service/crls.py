"""The CRL keeper: keeps every partner's CRL in force fresh, and warns when it is not.

Each round (the watch's, every ``[crl] check_seconds``, or ``refresh``) fetches the
CRLs that are due — worker 0 only under ``serve --workers`` — and puts a newer one in
force through the ``Reloader`` (under its lock: a CRL install and a reload never
interleave), closing the connections whose certificate it revokes. The other workers
install what worker 0 (or an operator) wrote to the CRL file. A CRL near or past its
nextUpdate is logged once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog
from cryptography import x509

from gateway.audit.chain import AuditEvent
from gateway.config.models import Settings
from gateway.errors import ErrorCode, GatewayError
from gateway.pipeline.runtime import Runtime
from gateway.service.reload import Reloader, closed_events
from gateway.trust import crl

log = structlog.get_logger(__name__)


class CrlKeeper:
    """Fetches, installs and watches the partners' CRLs for one gateway process.

    Args:
        settings: the settings in force (a reload replaces them).
        runtime: the running gateway's runtime (its trust store, client and audit log).
        swap: puts a trust store with a newer CRL in force.
        fetches: whether this process fetches CRLs (False: it only reads the CRL files).
    """

    def __init__(
        self,
        settings: Callable[[], Settings],
        runtime: Callable[[], Runtime],
        swap: Reloader,
        *,
        fetches: Callable[[], bool],
    ) -> None:
        self._settings = settings
        self._runtime = runtime
        self._swap = swap
        self._fetches = fetches
        self._state = crl.WatchState()

    @property
    def rounds(self) -> int:
        """How many rounds the watch (or ``refresh``) has completed."""
        return self._state.rounds

    def statuses(self, now: datetime | None = None) -> list[crl.CrlStatus]:
        """How fresh every partner's CRL in force is (partners without a CRL are left out)."""
        horizon = timedelta(days=self._settings().crl.warning_days)
        found = (
            crl.status(t, horizon, now) for _, t in sorted(self._runtime().trust.partners.items())
        )
        return [st for st in found if st is not None]

    async def watch(self) -> None:
        """A round every ``[crl] check_seconds``, until cancelled."""
        while True:
            try:
                await self.refresh()
            except GatewayError as exc:  # e.g. the audit store: the next round tries again
                log.error("crl_watch_failed", code=exc.code, reason=exc.reason)
            await asyncio.sleep(self._settings().crl.check_seconds)

    async def refresh(self, *, force_fetch: bool = False) -> list[crl.Fetched]:
        """One round of the CRL watch; returns the fetches it made.

        For every partner with a ``crl`` file and a source (``crl_url`` or a distribution
        point): fetch its CRL when due (worker 0 only under ``serve --workers``: every
        ``[crl] fetch_interval_seconds``, every few minutes once within the warning horizon
        or after a failure) and install a newer one; otherwise install the CRL file when it
        holds a newer CRL (what worker 0 or an operator wrote). Then warn, once per CRL,
        about those near or past nextUpdate.
        """
        s = self._settings()
        now = asyncio.get_running_loop().time()
        horizon = timedelta(days=s.crl.warning_days)
        fetched: list[crl.Fetched] = []
        for pid, partner in sorted(s.partners.items()):
            trust = self._runtime().trust.partners.get(pid)
            if trust is None or trust.crl_path is None:
                continue
            fetcher = self._fetches() and bool(crl.sources(partner, trust))
            if fetcher and (force_fetch or self._state.due(pid, now)):
                result = await crl.fetch(
                    partner, trust, timeout=s.crl.fetch_timeout_seconds, max_bytes=s.crl.max_bytes
                )
                fetched.append(result)
                await self._fetched(result)
                st = crl.status(self._runtime().trust.partners.get(pid, trust), horizon)
                fresh = result.error is None and st is not None and st.state == crl.OK
                self._state.schedule(pid, now, s.crl.fetch_interval_seconds, soon=not fresh)
                continue
            newer = await asyncio.to_thread(crl.newer_file, trust)
            if newer is not None:
                await self._install(pid, newer, source=str(trust.crl_path))
        for st in self.statuses():
            if st.state != crl.OK and self._state.first_warning(st):
                level = log.warning if st.state == crl.EXPIRING or st.cut_off else log.info
                level(
                    "crl_expiring" if st.state == crl.EXPIRING else "crl_stale",
                    partner=st.partner,
                    next_update=st.as_json()["next_update"],
                    hours_left=st.as_json()["hours_left"],
                    cut_off=st.cut_off,
                    file=str(st.path),
                )
        self._state.rounds += 1
        return fetched

    async def _fetched(self, result: crl.Fetched) -> None:
        """Install, log and audit the outcome of one fetch (the old CRL stays on failure)."""
        pid = result.partner
        if result.error is not None:
            err = result.error
            log.warning(
                "crl_fetch_failed", partner=pid, url=result.url, code=err.code, reason=err.reason
            )
            if self._state.failing(pid, err.code):  # audited once per failure streak and code
                await self._runtime().audit.append(
                    AuditEvent(
                        event="crl_fetch_failed",
                        partner=pid,
                        outcome="failed",
                        code=err.code,
                        reason=err.reason,
                        actor="system",
                        details={"url": result.url or "", "kept": "the CRL in force"},
                    )
                )
            return
        self._state.recovered(pid)
        if result.write_error is not None:
            log.warning("crl_write_failed", partner=pid, reason=result.write_error)
        if result.crl is None or not result.changed:
            log.debug("crl_unchanged", partner=pid, url=result.url)
            return
        await self._install(pid, result.crl, source=result.url or "")

    async def _install(
        self, partner_id: str, new: x509.CertificateRevocationList, *, source: str
    ) -> None:
        """Put ``new`` in force for the partner; close connections whose certificate it revokes."""
        async with self._swap.lock:
            rt = self._runtime()
            current = rt.trust.partners.get(partner_id)
            try:
                if current is None or not crl.accept(new, current):
                    return  # the partner was removed, or a reload brought this CRL meanwhile
            except GatewayError:
                return  # a reload brought a newer one meanwhile
            closing, _kept = self._swap.put_in_force(
                rt.trust.with_crl(partner_id, new), self._settings()
            )
            about = crl.describe(new)
            log.info("crl_fetched", partner=partner_id, source=source, closed=len(closing), **about)
            events = closed_events(closing, "system")
            events.append(
                AuditEvent(
                    event="crl_fetched",
                    partner=partner_id,
                    outcome="ok",
                    code=ErrorCode.CRL_INSTALLED,
                    reason=f"a newer CRL of {partner_id} is in force",
                    actor="system",
                    details={"source": source, **about},
                )
            )
            await rt.audit.append_many(events)

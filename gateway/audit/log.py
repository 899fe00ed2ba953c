"""The tamper-evident exchange log: append, checkpoint, verify, export.

Every exchange step appends an ``AuditEvent``; ``append`` returns the entry's sequence
number only once the entry is committed, so no exchange is acknowledged without its
entry. Appends that wait at the same moment are group-committed: one writer task
drains them all into one transaction (``audit.backend``), then resolves their futures.

Entries form a SHA-256 hash chain (``audit.chain`` documents the canonical bytes).
Every ``checkpoint_every`` entries or ``checkpoint_seconds`` seconds the gateway signs
(seq, head hash, time) with its signing key; ``verify`` recomputes the chain, checks the
checkpoint signatures and names the first bad sequence number. ``export`` writes a
bundle an auditor verifies offline — with ``verify_bundle`` or with openssl.

Evidence (signed envelopes and receipts) is kept beside the chain, keyed by digest;
the chain covers digests only, so purging evidence never breaks it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import multiprocessing
import os
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gateway.audit.backend import (
    CHUNK,
    AuditStore,
    Checkpoint,
    EvidenceInfo,
    EvidenceItem,
    Pending,
    Progress,
    SearchFilter,
)
from gateway.audit.certs import CERT_RECORDED, CertRecord, RecordedTrust, record_from
from gateway.audit.chain import (
    GENESIS,
    AuditEvent,
    Entry,
    canonical_json,
    checkpoint_bytes,
    evidence_digest,
    format_time,
    utc_now,
)
from gateway.audit.export import BUNDLE_FORMAT, _export_line, _prepare_export_dir, _verify_txt
from gateway.audit.postgres import PostgresStore
from gateway.audit.sqlite import SqliteStore, sqlite_path
from gateway.audit.verify import ChainVerifier, Segment, VerifyReport, _cp_fingerprint
from gateway.errors import AuditError, ErrorCode
from gateway.health import Health
from gateway.tasks import spawn


async def open_store(url: str, *, create: bool = True, migrate: bool = True) -> AuditStore:
    """The store a URL names: ``postgresql://…`` or ``sqlite:///path`` / a plain path.

    ``migrate=False`` is for read-only helpers (verify workers): no schema check, no lock.
    """
    if url.startswith(("postgresql://", "postgres://")):
        return await PostgresStore.open(url, migrate=migrate)
    return await SqliteStore.open(sqlite_path(url), create=create, migrate=migrate)


log = structlog.get_logger(__name__)


T = TypeVar("T")


#: most entries one transaction takes (the rest wait for the next)
MAX_BATCH = 20_000


#: entries from which verify uses worker processes by default
PARALLEL_MIN = 200_000


#: fewest entries one verify worker task takes
MIN_SEGMENT = CHUNK


class CheckpointSigner(Protocol):
    """Signs checkpoints; ``gateway.xml.signature.Signer`` is one."""

    @property
    def cert(self) -> x509.Certificate: ...

    def sign_detached_bytes(self, data: bytes) -> bytes:
        """A DER signature (ECDSA or RSA PKCS#1 v1.5) over SHA-256 of ``data``."""
        ...


@dataclass(slots=True)
class _Waiting:
    entries: list[tuple[Pending, asyncio.Future[int] | None]] = field(default_factory=list)
    evidence: list[tuple[EvidenceItem, asyncio.Future[int] | None]] = field(default_factory=list)


class AuditLog:
    """The gateway's exchange log over one store."""

    def __init__(
        self,
        store: AuditStore,
        *,
        gateway_id: str,
        checkpoint_signer: CheckpointSigner | None,
        checkpoint_every: int,
        checkpoint_seconds: float,
    ) -> None:
        self._store = store
        self.gateway_id = gateway_id
        self._signer = checkpoint_signer
        #: whether this process signs checkpoints now (one leader among instances sharing the
        #: log; see gateway.service.leader) and whether it did at the last look
        self._leads: Callable[[], bool] = lambda: True
        self._led = True
        self._check_now = False
        self._cp_every = checkpoint_every
        self._cp_seconds = checkpoint_seconds
        self._waiting = _Waiting()
        self._wake = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._head = (0, GENESIS)
        #: the store's URL (verify workers open their own connections with it)
        self.url: str | None = None
        self._last_cp_seq = 0
        self._last_cp_mono = 0.0
        #: whether the last write worked (readiness); failures are logged once per episode
        self.health = Health("audit", self._probe)

    async def _probe(self) -> None:
        try:
            await self._store.probe()
        except AuditError as exc:
            self.health.failed(exc.code, exc.reason)
        else:
            self.health.succeeded()

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        gateway_id: str,
        checkpoint_signer: CheckpointSigner | None = None,
        checkpoint_every: int = 1000,
        checkpoint_seconds: float = 60.0,
        create: bool = True,
    ) -> AuditLog:
        """Open (and migrate) the store ``url`` names and start the writer.

        ``url``: ``sqlite:///abs/path/audit.db`` or a plain path (SQLite), or
        ``postgresql://user@host:port/db``. With ``create=False`` a missing SQLite
        file is an ``AuditError`` (the CLI never creates a log by reading it).
        """
        store = await open_store(url, create=create)
        self = cls(
            store,
            gateway_id=gateway_id,
            checkpoint_signer=checkpoint_signer,
            checkpoint_every=checkpoint_every,
            checkpoint_seconds=checkpoint_seconds,
        )
        self.url = url
        self._head = await store.head()
        cps = await store.checkpoints()
        self._last_cp_seq = max((cp.seq for cp in cps), default=0)
        self._last_cp_mono = asyncio.get_running_loop().time()
        self._writer = spawn(self._write_loop(), name="audit-writer")
        log.debug("audit_opened", head_seq=self._head[0], last_checkpoint=self._last_cp_seq)
        return self

    # ------------------------------------------------------------------ write side

    def _check_open(self) -> None:
        if self._closing:
            raise AuditError("the audit log is closed", code=ErrorCode.AUDIT_CLOSED)
        if self._writer is not None and self._writer.done():
            raise AuditError("the audit writer stopped", code=ErrorCode.AUDIT_WRITER_STOPPED)

    def _pending(self, event: AuditEvent) -> Pending:
        return (
            event.event,
            event.direction,
            event.partner,
            event.agreement,
            event.message_type,
            event.message_id,
            event.correlation_id,
            event.envelope_digest,
            event.receipt_digest,
            event.outcome,
            event.code,
            event.reason,
            event.actor,
            canonical_json(dict(event.details)),
        )

    async def append(self, event: AuditEvent) -> int:
        """Append one entry; returns its seq once it is durable (``AuditError`` if not)."""
        self._check_open()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.entries.append((self._pending(event), fut))
        self._wake.set()
        return await fut

    async def append_many(self, events: Sequence[AuditEvent]) -> list[int]:
        """Append several entries (consecutive seqs, one transaction); durable on return."""
        self._check_open()
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[int]] = []
        pending = [self._pending(e) for e in events]
        for p in pending:
            fut: asyncio.Future[int] = loop.create_future()
            futs.append(fut)
            self._waiting.entries.append((p, fut))
        self._wake.set()
        return list(await asyncio.gather(*futs))

    async def store_evidence(
        self, digest: str, kind: str, data: bytes, retention_days: int
    ) -> None:
        """Keep a signed envelope or receipt as evidence; durable on return.

        ``digest`` must be ``evidence_digest(data)`` (hex SHA-256) — the value entries
        carry as ``envelope_digest`` / ``receipt_digest``. Storing the same digest twice
        keeps the first copy.
        """
        self._check_open()
        if digest != evidence_digest(data):
            raise AuditError(
                "evidence digest does not match its bytes",
                code=ErrorCode.AUDIT_EVIDENCE_DIGEST,
                digest=digest,
            )
        now = datetime.now(UTC)
        item = EvidenceItem(
            digest=digest,
            kind=kind,
            data=bytes(data),
            stored_at=format_time(now),
            retention_until=format_time(now + timedelta(days=retention_days)),
        )
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.evidence.append((item, fut))
        self._wake.set()
        await fut

    async def _write_loop(self) -> None:
        try:
            await self._write_forever()
        finally:
            # cancelled or crashed: nobody may wait forever for an entry that will not come
            err = AuditError("the audit writer stopped", code=ErrorCode.AUDIT_WRITER_STOPPED)
            for _, fut in (*self._waiting.entries, *self._waiting.evidence):
                if fut is not None and not fut.done():
                    fut.set_exception(err)
            self._waiting = _Waiting()

    async def _write_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            timeout = None
            if self._signer is not None:
                timeout = max(0.0, self._last_cp_mono + self._cp_seconds - loop.time())
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
                # cancellation that arrives as the event is set, and a writer that ignored its
                # cancellation would hold a shutdown (asyncio.run waits for it) for ever
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                await self._maybe_checkpoint(fresh=True)
                continue
            self._wake.clear()
            waiting = self._waiting
            if not waiting.entries and not waiting.evidence:
                if self._closing:
                    return
                if self._check_now:
                    self._check_now = False
                    await self._maybe_checkpoint()
                continue
            if len(waiting.entries) > MAX_BATCH:
                batch = _Waiting(waiting.entries[:MAX_BATCH], waiting.evidence)
                self._waiting = _Waiting(waiting.entries[MAX_BATCH:])
                self._wake.set()
            else:
                batch = waiting
                self._waiting = _Waiting()
                if self._closing:
                    self._wake.set()  # come round once more to see the queue is empty
            try:
                await self._commit(batch)
            except BaseException:
                self._waiting.entries[:0] = batch.entries  # failed by _write_loop's finally
                self._waiting.evidence[:0] = batch.evidence
                raise
            await self._maybe_checkpoint()

    async def _commit(self, batch: _Waiting) -> None:
        try:
            head = await self._store.write_batch(
                self.gateway_id, [p for p, _ in batch.entries], [e for e, _ in batch.evidence]
            )
        except Exception as exc:
            err = (
                exc
                if isinstance(exc, AuditError)
                else AuditError(f"audit write failed: {exc}", code=ErrorCode.AUDIT_WRITE_FAILED)
            )
            # logged once per failure episode (error level) by the health tracker
            self.health.failed(err.code, err.reason)
            log.debug("audit_write_failed", entries=len(batch.entries), error=str(exc))
            for _, fut in (*batch.entries, *batch.evidence):
                if fut is not None and not fut.done():
                    fut.set_exception(err)
            return
        self.health.succeeded()
        self._head = head
        first = head[0] - len(batch.entries) + 1
        for i, (_, fut) in enumerate(batch.entries):
            if fut is not None and not fut.done():
                fut.set_result(first + i)
        for _, fut in batch.evidence:
            if fut is not None and not fut.done():
                fut.set_result(0)

    def set_leadership(self, leads: Callable[[], bool]) -> None:
        """Sign checkpoints only while ``leads()`` says so (instances sharing one log)."""
        self._leads = leads
        self._led = leads()

    def leadership_changed(self) -> None:
        """Look at the checkpoint now (a new leader signs what is due without waiting)."""
        self._check_now = True
        self._wake.set()

    async def _maybe_checkpoint(self, *, fresh: bool = False) -> None:
        """Sign a checkpoint when one is due (and this process leads).

        ``fresh``: read the head from the store first (other instances sharing the log may
        have moved it; after this process's own batch its head is current already).
        """
        if self._signer is None:
            return
        if not self._leads():
            self._led = False
            return
        try:
            await self._follow(fresh)
        except Exception as exc:  # the store fails: its health logs it; try again later
            log.debug("audit_head_unavailable", error=str(exc))
            return
        await self._checkpoint_if_due()

    async def _follow(self, fresh: bool) -> None:
        if not self._led:
            # just became the leader: the head other instances wrote, and the last checkpoint
            # any of them signed; what is due is signed now
            cps = await self._store.checkpoints()
            self._last_cp_seq = max((cp.seq for cp in cps), default=0)
            self._last_cp_mono = asyncio.get_running_loop().time() - self._cp_seconds
            self._led = True
            fresh = True
        if fresh:
            self._head = await self._store.head()

    async def _checkpoint_if_due(self) -> None:
        now = asyncio.get_running_loop().time()
        seq = self._head[0]
        if seq <= self._last_cp_seq:
            self._last_cp_mono = now  # nothing new to sign: restart the clock
            return
        if seq - self._last_cp_seq < self._cp_every and now - self._last_cp_mono < self._cp_seconds:
            return
        try:
            await self.checkpoint()
        except Exception as exc:  # retried after the next batch; appends go on meanwhile
            log.error("audit_checkpoint_failed", seq=seq, error=str(exc))
            self._last_cp_mono = now

    def set_signer(self, signer: CheckpointSigner) -> None:
        """Sign the next checkpoints with ``signer`` (a reload switched the signing key)."""
        self._signer = signer

    async def checkpoint(self) -> Checkpoint | None:
        """Sign the current head now (None without a signer or when nothing is new)."""
        if self._signer is None:
            return None
        seq, head_hash = await self._store.head()
        if seq == 0:
            return None
        time = utc_now()
        data = checkpoint_bytes(self.gateway_id, seq, head_hash, time)
        cp = Checkpoint(
            seq=seq,
            head_hash=head_hash,
            time=time,
            gateway=self.gateway_id,
            signed_bytes=data,
            signature=self._signer.sign_detached_bytes(data),
            cert_pem=self._signer.cert.public_bytes(serialization.Encoding.PEM).decode(),
        )
        await self._store.add_checkpoint(cp)
        self._last_cp_seq = seq
        self._last_cp_mono = asyncio.get_running_loop().time()
        log.info("audit_checkpoint_signed", seq=seq)
        return cp

    async def close(self) -> None:
        """Flush waiting appends, write a final checkpoint (with a signer), close the store."""
        if self._closing and self._writer is None:
            return
        self._closing = True
        self.health.stop()
        self._wake.set()
        writer, self._writer = self._writer, None
        try:
            if writer is not None:
                await asyncio.gather(writer, return_exceptions=True)  # a crash was logged
            if self._signer is not None and self._leads() and self._head[0] > self._last_cp_seq:
                await self.checkpoint()
        finally:
            await self._store.close()
        log.debug("audit_closed", head_seq=self._head[0])

    async def __aenter__(self) -> AuditLog:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ read side

    async def head(self) -> tuple[int, str]:
        """(seq, hash) of the last committed entry; (0, GENESIS) when empty."""
        return await self._store.head()

    async def search(self, flt: SearchFilter | None = None, **filters: Any) -> list[Entry]:
        """Entries matching every given filter, in seq order (``SearchFilter`` fields)."""
        flt = flt or SearchFilter(**filters)
        return await self._store.search(flt)

    async def timeline(self, message_id: str) -> tuple[list[Entry], list[EvidenceInfo]]:
        """Every entry about ``message_id`` (as message or correlation id), and its evidence."""
        entries = await self._store.timeline(message_id)
        digests = sorted(
            {d for e in entries for d in (e.envelope_digest, e.receipt_digest) if d is not None}
        )
        return entries, await self._store.evidence_info(digests)

    async def get_evidence(self, digest: str) -> bytes | None:
        """The evidence bytes, or None when unknown or purged."""
        return await self._store.get_evidence(digest)

    async def checkpoints(self) -> list[Checkpoint]:
        return await self._store.checkpoints()

    async def cert_records(self) -> list[CertRecord]:
        """The signing certificates recorded in the log (``gateway.audit.certs``), in seq order."""
        entries = await self._store.search(SearchFilter(event=CERT_RECORDED, limit=1_000_000))
        found = (record_from(e.seq, e.event, e.code, e.details_obj()) for e in entries)
        return [r for r in found if r is not None]

    async def purge(self, now: datetime | None = None) -> int:
        """Drop the bytes of evidence past its retention; returns how many. Entries stay."""
        count = await self._store.purge(format_time(now or datetime.now(UTC)))
        log.info("audit_evidence_purged", count=count)
        return count

    async def seq_range(self, start: int | str | None, end: int | str | None) -> tuple[int, int]:
        """Resolve ``--from``/``--to`` (a seq, an ISO time, or None) to a seq range."""
        head, _ = await self._store.head()
        lo = 1 if start is None else start
        hi = head if end is None else end
        if isinstance(lo, str):
            lo = await self._store.seq_at_time(format_time(_parse(lo)), after=True)
        if isinstance(hi, str):
            hi = await self._store.seq_at_time(format_time(_parse(hi)), after=False)
        return max(1, lo), min(head, hi)

    async def verify(
        self,
        *,
        progress: Progress | None = None,
        trusted_certs: Sequence[x509.Certificate] | None = None,
        workers: int | None = None,
        trusted_cas: Sequence[x509.Certificate] | None = None,
    ) -> VerifyReport:
        """Recompute the whole chain and every checkpoint signature.

        With ``trusted_certs`` (and/or ``trusted_cas``), a checkpoint must be signed by
        one of ``trusted_certs`` or by a signing certificate recorded in the log and
        issued by one of ``trusted_cas`` (``gateway.audit.certs`` has the rule);
        anything else is a fault.
        Logs of ``PARALLEL_MIN`` entries or more are split into seq ranges verified by
        ``workers`` processes (default: up to 4, one per CPU) and stitched together;
        the report is the same as a sequential run's.
        """
        # checkpoints first: every checkpoint read then is at or below the head read next,
        # unless entries it signed were removed (a live gateway keeps appending meanwhile)
        checkpoints = await self._store.checkpoints()
        head, _ = await self._store.head()
        total = await self._store.count(1, head)
        recorded = None
        if trusted_certs is not None or trusted_cas is not None:
            # the chain pass below checks these entries like any other: an altered record
            # fails it; they are looked up (a scan) only when a checkpoint needs them
            anchors = {c.fingerprint(hashes.SHA256()) for c in trusted_certs or ()}
            needed = any(_cp_fingerprint(cp) not in anchors for cp in checkpoints)
            recorded = RecordedTrust(await self.cert_records() if needed else (), trusted_cas)
        verifier = ChainVerifier(checkpoints, trusted_certs=trusted_certs, recorded=recorded)
        if workers is None:
            workers = min(os.cpu_count() or 1, 4) if total >= PARALLEL_MIN else 1
        if workers > 1 and self.url is not None and head > 0:
            await self._verify_parallel(verifier, head, total, workers, progress)
            return verifier.finish()
        done = 0
        async for rows in _prefetched(self._store.iter_rows(1, head, CHUNK)):
            verifier.feed(rows)
            done += len(rows)
            if progress is not None:
                progress(done, total)
        return verifier.finish()

    async def _verify_parallel(
        self,
        verifier: ChainVerifier,
        head: int,
        total: int,
        workers: int,
        progress: Progress | None,
    ) -> None:
        assert self.url is not None
        size = max(MIN_SEGMENT, -(-head // (workers * 4)))  # a few per worker: progress
        ranges = [(lo, min(head, lo + size - 1)) for lo in range(1, head + 1, size)]
        loop = asyncio.get_running_loop()
        done = 0
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        try:
            futures = [
                loop.run_in_executor(
                    pool,
                    _verify_segment,
                    self.url,
                    lo,
                    hi,
                    {s: h for s, h in verifier.heads.items() if lo <= s <= hi},
                    verifier.last_checkpoint_before(lo),
                )
                for lo, hi in ranges
            ]
            for fut in futures:
                seg = await fut
                verifier.absorb(seg)
                done += seg.entries
                if progress is not None:
                    progress(done, total)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    async def export(
        self,
        out_dir: Path,
        start: int | str | None = None,
        end: int | str | None = None,
        *,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Write an offline-verifiable bundle of entries ``start..end`` to ``out_dir``.

        Returns the manifest. Checkpoints inside the range are included with, per
        checkpoint, the signed bytes, the DER signature, the certificate and its public key.
        """
        lo, hi = await self.seq_range(start, end)
        await asyncio.to_thread(_prepare_export_dir, out_dir)
        total = max(0, hi - lo + 1)
        written = 0
        entries_sha = hashlib.sha256()
        with (out_dir / "entries.jsonl").open("wb") as fh:
            if lo <= hi:
                async for rows in _prefetched(self._store.iter_rows(lo, hi, CHUNK)):
                    block = b"".join(_export_line(r) for r in rows)
                    fh.write(block)
                    entries_sha.update(block)
                    written += len(rows)
                    if progress is not None:
                        progress(written, total)
        cps = [cp for cp in await self._store.checkpoints() if lo <= cp.seq <= hi]
        cp_dir = out_dir / "checkpoints"
        cp_dir.mkdir()
        names: list[str] = []
        for cp in cps:
            name = f"cp-{cp.seq:012d}"
            if name in names:
                name = f"{name}-{names.count(name) + 1}"
            names.append(name)
            cert = x509.load_pem_x509_certificate(cp.cert_pem.encode())
            (cp_dir / f"{name}.bin").write_bytes(cp.signed_bytes)
            (cp_dir / f"{name}.der").write_bytes(cp.signature)
            (cp_dir / f"{name}.cert.pem").write_text(cp.cert_pem)
            (cp_dir / f"{name}.pub.pem").write_bytes(
                cert.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        manifest = {
            "format": BUNDLE_FORMAT,
            "gateway": self.gateway_id,
            "exported_at": utc_now(),
            "from_seq": lo,
            "to_seq": hi,
            "entries": written,
            "entries_sha256": entries_sha.hexdigest(),
            "checkpoints": names,
        }
        (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        (out_dir / "VERIFY.txt").write_text(_verify_txt(manifest, names))
        log.debug("audit_exported", from_seq=lo, to_seq=hi, entries=written, checkpoints=len(cps))
        return manifest


async def _prefetched(chunks: AsyncIterator[T]) -> AsyncIterator[T]:
    """Fetch the next chunk while the caller works on the current one."""
    it = aiter(chunks)
    pending = asyncio.ensure_future(anext(it))
    try:
        while True:
            try:
                item = await pending
            except StopAsyncIteration:
                return
            pending = asyncio.ensure_future(anext(it))
            yield item
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending


def _verify_segment(
    url: str, lo: int, hi: int, heads: dict[int, list[str]], prev_cp_seq: int
) -> Segment:
    """Worker process: verify entries ``lo..hi`` on a connection of its own."""
    return asyncio.run(_verify_segment_async(url, lo, hi, heads, prev_cp_seq))


async def _verify_segment_async(
    url: str, lo: int, hi: int, heads: dict[int, list[str]], prev_cp_seq: int
) -> Segment:
    store = await open_store(url, create=False, migrate=False)
    try:
        verifier = ChainVerifier.for_segment(heads, prev_cp_seq)
        async for rows in _prefetched(store.iter_rows(lo, hi, CHUNK)):
            verifier.feed(rows)
        return verifier.segment()
    finally:
        await store.close()


def _parse(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AuditError(
            f"{text!r} is neither a sequence number nor an ISO time", code=ErrorCode.AUDIT_BAD_RANGE
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def iter_entries(log_: AuditLog, lo: int, hi: int) -> AsyncIterator[Entry]:
    """Entries ``lo..hi`` in seq order (for tools that stream)."""
    async for rows in log_._store.iter_rows(lo, hi, CHUNK):
        for r in rows:
            yield Entry.from_row(r)

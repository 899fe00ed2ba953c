"""The tamper-evident exchange log: append, checkpoint, verify, export.

Every exchange step appends an ``AuditEvent``; ``append`` returns the entry's sequence
number only once the entry is committed, so no exchange is acknowledged without its
entry. Appends that wait at the same moment are group-committed: one writer task
drains them all into one transaction (``audit_store``), then resolves their futures.

Entries form a SHA-256 hash chain (``audit_chain`` documents the canonical bytes).
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
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from gateway.audit_certs import CERT_RECORDED, CertRecord, RecordedTrust, record_from
from gateway.audit_chain import (
    CHECKPOINT_FORMAT,
    EVENTS,
    GENESIS,
    AuditEvent,
    Entry,
    canonical_entry,
    canonical_json,
    chain_hash,
    checkpoint_bytes,
    evidence_digest,
    format_time,
    utc_now,
)
from gateway.audit_store import (
    Checkpoint,
    EvidenceInfo,
    EvidenceItem,
    Pending,
    SearchFilter,
    Store,
    open_store,
)
from gateway.errors import AuditError
from gateway.health import Health
from gateway.tasks import spawn

__all__ = [
    "EVENTS",
    "AuditEvent",
    "AuditLog",
    "Checkpoint",
    "CheckpointSigner",
    "Entry",
    "EvidenceInfo",
    "Problem",
    "SearchFilter",
    "VerifyReport",
    "evidence_digest",
    "verify_bundle",
]

log = structlog.get_logger(__name__)
T = TypeVar("T")

#: most entries one transaction takes (the rest wait for the next)
MAX_BATCH = 20_000
#: rows fetched per round trip while verifying or exporting
CHUNK = 5_000
#: entries from which verify uses worker processes by default
PARALLEL_MIN = 200_000
#: fewest entries one verify worker task takes
MIN_SEGMENT = CHUNK
#: problems a report keeps (the count goes on)
MAX_PROBLEMS = 1_000

BUNDLE_FORMAT = "maagw-audit-bundle/1"

Progress = Callable[[int, int], None]


class CheckpointSigner(Protocol):
    """Signs checkpoints; ``gateway.signing.Signer`` is one."""

    @property
    def cert(self) -> x509.Certificate: ...

    def sign_detached_bytes(self, data: bytes) -> bytes:
        """A DER signature (ECDSA or RSA PKCS#1 v1.5) over SHA-256 of ``data``."""
        ...


@dataclass(frozen=True, slots=True)
class Problem:
    """One fault verify found; ``seq`` is the first sequence number it concerns."""

    seq: int
    kind: str
    message: str

    def __str__(self) -> str:
        return f"seq {self.seq}: {self.kind}: {self.message}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What ``verify`` found."""

    entries: int
    first_seq: int
    last_seq: int
    head_hash: str
    checkpoints: int
    #: seq of the last checkpoint that verified (0: none)
    last_checkpoint_seq: int
    problems: tuple[Problem, ...]
    problem_count: int
    notes: tuple[str, ...] = ()
    #: checkpoints whose bytes, signature and certificate all verified
    valid_checkpoints: int = 0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    @property
    def first_bad_seq(self) -> int | None:
        return self.problems[0].seq if self.problems else None

    @property
    def unanchored(self) -> int:
        """Entries after the last checkpoint: only the chain itself vouches for them."""
        return max(0, self.last_seq - max(self.last_checkpoint_seq, self.first_seq - 1))

    def _checkpoint_line(self) -> str:
        if not self.checkpoints:
            return "checkpoints: none"
        bad = self.checkpoints - self.valid_checkpoints
        if self.valid_checkpoints == 0:
            return f"checkpoints: {self.checkpoints}, none valid"
        counts = "all valid" if bad == 0 else f"{self.valid_checkpoints} valid, {bad} not"
        last = (
            f"last valid at seq {self.last_checkpoint_seq}"
            if self.last_checkpoint_seq
            else "none of the valid ones within the entries"
        )
        return f"checkpoints: {self.checkpoints} ({counts}), {last}"

    def lines(self) -> list[str]:
        """Human-readable summary (what ``maagw audit verify`` prints)."""
        out: list[str] = []
        if self.entries:
            out.append(
                f"entries: {self.entries} (seq {self.first_seq}..{self.last_seq}), "
                f"head {self.head_hash}"
            )
        else:
            out.append("entries: none")
        out.append(self._checkpoint_line())
        if self.unanchored:
            out.append(
                f"note: {self.unanchored} entries after the last checkpoint "
                f"(seq {self.last_seq - self.unanchored + 1}..{self.last_seq}) are only "
                "checked against the chain itself, no signature covers them yet"
            )
        out.extend(f"note: {n}" for n in self.notes)
        if self.ok:
            out.append("OK: chain and checkpoints verify")
        else:
            out.append(
                f"FAILED: {self.problem_count} problem(s); first bad seq {self.first_bad_seq}"
            )
            out.extend(f"  {p}" for p in self.problems[:50])
            if self.problem_count > 50:
                out.append(f"  … and {self.problem_count - 50} more")
        return out


@dataclass(slots=True)
class _Waiting:
    entries: list[tuple[Pending, asyncio.Future[int] | None]] = field(default_factory=list)
    evidence: list[tuple[EvidenceItem, asyncio.Future[int] | None]] = field(default_factory=list)


class AuditLog:
    """The gateway's exchange log over one store."""

    def __init__(
        self,
        store: Store,
        *,
        gateway_id: str,
        checkpoint_signer: CheckpointSigner | None,
        checkpoint_every: int,
        checkpoint_seconds: float,
    ) -> None:
        self._store = store
        self.gateway_id = gateway_id
        self._signer = checkpoint_signer
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
            raise AuditError("the audit log is closed", code="AUDIT_CLOSED")
        if self._writer is not None and self._writer.done():
            raise AuditError("the audit writer stopped", code="AUDIT_WRITER_STOPPED")

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
                code="AUDIT_EVIDENCE_DIGEST",
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
            err = AuditError("the audit writer stopped", code="AUDIT_WRITER_STOPPED")
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
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                await self._maybe_checkpoint()
                continue
            self._wake.clear()
            waiting = self._waiting
            if not waiting.entries and not waiting.evidence:
                if self._closing:
                    return
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
                else AuditError(f"audit write failed: {exc}", code="AUDIT_WRITE_FAILED")
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

    async def _maybe_checkpoint(self) -> None:
        if self._signer is None:
            return
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
            if self._signer is not None and self._head[0] > self._last_cp_seq:
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
        """The signing certificates recorded in the log (``gateway.audit_certs``), in seq order."""
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
        issued by one of ``trusted_cas`` (``gateway.audit_certs`` has the rule);
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


def _prepare_export_dir(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.iterdir()):
        raise AuditError(f"{out_dir}: export directory is not empty", code="AUDIT_EXPORT")


def _export_line(row: Sequence[Any]) -> bytes:
    """The entry's canonical JSON with prev_hash and hash added (one line of entries.jsonl)."""
    body = canonical_entry(*row[:17])
    return body[:-1] + f',"prev_hash":"{row[17]}","hash":"{row[18]}"}}\n'.encode()


def _parse(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AuditError(
            f"{text!r} is neither a sequence number nor an ISO time", code="AUDIT_BAD_RANGE"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# ---------------------------------------------------------------------- verification


def check_signature(cert: x509.Certificate, signature: bytes, data: bytes) -> bool:
    """True when ``signature`` (DER; ECDSA or RSA PKCS#1 v1.5; SHA-256) covers ``data``."""
    key = cert.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class Segment:
    """The outcome of verifying one seq range in a worker process."""

    entries: int
    first_seq: int
    first_prev: str
    last_seq: int
    last_hash: str
    problems: tuple[Problem, ...]
    problem_count: int


class ChainVerifier:
    """Checks rows fed in seq order against the chain and the checkpoints.

    Starts at seq 1 from ``GENESIS`` unless ``anchored=False`` (a bundle that begins
    mid-chain: its first entry's prev_hash is taken as given; checkpoints anchor it).
    After a fault it resynchronises on the stored hash, so each altered entry is named
    once instead of every later one.
    """

    def __init__(
        self,
        checkpoints: Iterable[Checkpoint],
        *,
        trusted_certs: Sequence[x509.Certificate] | None = None,
        anchored: bool = True,
        recorded: RecordedTrust | None = None,
    ) -> None:
        self._problems: list[Problem] = []
        self._count = 0
        self._entries = 0
        self._first_seq = 0
        self._last_seq = 0
        self._expected = 1 if anchored else 0
        self._prev = GENESIS if anchored else ""
        self._computed = GENESIS
        self._prev_cp_seq = 0
        self._notes: list[str] = []
        trusted = (
            None
            if trusted_certs is None and recorded is None
            else {c.fingerprint(hashes.SHA256()) for c in trusted_certs or ()}
        )
        self._recorded = recorded
        if trusted is None:
            self._notes.append(
                "checkpoint certificates were not compared with a trusted certificate"
            )
        self._first_prev = ""
        #: seq -> head hashes that valid checkpoints signed for it
        self.heads: dict[int, list[str]] = {}
        self._cp_total = 0
        self._cp_valid = 0
        for cp in checkpoints:
            self._cp_total += 1
            if self._check_checkpoint(cp, trusted):
                self._cp_valid += 1
                self.heads.setdefault(cp.seq, []).append(cp.head_hash)
        self._valid_cp_seqs = sorted(self.heads)

    @classmethod
    def for_segment(cls, heads: Mapping[int, list[str]], prev_cp_seq: int) -> ChainVerifier:
        """A verifier for one seq range of a larger run (see ``absorb``), checkpoints checked."""
        self = cls((), trusted_certs=(), anchored=False)
        self.heads = dict(heads)
        self._valid_cp_seqs = sorted(heads)
        self._prev_cp_seq = prev_cp_seq
        return self

    def last_checkpoint_before(self, seq: int) -> int:
        """The seq of the last valid checkpoint below ``seq`` (0 if none)."""
        below = [s for s in self._valid_cp_seqs if s < seq]
        return below[-1] if below else 0

    def segment(self) -> Segment:
        """What ``absorb`` needs from this (segment) verifier."""
        return Segment(
            entries=self._entries,
            first_seq=self._first_seq,
            first_prev=self._first_prev,
            last_seq=self._last_seq,
            last_hash=self._prev,
            problems=tuple(self._problems),
            problem_count=self._count,
        )

    def absorb(self, seg: Segment) -> None:
        """Continue this run with a segment verified elsewhere (the next seq range)."""
        if seg.entries == 0:
            return
        if self._entries == 0:
            self._first_seq = seg.first_seq
        if self._expected != 0 and seg.first_seq != self._expected:
            self._problem(
                self._expected,
                "missing",
                f"entries {self._expected}..{seg.first_seq - 1} are missing"
                if seg.first_seq - 1 > self._expected
                else f"entry {self._expected} is missing",
            )
        elif self._expected != 0 and seg.first_prev != self._prev:
            self._problem(
                seg.first_seq,
                "prev_hash",
                f"prev_hash is not the hash of entry {seg.first_seq - 1} (this entry or the "
                "one before it was altered, or entries were swapped)",
            )
        for p in seg.problems:
            self._problem(p.seq, p.kind, p.message)
        self._count += seg.problem_count - len(seg.problems)
        self._entries += seg.entries
        self._expected = seg.last_seq + 1
        self._prev = seg.last_hash
        self._last_seq = seg.last_seq
        self._computed = seg.last_hash

    def _problem(self, seq: int, kind: str, message: str) -> None:
        self._count += 1
        if len(self._problems) < MAX_PROBLEMS:
            self._problems.append(Problem(seq, kind, message))

    def _check_checkpoint(self, cp: Checkpoint, trusted: set[bytes] | None) -> bool:
        try:
            cert = x509.load_pem_x509_certificate(cp.cert_pem.encode())
        except ValueError:
            self._problem(cp.seq, "checkpoint_cert", "the checkpoint's certificate is unreadable")
            return False
        if cp.signed_bytes != checkpoint_bytes(cp.gateway, cp.seq, cp.head_hash, cp.time):
            self._problem(
                cp.seq,
                "checkpoint_bytes",
                "the signed bytes do not match the checkpoint's seq/head/time/gateway",
            )
            return False
        if not check_signature(cert, cp.signature, cp.signed_bytes):
            self._problem(
                cp.seq,
                "checkpoint_signature",
                f"the checkpoint signature does not verify with {cert.subject.rfc4514_string()}",
            )
            return False
        if trusted is not None and cert.fingerprint(hashes.SHA256()) not in trusted:
            if self._recorded is None:
                why: str | None = (
                    f"signed by {cert.subject.rfc4514_string()}, not a trusted certificate"
                )
            else:
                why = self._recorded.problem(cert, cp.seq, cp.time)
            if why is not None:
                self._problem(cp.seq, "checkpoint_untrusted", why)
                return False
        return True

    def feed(self, rows: Sequence[Sequence[Any]]) -> None:
        """Check the next rows (``ROW_COLUMNS`` order, ascending seq)."""
        if not rows:
            return
        if self._expected == 0:  # unanchored start: the first prev_hash is taken as given
            self._expected = rows[0][0]
            self._prev = self._first_prev = rows[0][17]
        if self._entries == 0:
            self._first_seq = rows[0][0]
        self._entries += len(rows)
        expected = self._expected
        prev = self._prev
        cps = self.heads
        sha256 = hashlib.sha256
        canonical = canonical_entry
        for row in rows:
            seq = row[0]
            computed = sha256(prev.encode() + canonical(*row[:17])).hexdigest()
            if seq != expected or row[17] != prev or computed != row[18] or seq in cps:
                self._check_slowly(row, expected, prev, computed)
            prev = row[18]  # resynchronise on the stored hash: each altered entry named once
            expected = seq + 1
        self._expected = expected
        self._prev = prev
        self._last_seq = expected - 1
        self._computed = prev

    def _check_slowly(self, row: Sequence[Any], expected: int, prev: str, computed: str) -> None:
        """The row is out of sequence, does not chain or hash, or carries a checkpoint."""
        seq = row[0]
        if seq != expected:
            if seq > expected:
                self._problem(
                    expected,
                    "missing",
                    f"entries {expected}..{seq - 1} are missing"
                    if seq - 1 > expected
                    else f"entry {expected} is missing",
                )
            else:
                self._problem(seq, "order", f"seq {seq} appears out of order or twice")
            prev = row[17]
            computed = chain_hash(prev, canonical_entry(*row[:17]))
        if row[17] != prev:
            self._problem(
                seq,
                "prev_hash",
                f"prev_hash is not the hash of entry {seq - 1} (this entry or the one "
                "before it was altered, or entries were swapped)",
            )
        elif computed != row[18]:
            self._problem(seq, "hash", "content does not match its hash (entry altered)")
        for head in self.heads.get(seq, ()):
            if computed != head:
                lo = self._prev_cp_seq + 1
                self._problem(
                    lo,
                    "checkpoint_mismatch",
                    f"entries {lo}..{seq} differ from what the checkpoint at seq {seq} "
                    "signed (altered and re-chained)",
                )
        if seq in self.heads:
            self._prev_cp_seq = seq

    def finish(self) -> VerifyReport:
        """Close the run: checkpoints beyond the last entry mean truncation."""
        for seq in self._valid_cp_seqs:
            if seq > self._last_seq:
                self._problem(
                    self._last_seq + 1,
                    "truncated",
                    f"the checkpoint at seq {seq} signed entries the log no longer has "
                    f"(it ends at seq {self._last_seq})",
                )
                break
        problems = tuple(sorted(self._problems, key=lambda p: p.seq))
        covered = [s for s in self._valid_cp_seqs if s <= self._last_seq]
        return VerifyReport(
            entries=self._entries,
            first_seq=self._first_seq,
            last_seq=self._last_seq,
            head_hash=self._computed,
            checkpoints=self._cp_total,
            last_checkpoint_seq=covered[-1] if covered else 0,
            problems=problems,
            problem_count=self._count,
            notes=tuple(self._notes),
            valid_checkpoints=self._cp_valid,
        )


def _read_bundle_checkpoints(cp_dir: Path) -> tuple[list[Checkpoint], list[Problem]]:
    cps: list[Checkpoint] = []
    problems: list[Problem] = []
    for bin_path in sorted(cp_dir.glob("cp-*.bin")):
        stem = bin_path.name.removesuffix(".bin")
        data = bin_path.read_bytes()
        try:
            obj = json.loads(data)
            if obj.get("format") != CHECKPOINT_FORMAT:
                raise ValueError("unknown format")
            cps.append(
                Checkpoint(
                    seq=int(obj["seq"]),
                    head_hash=str(obj["head_hash"]),
                    time=str(obj["time"]),
                    gateway=str(obj["gateway"]),
                    signed_bytes=data,
                    signature=(cp_dir / f"{stem}.der").read_bytes(),
                    cert_pem=(cp_dir / f"{stem}.cert.pem").read_text(),
                )
            )
        except (ValueError, KeyError, TypeError, OSError) as exc:
            problems.append(Problem(0, "checkpoint_file", f"{bin_path.name}: {exc}"))
    return cps, problems


def verify_bundle(
    bundle: Path,
    *,
    trusted_certs: Sequence[x509.Certificate] | None = None,
    progress: Progress | None = None,
    trusted_cas: Sequence[x509.Certificate] | None = None,
) -> VerifyReport:
    """Verify an exported bundle offline: chain, checkpoints, manifest range.

    Certificates recorded inside the bundle count as in ``AuditLog.verify``.
    """
    try:
        manifest = json.loads((bundle / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise AuditError(f"{bundle}: not an audit bundle ({exc})", code="AUDIT_BUNDLE") from exc
    cps, file_problems = _read_bundle_checkpoints(bundle / "checkpoints")
    from_seq = int(manifest["from_seq"])
    to_seq = int(manifest["to_seq"])
    recorded = None
    if trusted_certs is not None or trusted_cas is not None:
        recorded = RecordedTrust(_bundle_cert_records(bundle / "entries.jsonl"), trusted_cas)
    verifier = ChainVerifier(
        cps, trusted_certs=trusted_certs, anchored=from_seq == 1, recorded=recorded
    )
    for p in file_problems:
        verifier._problem(p.seq, p.kind, p.message)
    total = int(manifest.get("entries", 0))
    done = 0
    rows: list[tuple[Any, ...]] = []
    with (bundle / "entries.jsonl").open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                rows.append(_row_from_json(line))
            except (ValueError, KeyError, TypeError) as exc:
                verifier._problem(
                    verifier._expected or from_seq, "unreadable", f"line {lineno}: {exc}"
                )
                continue
            if len(rows) >= CHUNK:
                verifier.feed(rows)
                done += len(rows)
                rows = []
                if progress is not None:
                    progress(done, total)
        verifier.feed(rows)
        if progress is not None:
            progress(done + len(rows), total)
    report = verifier.finish()
    extra: list[Problem] = []
    if report.entries and report.first_seq != from_seq:
        extra.append(Problem(from_seq, "missing", f"the bundle starts at seq {report.first_seq}"))
    if report.last_seq < to_seq:
        extra.append(
            Problem(
                report.last_seq + 1,
                "truncated",
                f"the manifest says the bundle ends at seq {to_seq}",
            )
        )
    notes = list(report.notes)
    if from_seq != 1:
        notes.append(
            f"the bundle starts at seq {from_seq}: its first prev_hash is taken as given; "
            "only checkpoints inside the bundle anchor the entries"
        )
    if extra:
        problems = tuple(sorted((*report.problems, *extra), key=lambda p: p.seq))
        return VerifyReport(
            **{
                **_report_fields(report),
                "problems": problems,
                "problem_count": report.problem_count + len(extra),
                "notes": tuple(notes),
            }
        )
    return VerifyReport(**{**_report_fields(report), "notes": tuple(notes)})


def _cp_fingerprint(cp: Checkpoint) -> bytes | None:
    try:
        return x509.load_pem_x509_certificate(cp.cert_pem.encode()).fingerprint(hashes.SHA256())
    except ValueError:
        return None


def _bundle_cert_records(path: Path) -> list[CertRecord]:
    """The certificate records among a bundle's entries (unreadable lines are skipped here)."""
    needle = f'"event":"{CERT_RECORDED}"'.encode()
    records: list[CertRecord] = []
    try:
        with path.open("rb") as fh:
            for line in fh:
                if needle not in line:
                    continue
                try:
                    obj = json.loads(line)
                    record = record_from(
                        int(obj["seq"]), obj["event"], obj.get("code"), obj["details"]
                    )
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue
                if record is not None:
                    records.append(record)
    except OSError:
        return []
    return records


def _report_fields(report: VerifyReport) -> dict[str, Any]:
    return {name: getattr(report, name) for name in VerifyReport.__dataclass_fields__}


_ROW_KEYS = (
    "seq",
    "time",
    "gateway",
    "event",
    "direction",
    "partner",
    "agreement",
    "message_type",
    "message_id",
    "correlation_id",
    "envelope_digest",
    "receipt_digest",
    "outcome",
    "code",
    "reason",
    "actor",
)


def _row_from_json(line: bytes) -> tuple[Any, ...]:
    obj: Mapping[str, Any] = json.loads(line)
    details = obj["details"]
    if not isinstance(details, dict):
        raise ValueError("details is not an object")
    values = [obj[k] for k in _ROW_KEYS]
    if type(values[0]) is not int:
        raise ValueError("seq is not an integer")
    for key, value in zip(_ROW_KEYS[1:], values[1:], strict=True):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{key} is not a string")
    for key in ("prev_hash", "hash"):
        if not isinstance(obj[key], str):
            raise ValueError(f"{key} is not a string")
    return (
        *values,
        canonical_json(details),
        obj["prev_hash"],
        obj["hash"],
    )


def _verify_txt(manifest: Mapping[str, Any], names: Sequence[str]) -> str:
    lines = [
        f"Audit bundle of gateway {manifest['gateway']}: entries {manifest['from_seq']}.."
        f"{manifest['to_seq']} ({manifest['entries']} entries), "
        f"exported {manifest['exported_at']}.",
        "",
        "1. With the gateway's own tool (no database needed):",
        "",
        "     maagw audit verify --bundle .",
        "",
        "2. Checkpoint signatures with plain openssl (run in this directory). Each checkpoint",
        "   has the exact signed bytes (.bin), the DER signature (.der), the signer's",
        "   certificate (.cert.pem) and its public key (.pub.pem, which you can re-derive with",
        "   `openssl x509 -in X.cert.pem -pubkey -noout`). Check the certificate is the",
        "   gateway's signing certificate (e.g. `openssl x509 -in X.cert.pem -noout -subject",
        "   -fingerprint -sha256`) — after a rotation, an earlier one: recorded in",
        "   entries.jsonl by a cert_recorded entry at or before the checkpoint's seq and issued",
        "   by the gateway's CA (`openssl verify -CAfile ca.pem X.cert.pem`) — then:",
        "",
    ]
    for name in names:
        lines.append(
            f"     openssl dgst -sha256 -verify checkpoints/{name}.pub.pem "
            f"-signature checkpoints/{name}.der checkpoints/{name}.bin"
        )
    if not names:
        lines.append("     (this range contains no checkpoint)")
    lines += [
        "",
        "   Each .bin is JSON {format, gateway, head_hash, seq, time}: the entry with that seq",
        "   in entries.jsonl must have exactly that hash.",
        "",
        "3. The hash chain, with any SHA-256 and JSON tool. Each line of entries.jsonl is an",
        "   entry plus its prev_hash and hash. Remove those two keys; serialise the rest as",
        "   RFC 8785 JSON (keys sorted, no whitespace, UTF-8); then",
        "       hash = sha256( prev_hash as 64 ASCII hex digits || those bytes )",
        "   and prev_hash of an entry is the hash of the entry before it (64 zeros for seq 1).",
        "   In Python:",
        "",
        "     python3 - <<'EOF'",
        "     import hashlib, json",
        "     prev = None",
        "     for line in open('entries.jsonl', 'rb'):",
        "         e = json.loads(line); h, p = e.pop('hash'), e.pop('prev_hash')",
        "         assert prev in (None, p), ('chain broken at', e['seq'])",
        "         c = json.dumps(e, sort_keys=True, separators=(',', ':'), ensure_ascii=False)",
        "         assert hashlib.sha256(p.encode() + c.encode()).hexdigest() == h, e['seq']",
        "         prev = h",
        "     print('chain OK')",
        "     EOF",
        "",
        "Entries after the last checkpoint in this bundle are vouched for by the chain only.",
        "manifest.json is not signed; the checkpoints are what a signature covers.",
        "",
    ]
    return "\n".join(lines)


async def iter_entries(log_: AuditLog, lo: int, hi: int) -> AsyncIterator[Entry]:
    """Entries ``lo..hi`` in seq order (for tools that stream)."""
    async for rows in log_._store.iter_rows(lo, hi, CHUNK):
        for r in rows:
            yield Entry.from_row(r)

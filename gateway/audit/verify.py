"""Verification of the hash chain and the signed checkpoints: ``ChainVerifier`` and its report."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gateway.audit.backend import (
    Checkpoint,
)
from gateway.audit.certs import RecordedTrust
from gateway.audit.chain import (
    GENESIS,
    canonical_entry,
    chain_hash,
    checkpoint_bytes,
)
from gateway.errors import SignatureError
from gateway.xml.signature import verify_detached_bytes

#: problems a report keeps (the count goes on)
MAX_PROBLEMS = 1_000


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


# ---------------------------------------------------------------------- verification


def check_signature(cert: x509.Certificate, signature: bytes, data: bytes) -> bool:
    """True when ``signature`` (DER; ECDSA or RSA PKCS#1 v1.5; SHA-256) covers ``data``."""
    try:
        verify_detached_bytes(data, signature, cert)
    except SignatureError:
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


def _cp_fingerprint(cp: Checkpoint) -> bytes | None:
    try:
        return x509.load_pem_x509_certificate(cp.cert_pem.encode()).fingerprint(hashes.SHA256())
    except ValueError:
        return None


def _report_fields(report: VerifyReport) -> dict[str, Any]:
    return {name: getattr(report, name) for name in VerifyReport.__dataclass_fields__}

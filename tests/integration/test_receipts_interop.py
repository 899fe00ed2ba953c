"""What the running gateways sign verifies with an independent tool: the ``xmlsec1`` command line.

XA sends a request to XB through both gateways, with ECDSA and with RSA signing keys.
The envelope XA sent (its outbox bytes), the evidence both sides kept, XB's
``accepted`` receipt and a ``rejected`` receipt must all verify with
``xmlsec1 --verify --trusted-pem <signer's CA>``, and fail once altered.
Needs the Debian package ``xmlsec1``; with ``CI`` set a missing tool fails the tests.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from pathlib import Path

import pytest
from test_inbound_security import back_office, link, running

from gateway.ca import authority
from gateway.config.models import Settings

NATIONAL = Path(__file__).resolve().parents[2] / "examples" / "national-json"


async def xmlsec1_verify(tool: str, trusted_ca: Path, document: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        tool,
        "--verify",
        "--trusted-pem",
        str(trusted_ca),
        str(document),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 30)
    return process.returncode or 0, out.decode(errors="replace")


def use_signing_key_type(root: Path, key_type: authority.KeyType) -> None:
    """Re-issue XA's and XB's signing certificates with ``key_type`` and re-pin them."""
    for gid, other in (("XA", "XB"), ("XB", "XA")):
        authority.issue(
            root / gid / "ca", "signing", "signing", root / gid / "certs", key_type=key_type
        )
        shutil.copy(
            root / gid / "certs" / "signing.pem",
            root / other / "partners" / "certs" / f"{gid}-signing.pem",
        )


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
async def test_envelopes_and_receipts_verify_in_xmlsec1(
    pair: dict[str, Settings], tmp_path: Path, xmlsec1: str, key_type: authority.KeyType
) -> None:
    """Envelope, evidence and both kinds of receipt verify in xmlsec1; tampered copies do not."""
    use_signing_key_type(tmp_path, key_type)
    out = tmp_path / "documents"
    out.mkdir()
    async with (
        running(pair["XB"]) as xb,
        running(pair["XA"]) as xa,
        back_office(pair["XA"]) as office_a,
        back_office(pair["XB"]) as office_b,
    ):
        mid = f"XA-RQ-{uuid.uuid4().hex[:12]}"
        await office_a.send("XB", (NATIONAL / "maa.request.json").read_bytes(), message_id=mid)
        assert len(await office_b.drain("maagw.inbound", want=1, timeout=10)) == 1
        assert len(await office_a.drain("maagw.events", want=1, timeout=10)) == 1
        stored = await xa.runtime.store.outbox_get(mid)
        assert stored is not None
        documents: dict[str, tuple[bytes, str]] = {"envelope-sent": (stored[0], "XA")}
        [delivered] = await xa.runtime.audit.search(event="delivered", message_id=mid)
        [received] = await xb.runtime.audit.search(event="receipt", message_id=mid)
        for name, audit, digest, signer in (
            ("receipt-kept-by-XA", xa.runtime.audit, delivered.receipt_digest, "XB"),
            ("receipt-kept-by-XB", xb.runtime.audit, received.receipt_digest, "XB"),
            ("envelope-kept-by-XB", xb.runtime.audit, received.envelope_digest, "XA"),
        ):
            assert digest is not None
            evidence = await audit.get_evidence(digest)
            assert evidence is not None
            documents[name] = (evidence, signer)
        assert xb.partner_port is not None
        async with link(tmp_path, "XA", "XB", xb.partner_port) as as_xa:
            rejection = await as_xa.post(stored[0].replace(b"<MessageId>", b"<MessageId>x"))
        assert rejection.status == 400
        documents["rejection-receipt"] = (rejection.body, "XB")

    method = {"ec": b"xmldsig-more#ecdsa-sha256", "rsa": b"xmldsig-more#rsa-sha256"}[key_type]
    assert all(method in data for data, _ in documents.values())
    for name, (data, signer) in documents.items():
        ca = tmp_path / signer / "ca" / "ca.pem"
        good = out / f"{name}.xml"
        good.write_bytes(data)
        code, output = await xmlsec1_verify(xmlsec1, ca, good)
        assert code == 0 and "OK" in output, f"{name}: {output}"
        bad = out / f"{name}-altered.xml"
        bad.write_bytes(data.replace(b"<Sender>", b"<Sender>X", 1))
        assert data != bad.read_bytes()
        code, output = await xmlsec1_verify(xmlsec1, ca, bad)
        assert code != 0, f"{name} altered still verifies: {output}"

"""Signing-certificate rotation as docs/certificates.md describes it, over real TLS and RabbitMQ.

XA rotates its signing certificate with `maagw certs rotate`, XB imports the new one
with `maagw certs import-partner`, XA switches to it with a reload, messages keep
flowing, and `maagw audit verify` still accepts XA's whole log.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

import aio_pika

from gateway import pem
from gateway.audit.log import AuditLog
from gateway.config.models import Settings
from gateway.relay.back_office import BackOffice
from gateway.service.gateway import Gateway

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REQUEST = (EXAMPLES / "national-json" / "maa.request.json").read_bytes()


async def maagw(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``maagw ARGS`` as an operator would (a child process); (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def delivered(bo_a: BackOffice, bo_b: BackOffice) -> bool:
    """Send one request XA -> XB; True when XB's back office got it and XA heard 'delivered'."""
    mid = str(uuid.uuid4())
    await bo_a.send("XB", REQUEST, message_id=mid)
    got = await bo_b.drain("maagw.inbound", want=1, timeout=30, idle=1.0)
    events = [json.loads(e.body) for e in await bo_a.drain("maagw.events", want=1, timeout=30)]
    return [m.message_id for m in got] == [mid] and [
        (e["message_id"], e["status"]) for e in events
    ] == [(mid, "delivered")]


async def test_rotate_exchange_and_audit_verify_exit_0(
    tmp_path: Path, pair: dict[str, Settings]
) -> None:
    """After `certs rotate`, the partner's import and the switch, messages flow and `audit verify` exits 0."""
    xa_conf, xb_conf = pair["XA"].path, pair["XB"].path
    xa_dir, xb_dir = xa_conf.parent, xb_conf.parent
    xa, xb = Gateway(pair["XA"]), Gateway(pair["XB"])
    await xa.start()
    await xb.start()
    conn = await aio_pika.connect_robust(pair["XA"].broker.url)
    try:
        bo_a = await BackOffice(pair["XA"], conn).open()
        bo_b = await BackOffice(pair["XB"], conn).open()
        assert await delivered(bo_a, bo_b)
        await xa.runtime.audit.checkpoint()  # the old certificate signs a checkpoint

        # 1. rotate: the configuration is found through MAAGW_CONFIG, no --config needed
        code, out, err = await maagw(
            "certs", "rotate", "--ca", str(xa_dir / "ca"), "--name", "signing",
            "--out", str(xa_dir / "certs"), env={"MAAGW_CONFIG": str(xa_conf)},
        )  # fmt: skip
        assert code == 0, err
        new_cert = next(Path(p) for p in out.split() if p.endswith(".pem"))
        assert "recorded: the new signing certificate in the audit log of XA" in err
        assert "XB (https://127.0.0.1:" in err and "import-partner --id XA" in err

        # 2. the partner imports the new certificate (both accepted) and reloads
        code, _, err = await maagw(
            "certs", "import-partner", "--id", "XA",
            "--ca", str(xb_dir / "partners" / "certs" / "XA-ca.pem"),
            "--signing-cert", str(new_cert), "--out", str(xb_dir / "partners"),
        )  # fmt: skip
        assert code == 0, err
        assert (await xb.reload("op:xb")).ok

        # 3. XA switches to the new key
        text = xa_conf.read_text()
        xa_conf.write_text(
            text.replace('cert = "certs/signing.pem"', f'cert = "certs/{new_cert.name}"').replace(
                'key = "certs/signing.key"', f'key = "certs/{new_cert.stem}.key"'
            )
        )
        assert (await xa.reload("op:xa")).ok
        assert xa.runtime.signer.cert == pem.load_cert(new_cert)
        assert await delivered(bo_a, bo_b)
    finally:
        await conn.close()
        await xa.stop()
        await xb.stop()

    audit = await AuditLog.open(pair["XA"].audit_url, gateway_id="XA", create=False)
    try:
        signers = {cp.cert_pem for cp in await audit.checkpoints()}
    finally:
        await audit.close()
    assert len(signers) == 2  # both certificates signed checkpoints

    code, out, err = await maagw("audit", "verify", "--config", str(xa_conf))
    assert code == 0, out + err
    assert "OK: chain and checkpoints verify" in out
    assert "(all valid), last valid at seq" in out


async def test_the_gateway_records_its_signing_certificate_once(pair: dict[str, Settings]) -> None:
    """Starting records the signing certificate in the audit log; starting again does not record it twice."""
    for _ in range(2):
        xa = Gateway(pair["XA"])
        await xa.start()
        await xa.stop()
    audit = await AuditLog.open(pair["XA"].audit_url, gateway_id="XA", create=False)
    try:
        records = await audit.cert_records()
    finally:
        await audit.close()
    signing = pem.load_cert(pair["XA"].signing.cert)
    assert [r.sha256 for r in records] == [pem.cert_sha256(signing)]
    assert records[0].seq == 1  # before anything else, so before any checkpoint it signs

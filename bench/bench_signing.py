"""Signs/s and verifies/s of a 3 KB envelope-like document on one core.

Run: ``.venv/bin/python bench/bench_signing.py [--seconds 3] [--rsa]``

sign   = parse the unsigned bytes + ``Signer.sign`` (template, ECDSA, serialise)
verify = ``signing.verify(bytes, pins)``: safe parse, strict profile checks, xmlsec
         verification with the cached pinned key, and the exc-C14N document digest.
signxml is measured too when it happens to be installed (it is not a dependency).
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import metadata

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from lxml import etree

from gateway.xml import signature as signing


def envelope_bytes(size: int = 3 * 1024) -> bytes:
    """An unsigned envelope-like document of about ``size`` bytes once signed."""
    items = []
    i = 0
    body = b""
    while True:
        items.append(
            f"<Item><Line>{i}</Line><Code>8471300000</Code><Goods>laptop computers, "
            f"portable</Goods><Mass>12.5</Mass></Item>".encode()
        )
        body = b"".join(items)
        if len(body) > size - 1900:  # room for header and the ECDSA signature with cert
            break
        i += 1
    return (
        b'<Envelope xmlns="urn:maagw:envelope:1" version="1"><Header>'
        b"<MessageId>7f1c2a9e-1d1b-4f43-a0c8-2a5b2e7f9b11</MessageId><Sender>XA</Sender>"
        b"<Receiver>XB</Receiver><Agreement>XA-XB-MAA-2024</Agreement>"
        b"<MessageType>maa.request</MessageType><Created>2026-01-02T03:04:05.000Z</Created>"
        b"<DataCategories><Category>customs</Category></DataCategories>"
        b"<PayloadFormat>maa-xml</PayloadFormat></Header>"
        b'<Payload mediaType="application/xml" encoding="xml">'
        b'<Request xmlns="urn:example:maa">' + body + b"</Request></Payload></Envelope>"
    )


def identity(kind: str) -> signing.Signer:
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        ec.generate_private_key(ec.SECP256R1())
        if kind == "ec"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"bench {kind}")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return signing.Signer(key, cert)


def sign_once(signer: signing.Signer, unsigned: bytes) -> bytes:
    return signer.sign(etree.fromstring(unsigned))


def rate(func: Callable[[], object], seconds: float) -> float:
    func()  # warm-up (caches, first-use costs)
    count, started = 0, time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(50):
            func()
        count += 50
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rsa", action="store_true", help="also measure RSA-2048")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    unsigned = envelope_bytes()
    print(f"python-xmlsec {metadata.version('xmlsec')}, libxml2 {etree.LIBXML_VERSION}")
    for kind in ["ec", "rsa"] if args.rsa else ["ec"]:
        signer = identity(kind)
        signed = signer.sign(etree.fromstring(unsigned))
        pins = [signer.cert]
        signs = rate(functools.partial(sign_once, signer, unsigned), args.seconds)
        verifies = rate(functools.partial(signing.verify, signed, pins), args.seconds)
        label = "ECDSA P-256" if kind == "ec" else "RSA-2048"
        print(
            f"{label:12} document {len(signed)} bytes: "
            f"{signs:,.0f} signs/s, {verifies:,.0f} verifies/s (one core, gateway.signing)"
        )
    try:
        import signxml  # type: ignore[import-not-found]  # optional, not a dependency
    except ImportError:
        print("signxml not installed: skipped")
        return
    signer = identity("ec")
    key_pem = signer._private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_pem = signer.cert.public_bytes(serialization.Encoding.PEM)
    sx = signxml.XMLSigner(
        signature_algorithm="ecdsa-sha256",
        digest_algorithm="sha256",
        c14n_algorithm="http://www.w3.org/2001/10/xml-exc-c14n#",
    )
    doc = etree.tostring(sx.sign(etree.fromstring(unsigned), key=key_pem, cert=cert_pem))
    signs = rate(lambda: sx.sign(etree.fromstring(unsigned), key=key_pem, cert=cert_pem), 2)
    verifies = rate(lambda: signxml.XMLVerifier().verify(doc, x509_cert=cert_pem), 2)
    print(f"signxml      ECDSA P-256: {signs:,.0f} signs/s, {verifies:,.0f} verifies/s")


if __name__ == "__main__":
    main()

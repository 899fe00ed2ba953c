"""Interop of gateway/signing.py with an independent implementation: the xmlsec1 command line.

Needs the Debian package ``xmlsec1`` (1.2.37 on this machine). The tests skip only on a
developer machine without it; with ``CI`` or ``MAAGW_REQUIRE_SERVICES`` set they fail instead.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from lxml import etree

from gateway.errors import SignatureError
from gateway.xml import signature as signing

ENVELOPE = b"""<Envelope xmlns="urn:maagw:envelope:1"><Header><MessageId>m-42</MessageId>\
<Sender>XA</Sender><Receiver>XB</Receiver></Header><Payload><Text>interop</Text></Payload>\
</Envelope>"""

TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="urn:maagw:envelope:1"><Header><MessageId>m-43</MessageId>\
<Sender>XA</Sender><Receiver>XB</Receiver></Header><Payload><Text>from xmlsec1</Text></Payload>\
<ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#">
<ds:SignedInfo>
<ds:CanonicalizationMethod Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>
<ds:SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#{method}"/>
<ds:Reference URI="">
<ds:Transforms>
<ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>
<ds:Transform Algorithm="http://www.w3.org/2001/10/xml-exc-c14n#"/>
</ds:Transforms>
<ds:DigestMethod Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"/>
<ds:DigestValue/>
</ds:Reference>
</ds:SignedInfo>
<ds:SignatureValue/>
<ds:KeyInfo><ds:X509Data/></ds:KeyInfo>
</ds:Signature></Envelope>
"""

METHODS = {"ec": "ecdsa-sha256", "rsa": "rsa-sha256"}


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module", params=["ec", "rsa"])
def pki(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, object]:
    """A CA and a signing leaf under it (ECDSA P-256 or RSA 2048), written as PEM files."""
    kind: str = request.param
    directory = tmp_path_factory.mktemp(f"pki-{kind}")
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Interop CA"))
        .issuer_name(_name("Interop CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        ec.generate_private_key(ec.SECP256R1())
        if kind == "ec"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"XA envelope signing {kind}"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return {
        "kind": kind,
        "cert": cert,
        "signer": signing.Signer(key, cert),
        "ca_pem": _write(directory / "ca.pem", ca_cert.public_bytes(pem)),
        "cert_pem": _write(directory / "cert.pem", cert.public_bytes(pem)),
        "key_pem": _write(
            directory / "key.pem",
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        ),
    }


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args], capture_output=True, text=True, check=False, timeout=60
    )


@pytest.mark.parametrize("trust", ["--trusted-pem", "--pubkey-cert-pem"])
def test_gateway_signature_verifies_in_xmlsec1(
    xmlsec1: str, pki: dict[str, object], tmp_path: Path, trust: str
) -> None:
    """Signer's documents verify in xmlsec1 (CA trust or cert key); tampered ones do not."""
    signer = pki["signer"]
    assert isinstance(signer, signing.Signer)
    signed = _write(tmp_path / "signed.xml", signer.sign(etree.fromstring(ENVELOPE)))
    anchor = pki["ca_pem"] if trust == "--trusted-pem" else pki["cert_pem"]
    result = run(xmlsec1, "--verify", trust, anchor, signed)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout + result.stderr
    tampered = _write(
        tmp_path / "tampered.xml", signed.read_bytes().replace(b"interop", b"interlop")
    )
    assert run(xmlsec1, "--verify", trust, anchor, tampered).returncode != 0


def test_xmlsec1_signature_verifies_in_gateway(
    xmlsec1: str, pki: dict[str, object], tmp_path: Path
) -> None:
    """A document signed by xmlsec1 from a template verifies strictly with that cert pinned."""
    template = _write(
        tmp_path / "template.xml", TEMPLATE.format(method=METHODS[str(pki["kind"])]).encode()
    )
    out = tmp_path / "out.xml"
    result = run(
        xmlsec1,
        "--sign",
        "--privkey-pem",
        f"{pki['key_pem']},{pki['cert_pem']}",
        "--output",
        out,
        template,
    )
    assert result.returncode == 0, result.stderr
    cert = pki["cert"]
    assert isinstance(cert, x509.Certificate)
    verified = signing.verify(out.read_bytes(), [cert])
    assert verified.signer == cert
    assert (
        verified.root.findtext("{urn:maagw:envelope:1}Header/{urn:maagw:envelope:1}MessageId")
        == "m-43"
    )
    with pytest.raises(SignatureError) as info:
        signing.verify(out.read_bytes().replace(b"from xmlsec1", b"from mallory"), [cert])
    assert info.value.code == "SIG_INVALID"

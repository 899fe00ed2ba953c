"""Tests for gateway/xml/signature.py: signing, the strict and interop profiles, and attacks."""

from __future__ import annotations

import base64
import copy
import hashlib
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509.oid import NameOID
from lxml import etree

from gateway.errors import ConfigError, EnvelopeError, SignatureError
from gateway.xml import safe as xmlsafe
from gateway.xml import signature as signing

DS = signing.DS_NS
NS = {"ds": DS, "e": "urn:maagw:envelope:1"}
VECTORS = Path(__file__).resolve().parents[2] / "data" / "xmldsig-interop"
ENVELOPE = b"""<Envelope xmlns="urn:maagw:envelope:1"><Header><MessageId>m-1</MessageId>\
<Sender>XA</Sender><Receiver>XB</Receiver></Header><Payload><Amount>100</Amount>\
<Text>hello world</Text></Payload></Envelope>"""
NOW = datetime.now(UTC)


# --- key material, generated per session ---------------------------------------------------


@dataclass(frozen=True)
class Identity:
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    cert: x509.Certificate


def make_identity(
    name: str,
    *,
    kind: str = "ec",
    issuer: Identity | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    ca: bool = False,
) -> Identity:
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        ec.generate_private_key(ec.SECP256R1())
        if kind == "ec"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - timedelta(days=1))
        .not_valid_after(not_after or NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    return Identity(key, cert)


def write_identity(identity: Identity, directory: Path, name: str) -> tuple[Path, Path]:
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    key_path.write_bytes(
        identity.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(identity.cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.fixture(scope="session")
def xa() -> Identity:
    return make_identity("XA signing")


@pytest.fixture(scope="session")
def xa_rsa() -> Identity:
    return make_identity("XA signing RSA", kind="rsa")


@pytest.fixture(scope="session")
def other() -> Identity:
    return make_identity("someone else")


@pytest.fixture(scope="session")
def signer(xa: Identity) -> signing.Signer:
    return signing.Signer(xa.key, xa.cert)


@pytest.fixture
def signed(signer: signing.Signer) -> bytes:
    return signer.sign(etree.fromstring(ENVELOPE))


def custom_sign(
    root: etree._Element,
    identity: Identity,
    *,
    uri: str = "",
    parent: etree._Element | None = None,
    id_attr: tuple[etree._Element, str] | None = None,
) -> bytes:
    """Sign with libxmlsec1 directly, for shapes the gateway's Signer never makes."""
    method = (
        xmlsec.constants.TransformEcdsaSha256
        if isinstance(identity.key, ec.EllipticCurvePrivateKey)
        else xmlsec.constants.TransformRsaSha256
    )
    sig = xmlsec.template.create(root, xmlsec.constants.TransformExclC14N, method, ns="ds")
    (root if parent is None else parent).append(sig)
    ref = xmlsec.template.add_reference(sig, xmlsec.constants.TransformSha256, uri=uri)
    xmlsec.template.add_transform(ref, xmlsec.constants.TransformEnveloped)
    xmlsec.template.add_transform(ref, xmlsec.constants.TransformExclC14N)
    xmlsec.template.add_x509_data(xmlsec.template.ensure_key_info(sig))
    ctx = xmlsec.SignatureContext()
    pem = identity.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key = xmlsec.Key.from_memory(pem, xmlsec.constants.KeyDataFormatPem, None)
    key.load_cert_from_memory(
        identity.cert.public_bytes(serialization.Encoding.PEM),
        xmlsec.constants.KeyDataFormatCertPem,
    )
    ctx.key = key
    if id_attr is not None:
        ctx.register_id(*id_attr)
    ctx.sign(sig)
    return bytes(etree.tostring(root.getroottree()))


def refused(data: bytes | etree._Element, pinned: list[x509.Certificate], **kw: object) -> str:
    """Return the code verify() refuses with (failing the test if it accepts)."""
    with pytest.raises((SignatureError, EnvelopeError)) as info:
        signing.verify(data, pinned, **kw)  # type: ignore[arg-type]
    code: str = info.value.code
    return code


# --- signing --------------------------------------------------------------------------------


def test_xmlsec_and_lxml_share_one_libxml2(xa: Identity) -> None:
    """python-xmlsec and lxml run on the same libxml2, and signing an lxml tree works."""
    assert xmlsec.get_libxml_version() == etree.LIBXML_VERSION
    root = etree.fromstring(ENVELOPE)
    signing.Signer(xa.key, xa.cert).sign(root)
    assert root[-1].tag == f"{{{DS}}}Signature"


@pytest.mark.parametrize(
    ("kind", "method"),
    [
        ("ec", "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256"),
        ("rsa", "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"),
    ],
)
def test_sign_produces_the_gateway_profile(kind: str, method: str) -> None:
    """The signature is the root's last child, with URI="", exc-c14n, SHA-256 and the cert."""
    identity = make_identity(f"profile {kind}", kind=kind)
    data = signing.Signer(identity.key, identity.cert).sign(etree.fromstring(ENVELOPE))
    root = etree.fromstring(data)
    sig = root[-1]
    assert sig.tag == f"{{{DS}}}Signature"
    assert sig.xpath("ds:SignedInfo/ds:SignatureMethod/@Algorithm", namespaces=NS) == [method]
    assert sig.xpath("ds:SignedInfo/ds:CanonicalizationMethod/@Algorithm", namespaces=NS) == [
        signing.EXC_C14N
    ]
    assert sig.xpath("ds:SignedInfo/ds:Reference/@URI", namespaces=NS) == [""]
    assert sig.xpath("ds:SignedInfo/ds:Reference/ds:Transforms/*/@Algorithm", namespaces=NS) == [
        signing.ENVELOPED,
        signing.EXC_C14N,
    ]
    (b64,) = sig.xpath("ds:KeyInfo/ds:X509Data/ds:X509Certificate/text()", namespaces=NS)
    assert (
        x509.load_der_x509_certificate(__import__("base64").b64decode("".join(b64.split())))
        == identity.cert
    )
    verified = signing.verify(data, [identity.cert])
    assert verified.signer == identity.cert


def test_verify_returns_the_verified_root_signer_and_digest(signed: bytes, xa: Identity) -> None:
    """verify returns the document root, the pinned cert and the exc-c14n digest of it all."""
    verified = signing.verify(signed, [xa.cert])
    assert verified.root.getparent() is None
    assert verified.root.findtext("e:Header/e:MessageId", namespaces=NS) == "m-1"
    assert verified.signer == xa.cert
    c14n = etree.tostring(etree.fromstring(signed), method="c14n", exclusive=True)
    assert verified.digest == "sha256:" + hashlib.sha256(c14n).hexdigest()
    assert verified.digest == signing.document_digest(verified.root)


def test_digest_covers_the_signature(signer: signing.Signer) -> None:
    """Two signatures of the same envelope (ECDSA is randomised) give different digests."""
    first = signing.verify(signer.sign(etree.fromstring(ENVELOPE)), [signer.cert]).digest
    second = signing.verify(signer.sign(etree.fromstring(ENVELOPE)), [signer.cert]).digest
    assert first != second


def test_verify_accepts_an_already_parsed_root(signed: bytes, xa: Identity) -> None:
    """verify takes a safely parsed root element as well as bytes, and returns that element."""
    root = xmlsafe.parse(signed)
    assert signing.verify(root, [xa.cert]).root is root


def test_verify_refuses_a_non_root_element(signed: bytes, xa: Identity) -> None:
    """Passing an inner element is a programming error, not a silent partial check."""
    with pytest.raises(ValueError):
        signing.verify(xmlsafe.parse(signed)[0], [xa.cert])


def test_sign_refuses_an_already_signed_document(signer: signing.Signer, signed: bytes) -> None:
    """Signing twice would produce two Signatures, which the strict profile refuses."""
    with pytest.raises(SignatureError) as info:
        signer.sign(etree.fromstring(signed))
    assert info.value.code == "SIG_PROFILE"


def test_from_files_loads_once_and_checks_the_pair(
    tmp_path: Path, xa: Identity, other: Identity
) -> None:
    """from_files loads a matching PEM pair (also encrypted) and refuses a mismatched one."""
    key_path, cert_path = write_identity(xa, tmp_path, "xa")
    assert signing.Signer.from_files(key_path, cert_path).cert == xa.cert
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(
        xa.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    assert signing.Signer.from_files(encrypted, cert_path, b"secret").cert == xa.cert
    _, other_cert = write_identity(other, tmp_path, "other")
    with pytest.raises(ConfigError):
        signing.Signer.from_files(key_path, other_cert)
    with pytest.raises(ConfigError):
        signing.Signer.from_files(tmp_path / "missing.key", cert_path)


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_detached_signature_verifies_with_openssl(tmp_path: Path, kind: str) -> None:
    """sign_detached_bytes makes a DER SHA-256 signature that openssl dgst -verify accepts."""
    identity = make_identity(f"detached {kind}", kind=kind)
    data = b"checkpoint 42 sha256:abcdef"
    sig = signing.Signer(identity.key, identity.cert).sign_detached_bytes(data)
    signing.verify_detached_bytes(data, sig, identity.cert)
    with pytest.raises(SignatureError):
        signing.verify_detached_bytes(data + b"!", sig, identity.cert)
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    (tmp_path / "data").write_bytes(data)
    (tmp_path / "sig.der").write_bytes(sig)
    (tmp_path / "pub.pem").write_bytes(
        identity.cert.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    result = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", "pub.pem", "-signature", "sig.der", "data"],
        cwd=tmp_path,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_cert_fingerprint_is_sha256_of_der(xa: Identity) -> None:
    """The fingerprint is sha256 over the DER certificate."""
    der = xa.cert.public_bytes(serialization.Encoding.DER)
    assert signing.cert_fingerprint(xa.cert) == "sha256:" + hashlib.sha256(der).hexdigest()


def test_verification_keys_are_loaded_once_per_certificate(signed: bytes, xa: Identity) -> None:
    """Repeated verification against one pin reuses the loaded xmlsec key."""
    signing.verify(signed, [xa.cert])
    before = signing._verification_key.cache_info()
    signing.verify(signed, [xa.cert])
    after = signing._verification_key.cache_info()
    assert after.hits == before.hits + 1
    assert after.misses == before.misses


# --- certificates ---------------------------------------------------------------------------


def test_rotation_accepts_old_and_new_pins(xa: Identity, other: Identity) -> None:
    """During a rotation overlap both the old and the new signing certificate are accepted."""
    for identity in (xa, other):
        data = signing.Signer(identity.key, identity.cert).sign(etree.fromstring(ENVELOPE))
        assert signing.verify(data, [xa.cert, other.cert]).signer == identity.cert


def test_unpinned_certificate_is_refused(signed: bytes, other: Identity) -> None:
    """A valid signature by a certificate that is not pinned is SIG_CERT_UNTRUSTED."""
    assert refused(signed, [other.cert]) == "SIG_CERT_UNTRUSTED"
    assert refused(signed, [other.cert], profile="interop") == "SIG_CERT_UNTRUSTED"


def test_pinned_cert_in_keyinfo_does_not_lend_its_trust(xa: Identity, other: Identity) -> None:
    """Putting the pinned certificate in KeyInfo of a signature made by another key fails."""
    data = signing.Signer(other.key, other.cert).sign(etree.fromstring(ENVELOPE))
    root = etree.fromstring(data)
    (node,) = root.xpath("//ds:X509Certificate", namespaces=NS)
    node.text = __import__("base64").b64encode(xa.cert.public_bytes(serialization.Encoding.DER))
    assert refused(etree.tostring(root), [xa.cert]) == "SIG_INVALID"


@pytest.mark.parametrize(
    ("at", "reason"),
    [
        (NOW + timedelta(days=60), "expired"),
        (NOW - timedelta(days=60), "not yet valid"),
    ],
)
def test_certificate_must_be_valid_at_the_signing_time(
    signed: bytes, xa: Identity, at: datetime, reason: str
) -> None:
    """Outside its validity period the pinned certificate is refused, saying why."""
    with pytest.raises(SignatureError) as info:
        signing.verify(signed, [xa.cert], at=at)
    assert info.value.code == "SIG_CERT_UNTRUSTED"
    assert reason in info.value.reason


def test_interop_accepts_a_leaf_issued_by_a_pinned_ca() -> None:
    """With profile interop a pinned CA vouches for the leaf in KeyInfo; strict does not."""
    ca = make_identity("partner CA", ca=True)
    leaf = make_identity("partner signer", issuer=ca)
    data = signing.Signer(leaf.key, leaf.cert).sign(etree.fromstring(ENVELOPE))
    assert signing.verify(data, [ca.cert], profile="interop").signer == leaf.cert
    assert refused(data, [ca.cert]) == "SIG_CERT_UNTRUSTED"
    stranger = make_identity("other CA", ca=True)
    assert refused(data, [stranger.cert], profile="interop") == "SIG_CERT_UNTRUSTED"


# --- attacks --------------------------------------------------------------------------------


def test_no_signature_is_sig_missing(xa: Identity) -> None:
    """An unsigned document is SIG_MISSING."""
    assert refused(ENVELOPE, [xa.cert]) == "SIG_MISSING"


def test_payload_altered_after_signing_is_invalid(signed: bytes, xa: Identity) -> None:
    """Changing one value after signing breaks the signature."""
    tampered = signed.replace(b"<Amount>100</Amount>", b"<Amount>900</Amount>")
    assert tampered != signed
    assert refused(tampered, [xa.cert]) == "SIG_INVALID"
    assert refused(tampered, [xa.cert], profile="interop") == "SIG_INVALID"


def test_signature_value_altered_is_invalid(signed: bytes, xa: Identity) -> None:
    """A flipped byte in SignatureValue is SIG_INVALID."""
    root = etree.fromstring(signed)
    (value,) = root.xpath("//ds:SignatureValue", namespaces=NS)
    raw = bytearray(__import__("base64").b64decode("".join(value.text.split())))
    raw[10] ^= 0x01
    value.text = __import__("base64").b64encode(bytes(raw)).decode()
    assert refused(etree.tostring(root), [xa.cert]) == "SIG_INVALID"


def test_signed_document_moved_under_a_decoy_root_is_wrapping(signed: bytes, xa: Identity) -> None:
    """The signed envelope wrapped inside a decoy envelope is refused as SIG_WRAPPING."""
    original = etree.fromstring(signed)
    decoy = etree.fromstring(ENVELOPE.replace(b"<Amount>100", b"<Amount>999"))
    wrapper = etree.SubElement(decoy, "{urn:maagw:envelope:1}Wrapper")
    wrapper.append(original)
    assert refused(etree.tostring(decoy), [xa.cert]) == "SIG_WRAPPING"
    # interop allows the Signature anywhere inside what URI="" covers: the digest fails.
    assert refused(etree.tostring(decoy), [xa.cert], profile="interop") == "SIG_INVALID"


def test_signature_moved_from_root_into_payload_is_wrapping(signed: bytes, xa: Identity) -> None:
    """A Signature that is not a direct child of the root is refused as SIG_WRAPPING."""
    root = etree.fromstring(signed)
    sig = root[-1]
    root.find("e:Payload", NS).append(sig)
    assert refused(etree.tostring(root), [xa.cert]) == "SIG_WRAPPING"


def test_second_element_with_the_same_id_is_wrapping(xa: Identity) -> None:
    """An ID-referenced signature plus a decoy carrying the same ID is refused by both profiles."""
    root = etree.fromstring(ENVELOPE.replace(b"<Envelope ", b'<Envelope Id="msg" '))
    data = custom_sign(root, xa, uri="#msg", id_attr=(root, "Id"))
    assert signing.verify(data, [xa.cert], profile="interop").root.get("Id") == "msg"
    attacked = etree.fromstring(data)
    decoy = etree.fromstring(ENVELOPE.replace(b"<Envelope ", b'<Envelope Id="msg" '))
    attacked.insert(0, decoy)
    assert refused(etree.tostring(attacked), [xa.cert], profile="interop") == "SIG_WRAPPING"
    # strict never follows an ID reference at all
    assert refused(etree.tostring(attacked), [xa.cert]) == "SIG_PROFILE"


def test_duplicate_ids_in_a_strictly_signed_document_are_wrapping(
    signer: signing.Signer, xa: Identity
) -> None:
    """A decoy element that repeats an ID of the signed envelope is SIG_WRAPPING in strict."""
    root = etree.fromstring(ENVELOPE.replace(b"<Payload>", b'<Payload Id="p1">'))
    attacked = etree.fromstring(signer.sign(root))
    decoy = etree.SubElement(attacked.find("e:Header", NS), "{urn:maagw:envelope:1}Payload")
    decoy.set("Id", "p1")
    assert refused(etree.tostring(attacked), [xa.cert]) == "SIG_WRAPPING"


def test_signature_pointing_at_a_decoy_by_id(xa: Identity) -> None:
    """A signature over an inner decoy element: strict refuses; interop returns only the decoy."""
    root = etree.fromstring(ENVELOPE)
    decoy = etree.SubElement(root, "{urn:maagw:envelope:1}Signed", Id="decoy")
    etree.SubElement(decoy, "{urn:maagw:envelope:1}Amount").text = "1"
    data = custom_sign(root, xa, uri="#decoy", parent=decoy, id_attr=(decoy, "Id"))
    assert refused(data, [xa.cert]) == "SIG_PROFILE"
    verified = signing.verify(data, [xa.cert], profile="interop")
    assert verified.root.get("Id") == "decoy"
    assert verified.root.getparent() is not None


def test_a_second_signature_is_refused(signer: signing.Signer, xa: Identity) -> None:
    """A document with two Signatures is refused even if both are valid."""
    inner = etree.fromstring(signer.sign(etree.fromstring(ENVELOPE)))
    root = etree.fromstring(ENVELOPE)
    root.find("e:Payload", NS).append(inner)
    data = custom_sign(root, xa)
    assert refused(data, [xa.cert]) == "SIG_PROFILE"
    assert refused(data, [xa.cert], profile="interop") == "SIG_PROFILE"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        pytest.param(
            b'<!DOCTYPE a [<!ENTITY b "bb"><!ENTITY c "&b;&b;&b;&b;">]><a>&c;</a>',
            "XML_UNSAFE",
            id="billion-laughs",
        ),
        pytest.param(
            b'<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>',
            "XML_UNSAFE",
            id="external-entity",
        ),
        pytest.param(b"<a>" * 10_000 + b"</a>" * 10_000, "XML_UNSAFE", id="deep-10000"),
        pytest.param(b"<a>" + b"x" * (50 * 1024 * 1024) + b"</a>", "SIZE_LIMIT", id="50MiB"),
    ],
)
def test_hostile_xml_is_refused_before_verification(xa: Identity, body: bytes, code: str) -> None:
    """verify parses bytes safely: hostile documents fail with their code, without a crash."""
    assert refused(body, [xa.cert]) == code


def test_comment_inside_a_signed_text_node(signed: bytes, xa: Identity) -> None:
    """A comment inserted in signed text still verifies and the text reads whole."""
    tampered = signed.replace(b"hello world", b"hello<!-- inserted --> world")
    assert tampered != signed
    verified = signing.verify(tampered, [xa.cert])
    text = verified.root.find("e:Payload/e:Text", NS)
    assert text.text == "hello"
    assert xmlsafe.text_of(text) == "hello world"


# --- profile: mutations of SignedInfo are judged before any cryptography --------------------

MORE = "http://www.w3.org/2001/04/xmldsig-more#"
DSIG = "http://www.w3.org/2000/09/xmldsig#"


def _set(xpath: str, attribute: str, value: str) -> Callable[[etree._Element], None]:
    def mutate(root: etree._Element) -> None:
        for node in root.xpath(xpath, namespaces=NS):
            node.set(attribute, value)

    return mutate


def _add_transform(uri: str) -> Callable[[etree._Element], None]:
    def mutate(root: etree._Element) -> None:
        (transforms,) = root.xpath("//ds:Transforms", namespaces=NS)
        etree.SubElement(transforms, f"{{{DS}}}Transform", Algorithm=uri)

    return mutate


def _duplicate(xpath: str) -> Callable[[etree._Element], None]:
    def mutate(root: etree._Element) -> None:
        (node,) = root.xpath(xpath, namespaces=NS)
        node.addnext(copy.deepcopy(node))

    return mutate


def _append_to_signature(tag: str) -> Callable[[etree._Element], None]:
    def mutate(root: etree._Element) -> None:
        (sig,) = root.xpath("//ds:Signature", namespaces=NS)
        etree.SubElement(sig, f"{{{DS}}}{tag}")

    return mutate


SIGMETHOD = "//ds:SignatureMethod"
DIGEST = "//ds:DigestMethod"
C14N = "//ds:CanonicalizationMethod"


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        pytest.param(
            _set(SIGMETHOD, "Algorithm", DSIG + "rsa-sha1"), "SIG_ALGORITHM", id="rsa-sha1"
        ),
        pytest.param(_set(SIGMETHOD, "Algorithm", MORE + "rsa-md5"), "SIG_ALGORITHM", id="rsa-md5"),
        pytest.param(_set(SIGMETHOD, "Algorithm", DSIG + "dsa-sha1"), "SIG_ALGORITHM", id="dsa"),
        pytest.param(
            _set(SIGMETHOD, "Algorithm", MORE + "hmac-sha256"), "SIG_ALGORITHM", id="hmac"
        ),
        pytest.param(
            _set(SIGMETHOD, "Algorithm", MORE + "ecdsa-sha1"), "SIG_ALGORITHM", id="ecdsa-sha1"
        ),
        pytest.param(_set(DIGEST, "Algorithm", DSIG + "sha1"), "SIG_ALGORITHM", id="digest-sha1"),
        pytest.param(_set(DIGEST, "Algorithm", MORE + "md5"), "SIG_ALGORITHM", id="digest-md5"),
        pytest.param(
            _set(C14N, "Algorithm", signing.EXC_C14N + "WithComments"),
            "SIG_PROFILE",
            id="c14n-with-comments",
        ),
        pytest.param(
            _set(C14N, "Algorithm", "http://www.w3.org/2006/12/xml-c14n11"),
            "SIG_PROFILE",
            id="c14n11",
        ),
        pytest.param(_set("//ds:Reference", "URI", "#m-1"), "SIG_PROFILE", id="id-reference"),
        pytest.param(
            _set("//ds:Transform[2]", "Algorithm", signing.EXC_C14N + "WithComments"),
            "SIG_PROFILE",
            id="transform-with-comments",
        ),
        pytest.param(
            _add_transform("http://www.w3.org/TR/1999/REC-xpath-19991116"),
            "SIG_PROFILE",
            id="xpath-transform",
        ),
        pytest.param(
            _add_transform("http://www.w3.org/TR/1999/REC-xslt-19991116"),
            "SIG_PROFILE",
            id="xslt-transform",
        ),
        pytest.param(_duplicate("//ds:Reference"), "SIG_PROFILE", id="two-references"),
        pytest.param(_duplicate("//ds:X509Certificate"), "SIG_PROFILE", id="two-certificates"),
        pytest.param(_append_to_signature("Object"), "SIG_PROFILE", id="object"),
    ],
)
def test_strict_profile_refuses_what_it_does_not_allow(
    signed: bytes, xa: Identity, mutate: Callable[[etree._Element], None], code: str
) -> None:
    """Any algorithm or structure outside the strict profile is refused with its code."""
    root = etree.fromstring(signed)
    mutate(root)
    assert refused(etree.tostring(root), [xa.cert]) == code


# --- public interop vectors -----------------------------------------------------------------

ALEKSEY_ENVELOPED = sorted(
    (VECTORS / "aleksey-xmldsig-01-enveloped").glob("enveloped-sha256-rsa-sha256-test-*.xml")
)


def _ca(directory: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((VECTORS / directory / "cacert.pem").read_bytes())


def test_vectors_are_present() -> None:
    """The interop vectors of tests/data are where the tests expect them."""
    assert len(ALEKSEY_ENVELOPED) == 8


@pytest.mark.parametrize("path", ALEKSEY_ENVELOPED, ids=lambda p: p.name)
def test_aleksey_enveloped_vectors(path: Path) -> None:
    """ID-referenced C14N 1.1 signatures: strict refuses (SIG_PROFILE), interop verifies."""
    pin = _ca("aleksey-xmldsig-01-enveloped")
    data = path.read_bytes()
    assert refused(data, [pin]) == "SIG_PROFILE"
    verified = signing.verify(data, [pin], profile="interop")
    assert verified.root.get("ID") == "parent"
    tampered = data.replace(b'ID="othersibling"', b'ID="othersibling2"')
    assert refused(tampered, [pin], profile="interop") == "SIG_INVALID"


@pytest.mark.parametrize("profile", ["strict", "interop"])
def test_invalid_enveloped_transform_is_refused(profile: str) -> None:
    """An enveloped transform over data that does not hold the Signature is refused."""
    data = (
        VECTORS / "aleksey-xmldsig-01-enveloped" / "invalid_enveloped_transform.xml"
    ).read_bytes()
    pin = _ca("aleksey-xmldsig-01-enveloped")
    assert refused(data, [pin], profile=profile) == "SIG_PROFILE"


WEAK_PATTERNS = [
    "merlin-xmldsig-twenty-three/*.xml",  # DSA-SHA1, HMAC-SHA1, RSA-SHA1 throughout
    "aleksey-xmldsig-01/*md5*.xml",
    "aleksey-xmldsig-01/*sha1*.xml",
    "aleksey-xmldsig-01/*hmac*.xml",
    "aleksey-xmldsig-01/*dsa*.xml",
    "aleksey-xmldsig-01/*ripemd160*.xml",
    "aleksey-xmldsig-01/*sha224*.xml",
    "aleksey-xmldsig-01/x509data*.xml",  # RSA-SHA1
    "aleksey-xmldsig-01/enveloping-expired-cert.xml",  # RSA-SHA1
    "TR2012/*hmac*.xml",
    "TR2012/*sha1*.xml",
    "TR2012/*sha224*.xml",
    "TR2012/signature-enveloping-rsa*.xml",  # SHA-1 digests
]
WEAK_VECTORS = sorted({p for pattern in WEAK_PATTERNS for p in VECTORS.glob(pattern)})


def test_weak_vector_patterns_match_files() -> None:
    """Every pattern of the weak-algorithm table names at least one vector."""
    assert all(list(VECTORS.glob(pattern)) for pattern in WEAK_PATTERNS)


# These carry a DOCTYPE (entity declarations for their XPointer/XPath tests): the safe
# parser refuses them before their algorithms are even looked at.
WITH_DOCTYPE = {"merlin-xmldsig-twenty-three/signature.xml", "aleksey-xmldsig-01/xpointer-hmac.xml"}


@pytest.mark.parametrize("profile", ["strict", "interop"])
@pytest.mark.parametrize("path", WEAK_VECTORS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_weak_algorithm_vectors_are_refused(path: Path, profile: str, xa: Identity) -> None:
    """MD5, SHA-1, SHA-224, RIPEMD-160, HMAC and DSA vectors are SIG_ALGORITHM in both profiles."""
    name = f"{path.parent.name}/{path.name}"
    expected = "XML_UNSAFE" if name in WITH_DOCTYPE else "SIG_ALGORITHM"
    assert refused(path.read_bytes(), [xa.cert], profile=profile) == expected


def test_ecdsa_signature_value_is_raw_r_s_and_checkpoints_are_der(
    signed: bytes, xa: Identity
) -> None:
    """An envelope's ECDSA SignatureValue is the 64-byte r‖s of XML-DSig 1.1; a detached (checkpoint) signature is DER (docs/signing.md)."""
    root = etree.fromstring(signed)
    value = base64.b64decode(root.findtext(".//ds:SignatureValue", namespaces=NS) or "")
    assert len(value) == 64
    signed_info = root.find(".//ds:SignedInfo", namespaces=NS)
    assert signed_info is not None
    c14n = etree.tostring(signed_info, method="c14n", exclusive=True, with_comments=False)
    r, s = int.from_bytes(value[:32], "big"), int.from_bytes(value[32:], "big")
    public = xa.cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(encode_dss_signature(r, s), c14n, ec.ECDSA(hashes.SHA256()))
    der = signing.Signer(xa.key, xa.cert).sign_detached_bytes(b"checkpoint")
    r2, s2 = decode_dss_signature(der)  # DER, as openssl dgst wants it
    public.verify(der, b"checkpoint", ec.ECDSA(hashes.SHA256()))
    assert der[0] == 0x30 and (r2, s2) != (r, s)

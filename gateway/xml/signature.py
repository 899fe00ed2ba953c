"""XML Signature: signing envelopes and receipts, and verifying them strictly.

The gateway signs with one enveloped ``ds:Signature``, appended as the last child
of the document root: ``Reference URI=""`` with the transforms enveloped-signature
and exclusive C14N, SHA-256, ECDSA-SHA256 (or RSA-SHA256 for an RSA key),
exclusive C14N for ``SignedInfo`` and the signing certificate in ``KeyInfo``.

:func:`verify` checks a document against one of two profiles before any
cryptography runs (libxmlsec1's own allow-lists are a second fence):

``strict`` (the gateway's own, used for every inbound envelope and receipt)
    exactly one ``ds:Signature`` in the whole document, a direct child of the
    root; one ``Reference`` with ``URI=""``; transforms exactly
    [enveloped-signature, exc-c14n]; exc-c14n for ``SignedInfo``; SHA-256/384/512
    digests; ECDSA or RSA with SHA-256/384/512; exactly one ``X509Certificate``
    in ``KeyInfo``, byte-identical to a pinned certificate.
``interop`` (``maagw envelope verify --profile interop`` only)
    one ``ds:Signature`` with one ``Reference`` to the whole document or to a
    same-document ID (``#id``); any standard canonicalisation (C14N 1.0/1.1,
    exclusive, with or without comments); the same algorithms; the certificate
    is a pin or was issued directly by a pinned CA certificate.

The key that checks the signature value always comes from the pinned
certificate (or, in the interop profile, from a certificate issued by a pinned
CA), never from ``KeyInfo`` alone. The :class:`Verified` result carries the
element the reference covered; the pipeline reads that element and nothing else.

Refusal codes (all :class:`~gateway.errors.SignatureError`): ``SIG_MISSING``,
``SIG_ALGORITHM`` (SHA-1, MD5, HMAC, DSA, anything weaker than SHA-256 or
unknown), ``SIG_PROFILE`` (structure, references, transforms or
canonicalisation outside the profile), ``SIG_WRAPPING`` (signature not where the
profile puts it, duplicate IDs), ``SIG_CERT_UNTRUSTED`` (certificate not pinned,
expired or not yet valid) and ``SIG_INVALID`` (the cryptographic check failed).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import structlog
import xmlsec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from lxml import etree

from gateway.errors import ConfigError, ErrorCode, SignatureError
from gateway.pem import cert_sha256, serial_hex
from gateway.xml import safe as xmlsafe

log = structlog.get_logger(__name__)


DS_NS = "http://www.w3.org/2000/09/xmldsig#"


_T = xmlsec.constants


ENVELOPED = _T.TransformEnveloped.href


EXC_C14N = _T.TransformExclC14N.href


#: SignatureMethod algorithms the gateway accepts, by URI.
SIGNATURE_METHODS: dict[str, Any] = {
    t.href: t
    for t in (
        _T.TransformEcdsaSha256,
        _T.TransformEcdsaSha384,
        _T.TransformEcdsaSha512,
        _T.TransformRsaSha256,
        _T.TransformRsaSha384,
        _T.TransformRsaSha512,
    )
}


#: DigestMethod algorithms the gateway accepts, by URI.
DIGEST_METHODS: dict[str, Any] = {
    t.href: t for t in (_T.TransformSha256, _T.TransformSha384, _T.TransformSha512)
}


#: Canonicalisations the interop profile accepts; strict accepts only exc-c14n.
CANONICALISATIONS: dict[str, Any] = {
    t.href: t
    for t in (
        _T.TransformExclC14N,
        _T.TransformExclC14NWithComments,
        _T.TransformInclC14N,
        _T.TransformInclC14NWithComments,
        _T.TransformInclC14N11,
        _T.TransformInclC14N11WithComments,
    )
}


_EXC_C14N_NS = EXC_C14N  # namespace of ec:InclusiveNamespaces


_ID_ATTRIBUTES = ("Id", "ID", "id", "{http://www.w3.org/XML/1998/namespace}id")


_all_ids = etree.XPath("//@Id | //@ID | //@id | //@xml:id")


Profile = Literal["strict", "interop"]


def _ds(name: str) -> str:
    return f"{{{DS_NS}}}{name}"


@dataclass(frozen=True)
class Verified:
    """A document whose signature held; read ``root`` and nothing else."""

    root: etree._Element
    signer: x509.Certificate
    digest: str
    #: the exclusive C14N of the whole document (comments excluded): ``digest`` is its SHA-256
    evidence: bytes


def cert_fingerprint(cert: x509.Certificate) -> str:
    """Return ``sha256:<hex>`` of the DER encoding of ``cert``."""
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def document_digest(root: etree._Element) -> str:
    """Return ``sha256:<hex>`` of the exclusive C14N of the whole document of ``root``.

    Comments are excluded and a ``ds:Signature`` is included: this is the digest
    a receipt quotes for the envelope it answers.
    """
    return "sha256:" + hashlib.sha256(document_c14n(root)).hexdigest()


def document_c14n(root: etree._Element) -> bytes:
    """The exclusive C14N (comments excluded) of the whole document of ``root``."""
    return bytes(
        etree.tostring(root.getroottree(), method="c14n", exclusive=True, with_comments=False)
    )


@functools.lru_cache(maxsize=256)
def _verification_key(der: bytes) -> Any:
    """Load (once per certificate) the public key of a DER certificate for xmlsec.

    Only the bare public key is loaded: a key carrying its X.509 data costs about
    30 µs more for every verification, when the context copies it.
    """
    public = x509.load_der_x509_certificate(der).public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return xmlsec.Key.from_memory(pem, _T.KeyDataFormatPem, None)


class Signer:
    """Signs documents with one private key and its certificate, loaded once."""

    def __init__(
        self,
        private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
        cert: x509.Certificate,
    ) -> None:
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if private_key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
            raise ConfigError("the signing key does not match the signing certificate")
        if isinstance(private_key, ec.EllipticCurvePrivateKey):
            self._method = _T.TransformEcdsaSha256
        elif isinstance(private_key, rsa.RSAPrivateKey):
            self._method = _T.TransformRsaSha256
        else:  # pragma: no cover - the annotation already excludes it
            raise ConfigError("signing keys must be ECDSA or RSA")
        self.cert = cert
        self._private_key = private_key
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # A bare key: KeyInfo is outside SignedInfo, so sign() adds the certificate
        # itself afterwards instead of having libxmlsec1 copy X.509 data per signature.
        self._key = xmlsec.Key.from_memory(pem, _T.KeyDataFormatPem, None)
        self._cert_b64 = base64.encodebytes(cert.public_bytes(serialization.Encoding.DER)).decode()

    @classmethod
    def from_files(cls, key_path: Path, cert_path: Path, passphrase: bytes | None = None) -> Signer:
        """Load a PEM private key and its PEM certificate.

        Raises:
            ConfigError: a file is missing or unreadable, the key is not ECDSA or
                RSA, or it does not belong to the certificate.
        """
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), passphrase)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot load signing key {key_path}: {exc}") from exc
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load signing certificate {cert_path}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ConfigError(f"signing key {key_path} must be ECDSA or RSA")
        signer = cls(key, cert)
        log.info(
            "signer_loaded",
            subject=cert.subject.rfc4514_string(),
            serial=serial_hex(cert.serial_number),
            cert_sha256=cert_sha256(cert),
        )
        return signer

    def sign(self, root: etree._Element) -> bytes:
        """Sign the whole document of ``root`` and return the signed document.

        The enveloped ``ds:Signature`` is appended to ``root`` in place, as its
        last child; the returned bytes are the serialised signed document, to be
        stored and sent as they are (re-serialising is harmless, re-signing is
        not: ECDSA signatures are randomised).

        Raises:
            SignatureError: ``SIG_PROFILE`` when the document is already signed.
        """
        if root.getparent() is not None:
            raise ValueError("sign() takes the root element of a document")
        if next(root.iter(_ds("Signature")), None) is not None:
            raise SignatureError(
                "the document already carries a Signature", code=ErrorCode.SIG_PROFILE
            )
        sig = xmlsec.template.create(root, _T.TransformExclC14N, self._method, ns="ds")
        root.append(sig)
        ref = xmlsec.template.add_reference(sig, _T.TransformSha256, uri="")
        xmlsec.template.add_transform(ref, _T.TransformEnveloped)
        xmlsec.template.add_transform(ref, _T.TransformExclC14N)
        ctx = xmlsec.SignatureContext()
        ctx.key = self._key
        try:
            ctx.sign(sig)
        except xmlsec.Error as exc:
            root.remove(sig)
            raise SignatureError(f"signing failed: {exc}", code=ErrorCode.SIG_INVALID) from exc
        key_info = etree.SubElement(sig, _ds("KeyInfo"))
        key_info.text = sig.text
        x509_data = etree.SubElement(key_info, _ds("X509Data"))
        x509_data.text = sig.text
        etree.SubElement(x509_data, _ds("X509Certificate")).text = self._cert_b64
        x509_data[-1].tail = sig.text
        key_info[-1].tail = sig.text
        key_info.tail = sig.text
        return bytes(etree.tostring(root.getroottree(), xml_declaration=True, encoding="UTF-8"))

    def sign_detached_bytes(self, data: bytes) -> bytes:
        """Return a DER signature over ``data`` with SHA-256 (ECDSA or RSA PKCS#1 v1.5).

        ``openssl dgst -sha256 -verify pub.pem -signature sig.der data`` accepts it.
        """
        if isinstance(self._private_key, ec.EllipticCurvePrivateKey):
            return self._private_key.sign(data, ec.ECDSA(hashes.SHA256()))
        return self._private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def verify_detached_bytes(data: bytes, signature: bytes, cert: x509.Certificate) -> None:
    """Check a :meth:`Signer.sign_detached_bytes` signature with ``cert``'s public key.

    Raises:
        SignatureError: ``SIG_INVALID`` when the signature does not hold.
    """
    key = cert.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise SignatureError(
                "certificate key must be ECDSA or RSA", code=ErrorCode.SIG_ALGORITHM
            )
    except (InvalidSignature, ValueError) as exc:  # ValueError: not a DER signature at all
        raise SignatureError(
            "detached signature does not verify", code=ErrorCode.SIG_INVALID
        ) from exc


def verify(
    data: bytes | etree._Element,
    pinned: Sequence[x509.Certificate],
    *,
    profile: Profile = "strict",
    at: datetime | None = None,
    evidence: bytes | None = None,
) -> Verified:
    """Verify the one XML signature of a document against pinned certificates.

    ``data`` is either untrusted bytes (parsed with :func:`gateway.xmlsafe.parse`
    and its default limits) or the root element of an already safely parsed
    document. ``at`` is the time the signing certificate must be valid at
    (default: now). ``evidence``: the caller's :func:`document_c14n` of this very
    document, if it already computed it (it is computed once per message); it is
    trusted, not recomputed, and becomes ``Verified.evidence`` and ``Verified.digest``.

    Raises:
        EnvelopeError: ``SIZE_LIMIT``, ``XML_UNSAFE``, ``SCHEMA_INVALID`` from parsing.
        SignatureError: see the module docstring for the codes.
    """
    if profile not in ("strict", "interop"):
        raise ValueError(f"unknown signature profile {profile!r}")
    strict = profile == "strict"
    if isinstance(data, bytes | bytearray):
        root = xmlsafe.parse(bytes(data))
    else:
        root = data
        if root.getparent() is not None:
            raise ValueError("verify() takes the root element of a document")

    sig = _the_signature(root)
    signed_info = next(iter(_elements(sig)), None)
    if signed_info is None or signed_info.tag != _ds("SignedInfo"):
        raise SignatureError("Signature must start with SignedInfo", code=ErrorCode.SIG_PROFILE)
    # Algorithms first, so that a partner learns the real reason for a weak signature.
    c14n, method = _check_signed_info(signed_info, strict)
    key_info = _check_signature_children(sig, strict)
    reference = signed_info.findall(_ds("Reference"))[0]
    digest_method, transforms = _check_reference(reference, strict)
    target, id_attribute = _check_coverage(root, sig, reference, transforms, strict)
    when = at or datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    signer, key_der = _check_certificate(key_info, pinned, strict, when)

    ctx = xmlsec.SignatureContext()
    ctx.key = _verification_key(key_der)
    # Second fence: libxmlsec1 itself accepts only what the checks above allowed.
    ctx.set_enabled_key_data([_T.KeyDataX509])
    ctx.enable_signature_transform(c14n)
    ctx.enable_signature_transform(method)
    for transform in (*transforms, digest_method):
        ctx.enable_reference_transform(transform)
    if id_attribute is not None:
        ctx.register_id(target, id_attribute)
    try:
        ctx.verify(sig)
    except xmlsec.Error as exc:
        raise SignatureError(
            f"signature does not verify: {exc}",
            code=ErrorCode.SIG_INVALID,
            signer_cert_sha256=cert_sha256(signer),
        ) from exc
    if evidence is None:
        evidence = document_c14n(root)
    digest = "sha256:" + hashlib.sha256(evidence).hexdigest()
    return Verified(root=target, signer=signer, digest=digest, evidence=evidence)


def _the_signature(root: etree._Element) -> etree._Element:
    """Return the document's only ``ds:Signature``."""
    signatures = list(root.iter(_ds("Signature")))
    if not signatures:
        raise SignatureError("the document carries no XML Signature", code=ErrorCode.SIG_MISSING)
    if len(signatures) > 1:
        raise SignatureError(
            f"exactly one Signature is allowed, found {len(signatures)}", code=ErrorCode.SIG_PROFILE
        )
    return signatures[0]


def _elements(node: etree._Element) -> list[etree._Element]:
    """Child elements of ``node`` (comments and PIs left out)."""
    return [child for child in node if isinstance(child.tag, str)]


def _check_signature_children(sig: etree._Element, strict: bool) -> etree._Element | None:
    """Check Signature = SignedInfo, SignatureValue, KeyInfo? (Object* if interop)."""
    children = _elements(sig)
    names = [child.tag for child in children]
    if names[:2] != [_ds("SignedInfo"), _ds("SignatureValue")]:
        raise SignatureError(
            "Signature must start with SignedInfo and SignatureValue", code=ErrorCode.SIG_PROFILE
        )
    rest = children[2:]
    key_info = None
    if rest and rest[0].tag == _ds("KeyInfo"):
        key_info = rest.pop(0)
    allowed_rest = () if strict else (_ds("Object"),)
    for extra in rest:
        if extra.tag not in allowed_rest:
            raise SignatureError(
                f"unexpected element {extra.tag} in Signature", code=ErrorCode.SIG_PROFILE
            )
    return key_info


def _algorithm(node: etree._Element | None, what: str) -> str:
    if node is None or not node.get("Algorithm"):
        raise SignatureError(f"{what} without Algorithm", code=ErrorCode.SIG_PROFILE)
    return str(node.get("Algorithm"))


def _check_signed_info(signed_info: etree._Element, strict: bool) -> tuple[Any, Any]:
    """Check the algorithms of SignedInfo; return (c14n, signature method) transforms."""
    children = _elements(signed_info)
    if len(children) < 3 or [c.tag for c in children[:2]] != [
        _ds("CanonicalizationMethod"),
        _ds("SignatureMethod"),
    ]:
        raise SignatureError(
            "SignedInfo must hold CanonicalizationMethod, SignatureMethod and a Reference",
            code=ErrorCode.SIG_PROFILE,
        )
    method_uri = _algorithm(children[1], "SignatureMethod")
    references = children[2:]
    if method_uri not in SIGNATURE_METHODS:
        raise SignatureError(
            f"signature algorithm {method_uri} is not allowed", code=ErrorCode.SIG_ALGORITHM
        )
    for reference in references:
        if reference.tag != _ds("Reference"):
            raise SignatureError(
                f"unexpected element {reference.tag} in SignedInfo", code=ErrorCode.SIG_PROFILE
            )
        digest_uri = _algorithm(reference.find(_ds("DigestMethod")), "DigestMethod")
        if digest_uri not in DIGEST_METHODS:
            raise SignatureError(
                f"digest algorithm {digest_uri} is not allowed", code=ErrorCode.SIG_ALGORITHM
            )
    if len(references) != 1:
        raise SignatureError(
            f"exactly one Reference is allowed, found {len(references)}", code=ErrorCode.SIG_PROFILE
        )
    c14n_uri = _algorithm(children[0], "CanonicalizationMethod")
    if c14n_uri not in CANONICALISATIONS or (strict and c14n_uri != EXC_C14N):
        raise SignatureError(
            f"canonicalisation {c14n_uri} is outside the {_name(strict)} profile",
            code=ErrorCode.SIG_PROFILE,
        )
    if strict and _elements(children[0]):
        raise SignatureError("CanonicalizationMethod must be empty", code=ErrorCode.SIG_PROFILE)
    return CANONICALISATIONS[c14n_uri], SIGNATURE_METHODS[method_uri]


def _name(strict: bool) -> str:
    return "strict" if strict else "interop"


def _check_reference(reference: etree._Element, strict: bool) -> tuple[Any, list[Any]]:
    """Check one Reference's URI and transforms; return (digest, transforms)."""
    uri = reference.get("URI")
    if strict and uri != "":
        raise SignatureError(
            f'the Reference must have URI="", not {uri!r}', code=ErrorCode.SIG_PROFILE
        )
    if uri is None or not (uri == "" or (uri.startswith("#") and _is_ncname(uri[1:]))):
        raise SignatureError(
            f"only whole-document or same-document ID references are allowed, not {uri!r}",
            code=ErrorCode.SIG_PROFILE,
        )
    children = _elements(reference)
    if children and children[0].tag == _ds("Transforms"):
        transform_nodes = _elements(children.pop(0))
    else:
        transform_nodes = []
    if [c.tag for c in children] != [_ds("DigestMethod"), _ds("DigestValue")]:
        raise SignatureError(
            "Reference must hold Transforms?, DigestMethod, DigestValue", code=ErrorCode.SIG_PROFILE
        )
    uris = []
    for node in transform_nodes:
        if node.tag != _ds("Transform"):
            raise SignatureError(
                f"unexpected element {node.tag} in Transforms", code=ErrorCode.SIG_PROFILE
            )
        transform_uri = _algorithm(node, "Transform")
        inner = _elements(node)
        harmless = transform_uri == EXC_C14N and all(
            child.tag == f"{{{_EXC_C14N_NS}}}InclusiveNamespaces" for child in inner
        )
        if inner and (strict or not harmless):
            raise SignatureError(
                f"transform {transform_uri} must not have parameters", code=ErrorCode.SIG_PROFILE
            )
        uris.append(transform_uri)
    if strict:
        if uris != [ENVELOPED, EXC_C14N]:
            raise SignatureError(
                "the transforms must be exactly enveloped-signature and exc-c14n, not "
                + (", ".join(uris) or "none"),
                code=ErrorCode.SIG_PROFILE,
            )
    else:
        c14ns = [u for u in uris if u != ENVELOPED]
        if (
            uris.count(ENVELOPED) > 1
            or (ENVELOPED in uris and uris[0] != ENVELOPED)
            or len(c14ns) > 1
            or any(u not in CANONICALISATIONS for u in c14ns)
        ):
            raise SignatureError(
                "transforms outside the interop profile: " + ", ".join(uris),
                code=ErrorCode.SIG_PROFILE,
            )
    transforms = [_T.TransformEnveloped if u == ENVELOPED else CANONICALISATIONS[u] for u in uris]
    digest = DIGEST_METHODS[_algorithm(reference.find(_ds("DigestMethod")), "DigestMethod")]
    return digest, transforms


def _is_ncname(value: str) -> bool:
    return bool(value) and ":" not in value and "(" not in value and not value[0].isdigit()


def _check_coverage(
    root: etree._Element,
    sig: etree._Element,
    reference: etree._Element,
    transforms: list[Any],
    strict: bool,
) -> tuple[etree._Element, str | None]:
    """Find the element the Reference covers and make sure it is the one we return.

    Returns the covered element and, for an ID reference, the name of its ID
    attribute (to register with libxmlsec1 for exactly that element).
    """
    ids = [str(value) for value in _all_ids(root)]
    if len(ids) != len(set(ids)):
        duplicates = sorted({value for value in ids if ids.count(value) > 1})
        raise SignatureError(
            f"duplicate ID values {', '.join(duplicates)}", code=ErrorCode.SIG_WRAPPING
        )
    if strict and sig.getparent() is not root:
        raise SignatureError(
            "the Signature must be a direct child of the document root", code=ErrorCode.SIG_WRAPPING
        )
    uri = str(reference.get("URI"))
    if uri == "":
        target, id_attribute = root, None
    else:
        wanted = uri[1:]
        matches = [
            (element, name)
            for element in root.iter()
            if isinstance(element.tag, str)
            for name in _ID_ATTRIBUTES
            if element.get(name) == wanted
        ]
        if not matches:
            raise SignatureError(
                f"the Reference {uri} points at nothing", code=ErrorCode.SIG_INVALID
            )
        target, id_attribute = matches[0]
    enveloped = _T.TransformEnveloped in transforms
    inside = any(ancestor is target for ancestor in sig.iterancestors())
    if enveloped and not inside:
        raise SignatureError(
            "an enveloped-signature transform on data that does not contain the Signature",
            code=ErrorCode.SIG_PROFILE,
        )
    if not enveloped and inside:
        raise SignatureError(
            "the referenced data contains the Signature but is not enveloped",
            code=ErrorCode.SIG_PROFILE,
        )
    return target, id_attribute


def _key_info_certificates(key_info: etree._Element | None) -> list[bytes]:
    if key_info is None:
        return []
    ders = []
    for node in key_info.iterfind(f"{_ds('X509Data')}/{_ds('X509Certificate')}"):
        try:
            ders.append(base64.b64decode("".join((node.text or "").split()), validate=True))
        except (binascii.Error, ValueError) as exc:
            raise SignatureError("unreadable X509Certificate", code=ErrorCode.SIG_PROFILE) from exc
    return ders


def _check_certificate(
    key_info: etree._Element | None,
    pinned: Sequence[x509.Certificate],
    strict: bool,
    at: datetime,
) -> tuple[x509.Certificate, bytes]:
    """Return (signer certificate, DER of the certificate whose key checks the value)."""
    ders = _key_info_certificates(key_info)
    pins = {pin.public_bytes(serialization.Encoding.DER): pin for pin in pinned}
    if strict and len(ders) != 1:
        raise SignatureError(
            f"KeyInfo must carry exactly one X509Certificate, found {len(ders)}",
            code=ErrorCode.SIG_CERT_UNTRUSTED if not ders else ErrorCode.SIG_PROFILE,
        )
    for der in ders:
        if der in pins:
            _check_validity(pins[der], at)
            return pins[der], der
    if not strict:
        if not ders and len(pins) == 1:
            ((der, pin),) = pins.items()
            _check_validity(pin, at)
            return pin, der
        for der in ders:
            issued = _issued_by_pin(der, pinned)
            if issued is not None:
                leaf, ca = issued
                _check_validity(ca, at)
                _check_validity(leaf, at)
                return leaf, der
    raise SignatureError(
        "the signing certificate is not one of the pinned certificates",
        code=ErrorCode.SIG_CERT_UNTRUSTED,
    )


def _issued_by_pin(
    der: bytes, pinned: Sequence[x509.Certificate]
) -> tuple[x509.Certificate, x509.Certificate] | None:
    try:
        leaf = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    for pin in pinned:
        try:
            leaf.verify_directly_issued_by(pin)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return leaf, pin
    return None


def _check_validity(cert: x509.Certificate, at: datetime) -> None:
    if at < cert.not_valid_before_utc:
        reason = f"not yet valid at {at.isoformat()} (valid from {cert.not_valid_before_utc})"
    elif at > cert.not_valid_after_utc:
        reason = f"expired at {at.isoformat()} (valid until {cert.not_valid_after_utc})"
    else:
        return
    raise SignatureError(
        f"signing certificate {cert.subject.rfc4514_string()} {reason}",
        code=ErrorCode.SIG_CERT_UNTRUSTED,
        signer_cert_sha256=cert_sha256(cert),
    )

"""The batch wire format: several signed envelopes in one ``multipart/mixed`` body, both ways."""

from __future__ import annotations

from gateway.errors import EnvelopeError, ErrorCode


def encode_multipart(parts: list[bytes], boundary: str) -> bytes:
    """A ``multipart/mixed`` body whose parts are the given XML documents (RFC 2046)."""
    delimiter = f"--{boundary}\r\n".encode()
    chunks: list[bytes] = []
    for part in parts:
        chunks += [delimiter, b"Content-Type: application/xml\r\n\r\n", part, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks)


#: envelopes in one batch at most (the receipt list's limit)
MAX_BATCH = 1000


def decode_multipart(body: bytes, content_type: str) -> list[bytes]:
    """The parts of a ``multipart/mixed`` batch, each one signed envelope, as sent.

    ``content_type`` is the whole Content-Type header, with its boundary parameter.
    """
    boundary = ""
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary or len(boundary) > 70:
        raise EnvelopeError(
            "multipart body without a valid boundary", code=ErrorCode.ENVELOPE_BATCH
        )
    delimiter = b"--" + boundary.encode("ascii", "replace")
    chunks = body.split(delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        raise EnvelopeError("multipart body is not closed", code=ErrorCode.ENVELOPE_BATCH)
    parts: list[bytes] = []
    for chunk in chunks[1:-1]:
        _headers, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise EnvelopeError("multipart part without headers", code=ErrorCode.ENVELOPE_BATCH)
        parts.append(content.removesuffix(b"\r\n"))
    if not parts or len(parts) > MAX_BATCH:
        raise EnvelopeError(
            f"a batch holds 1 to {MAX_BATCH} envelopes", code=ErrorCode.ENVELOPE_BATCH
        )
    return parts

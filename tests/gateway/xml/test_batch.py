"""Unit tests of gateway/xml/batch.py: the multipart batch body, both ways."""

from __future__ import annotations

import pytest

from gateway.errors import EnvelopeError
from gateway.xml.batch import decode_multipart, encode_multipart


def test_a_batch_body_splits_into_exactly_the_envelopes_sent() -> None:
    """decode_multipart returns each part byte for byte as encode_multipart wrote it."""
    parts = [b"<a>1</a>", b"<b>\r\n two\r\n</b>", b"<c/>"]
    body = encode_multipart(parts, "b0undary")
    assert decode_multipart(body, 'multipart/mixed; boundary="b0undary"') == parts


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"--x\r\nContent-Type: application/xml\r\n\r\n<a/>\r\n", 'multipart/mixed; boundary="x"'),
        (b"--x\r\n\r\n<a/>\r\n--x--\r\n", "multipart/mixed"),
        (b"--x--\r\n", 'multipart/mixed; boundary="x"'),
    ],
)
def test_a_malformed_batch_is_refused(body: bytes, content_type: str) -> None:
    """An unclosed batch, one without boundary, or an empty one is ENVELOPE_BATCH."""
    with pytest.raises(EnvelopeError) as info:
        decode_multipart(body, content_type)
    assert info.value.code == "ENVELOPE_BATCH"

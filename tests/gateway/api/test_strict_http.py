"""Unit tests of gateway/api/strict_http.py: which request forms the partner API takes.

The refusals through the running gateway (signed receipts, audit, the banner) are in
``tests/integration/test_partner_http.py``.
"""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.api.strict_http import check_request
from gateway.errors import http_status

XML = ("Content-Type", "application/xml")

CASES: list[tuple[str, list[tuple[str, str]], str | None]] = [
    ("one envelope", [XML], None),
    ("with a charset", [("Content-Type", "application/xml; charset=utf-8")], None),
    ("a batch", [("Content-Type", 'multipart/mixed; boundary="b"')], None),
    ("chunked", [XML, ("Transfer-Encoding", "chunked")], None),
    ("chunked in capitals", [XML, ("Transfer-Encoding", "Chunked")], None),
    ("identity content coding", [XML, ("Content-Encoding", "identity")], None),
    ("gzip then chunked", [XML, ("Transfer-Encoding", "gzip, chunked")], "HTTP_TRANSFER_ENCODING"),
    (
        "chunked twice, in two fields",
        [XML, ("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
        "HTTP_TRANSFER_ENCODING",
    ),
    ("gzip content", [XML, ("Content-Encoding", "gzip")], "HTTP_CONTENT_ENCODING"),
    ("br content", [XML, ("Content-Encoding", "br")], "HTTP_CONTENT_ENCODING"),
    ("no media type", [], "HTTP_CONTENT_TYPE"),
    ("text", [("Content-Type", "text/xml")], "HTTP_CONTENT_TYPE"),
    ("json", [("Content-Type", "application/json")], "HTTP_CONTENT_TYPE"),
    ("form", [("Content-Type", "multipart/form-data; boundary=b")], "HTTP_CONTENT_TYPE"),
]


@pytest.mark.parametrize(("headers", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_only_the_documented_request_forms_pass(
    headers: list[tuple[str, str]], code: str | None
) -> None:
    """Absent or chunked transfer coding, no content coding, application/xml or multipart/mixed."""
    request = make_mocked_request("POST", "/v1/messages", headers=CIMultiDict(headers))
    problem = check_request(request)
    assert (problem.code if problem else None) == code


@pytest.mark.parametrize(
    ("code", "status"),
    [("HTTP_TRANSFER_ENCODING", 501), ("HTTP_CONTENT_ENCODING", 415), ("HTTP_CONTENT_TYPE", 415)],
)
def test_each_refusal_has_its_http_status(code: str, status: int) -> None:
    """An unknown transfer coding is 501 (RFC 9112); a coding or media type not taken is 415."""
    assert http_status(code) == status

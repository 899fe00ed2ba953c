"""Tests for gateway/xml/safe.py: the one safe XML parser."""

from __future__ import annotations

import time

import pytest

from gateway.errors import EnvelopeError
from gateway.xml import safe as xmlsafe

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<lolz>&lol9;</lolz>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<foo>&xxe;</foo>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE foo SYSTEM "http://127.0.0.1:9/evil.dtd"><foo/>"""

UTF16_DOCTYPE = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE a [<!ENTITY e "x">]><a>&e;</a>'


def nested(depth: int) -> bytes:
    return b"<a>" * depth + b"</a>" * depth


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(BILLION_LAUGHS, "XML_UNSAFE", id="billion-laughs"),
        pytest.param(EXTERNAL_ENTITY, "XML_UNSAFE", id="external-entity"),
        pytest.param(EXTERNAL_DTD, "XML_UNSAFE", id="external-dtd"),
        pytest.param(UTF16_DOCTYPE.encode("utf-16"), "XML_UNSAFE", id="utf16-doctype"),
        pytest.param(b"<a>&undeclared;</a>", "XML_UNSAFE", id="undeclared-entity"),
        pytest.param(nested(65), "XML_UNSAFE", id="depth-65"),
        pytest.param(nested(10_000), "XML_UNSAFE", id="depth-10000"),
        pytest.param(b"<a><b></a>", "SCHEMA_INVALID", id="mismatched-tags"),
        pytest.param(b"", "SCHEMA_INVALID", id="empty"),
        pytest.param(b"not xml", "SCHEMA_INVALID", id="text"),
    ],
)
def test_parse_refuses_unsafe_or_malformed_input(data: bytes, code: str) -> None:
    """Unsafe constructs are refused as XML_UNSAFE and broken XML as SCHEMA_INVALID."""
    with pytest.raises(EnvelopeError) as info:
        xmlsafe.parse(data)
    assert info.value.code == code


def test_parse_accepts_the_depth_limit_itself() -> None:
    """A document exactly as deep as the limit parses."""
    root = xmlsafe.parse(nested(xmlsafe.DEFAULT_MAX_DEPTH))
    assert len(list(root.iter())) == xmlsafe.DEFAULT_MAX_DEPTH


def test_depth_limit_is_configurable() -> None:
    """A lower max_depth refuses what the default accepts."""
    with pytest.raises(EnvelopeError) as info:
        xmlsafe.parse(nested(10), max_depth=9)
    assert info.value.code == "XML_UNSAFE"


def test_size_limit_is_checked_before_parsing() -> None:
    """A 50 MiB body is refused as SIZE_LIMIT at once, without being parsed."""
    body = b"<a>" + b"x" * (50 * 1024 * 1024) + b"</a>"
    started = time.perf_counter()
    with pytest.raises(EnvelopeError) as info:
        xmlsafe.parse(body)
    assert info.value.code == "SIZE_LIMIT"
    assert time.perf_counter() - started < 0.05


def test_size_limit_is_configurable() -> None:
    """max_bytes is an inclusive limit."""
    data = b"<a>12345</a>"
    assert xmlsafe.parse(data, max_bytes=len(data)).tag == "a"
    with pytest.raises(EnvelopeError) as info:
        xmlsafe.parse(data, max_bytes=len(data) - 1)
    assert info.value.code == "SIZE_LIMIT"


def test_comments_stay_in_the_tree_but_not_in_the_text() -> None:
    """text_of reads the whole text across comments and PIs, not only the part before them."""
    root = xmlsafe.parse(b"<a><b>12<!-- split -->34<?pi x?>56</b></a>")
    b = root[0]
    assert b.text == "12"
    assert xmlsafe.text_of(b) == "123456"


def test_text_of_includes_descendants_and_cdata() -> None:
    """text_of is the XPath string value: descendants' text and CDATA included."""
    root = xmlsafe.parse(b"<a>x<b>y</b><![CDATA[<z>]]></a>")
    assert xmlsafe.text_of(root) == "xy<z>"

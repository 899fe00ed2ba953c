"""Tests for adapters/aeo_mra.py: AEO status lists as CSV and as JSON."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

import adapters
from adapters import Adapter, Document
from adapters.aeo_mra import CSV_COLUMNS, AeoMraCsvAdapter, AeoMraJsonAdapter
from gateway.errors import DecodeError, EncodeError
from maagw_testing.adapters import bodies

EXAMPLES = Path(__file__).parents[2] / "examples" / "aeo-mra"
HEADER = ",".join(CSV_COLUMNS)


@pytest.fixture(scope="module")
def csv_adapter() -> AeoMraCsvAdapter:
    """The registered aeo-mra-csv adapter."""
    found = adapters.get("aeo-mra-csv")
    assert isinstance(found, AeoMraCsvAdapter)
    return found


@pytest.fixture(scope="module")
def json_adapter() -> AeoMraJsonAdapter:
    """The registered aeo-mra-json adapter."""
    found = adapters.get("aeo-mra-json")
    assert isinstance(found, AeoMraJsonAdapter)
    return found


def full_csv() -> str:
    """The example full list as text."""
    return (EXAMPLES / "aeo-status-full.csv").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("name", "media_type"), [("aeo-mra-csv", "text/csv"), ("aeo-mra-json", "application/json")]
)
def test_registered_and_satisfy_protocol(name: str, media_type: str) -> None:
    """Both forms are registered adapters with their media types."""
    adapter = adapters.get(name)
    assert isinstance(adapter, Adapter)
    assert (adapter.name, adapter.media_type) == (name, media_type)


@pytest.mark.parametrize("kind", ["full", "delta"])
def test_examples_csv_and_json_agree(
    csv_adapter: AeoMraCsvAdapter, json_adapter: AeoMraJsonAdapter, kind: str
) -> None:
    """The CSV and JSON examples of a list decode to the same document."""
    from_csv = csv_adapter.decode((EXAMPLES / f"aeo-status-{kind}.csv").read_bytes())
    from_json = json_adapter.decode((EXAMPLES / f"aeo-status-{kind}.json").read_bytes())
    assert from_csv == from_json
    assert from_csv.body["listKind"] == kind
    assert csv_adapter.categories(from_csv) == {"trader"}


def test_suspended_trader_read(csv_adapter: AeoMraCsvAdapter) -> None:
    """A suspended trader's row becomes its status, date and reason."""
    traders = csv_adapter.decode(full_csv().encode()).body["traders"]
    suspended = next(t for t in traders if t["status"] == "suspended")
    assert suspended["suspensionDate"] == "2026-10-20"
    assert suspended["name"] == "Northern Freight Forwarders, Ltd."
    assert "revocationDate" not in suspended


@pytest.mark.parametrize(
    ("change", "location"),
    [
        (lambda t: t.replace("2026-10-20", "2026-13-20"), "line 3 column suspension_date"),
        (lambda t: t.replace(",AEOS,", ",AEOX,"), "line 3 column aeo_type"),
        (lambda t: t.replace("XB,revoked", ",revoked"), "line 4"),
        (
            lambda t: t.replace("full,2026-11-30,XB,XB444", "delta,2026-11-30,XB,XB444"),
            "line 4 column list_kind",
        ),
        (lambda t: t.replace("2026-10-20", ""), "line 3"),
        (lambda t: t.replace(HEADER, HEADER.replace("city", "town")), "line 1"),
        (lambda t: t + "full,2026-11-30\r\n", "line 5"),
        (
            lambda t: t.replace("full,2026-11-30,XB,XB1", "full,2026-11-30,xb,XB1"),
            "line 3 column issuing_administration",
        ),
    ],
    ids=[
        "bad-date",
        "bad-aeo-type",
        "missing-country",
        "mixed-list-kind",
        "suspended-without-date",
        "bad-header",
        "short-row",
        "list-field-differs",
    ],
)
def test_csv_errors_located_by_line_and_column(
    csv_adapter: AeoMraCsvAdapter, change: object, location: str
) -> None:
    """A faulty CSV is refused at the line (and column) of the fault."""
    with pytest.raises(DecodeError) as info:
        csv_adapter.decode(change(full_csv()).encode())  # type: ignore[operator]
    assert info.value.context["location"] == location


def test_json_semantic_rule(json_adapter: AeoMraJsonAdapter) -> None:
    """A revoked trader without a revocation date is refused at the trader's path."""
    document = json_adapter.decode((EXAMPLES / "aeo-status-full.json").read_bytes())
    traders = [dict(t) for t in document.body["traders"]]
    del traders[2]["revocationDate"]
    with pytest.raises(EncodeError) as info:
        json_adapter.encode(Document("mra.aeo-status", dict(document.body, traders=traders)))
    assert info.value.context["location"] == "$.traders[2]"


def test_other_types_refused(csv_adapter: AeoMraCsvAdapter) -> None:
    """Only AEO status lists can be written as CSV; asking for another type is refused."""
    with pytest.raises(EncodeError):
        csv_adapter.encode(Document("maa.request", {}))
    with pytest.raises(DecodeError) as info:
        csv_adapter.decode(full_csv().encode(), message_type="maa.request")
    assert info.value.code == "TRANSLATE_TYPE"


def test_aeo_list_travels_in_maa_xml(csv_adapter: AeoMraCsvAdapter) -> None:
    """An AEO list read from CSV is carried unchanged by maa-xml as mra.aeo-status."""
    document = csv_adapter.decode(full_csv().encode())
    xml = adapters.get("maa-xml")
    assert xml.decode(xml.encode(document)) == document


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies("mra.aeo-status"))
def test_round_trip_csv_json(body: dict[str, object]) -> None:
    """CSV -> JSON -> CSV and JSON -> CSV -> JSON give back the same list."""
    csv_adapter, json_adapter = adapters.get("aeo-mra-csv"), adapters.get("aeo-mra-json")
    document = Document("mra.aeo-status", body)
    via_csv = csv_adapter.decode(csv_adapter.encode(document))
    assert via_csv == document
    assert json_adapter.decode(json_adapter.encode(via_csv)) == document

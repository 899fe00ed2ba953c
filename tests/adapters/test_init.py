"""The adapter registry (adapters/__init__.py): names, defaults and file suffixes."""

from __future__ import annotations

import pytest

import adapters
from gateway.config.agreement import Agreement
from gateway.config.models import BackOfficeSection
from gateway.errors import AdapterError


def test_every_default_and_suffix_names_an_installed_adapter() -> None:
    """The registry's defaults are adapters that exist (the core names none itself)."""
    installed = set(adapters.available())
    assert adapters.DEFAULT_EXCHANGE_FORMAT in installed
    assert set(adapters.FORMAT_BY_SUFFIX.values()) <= installed


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("request.json", "national-json"),
        ("REPLY.XML", "maa-xml"),
        ("aeo.status.csv", "aeo-mra-csv"),
        ("notes.txt", None),
        ("no-suffix", None),
    ],
)
def test_a_file_is_read_with_the_adapter_its_suffix_names(name: str, expected: str | None) -> None:
    assert adapters.format_for_file(name) == expected


def test_the_configuration_defaults_come_from_the_registry() -> None:
    assert BackOfficeSection().inbound_format == adapters.DEFAULT_EXCHANGE_FORMAT
    field = Agreement.model_fields["exchange_format"]
    assert field.default == adapters.DEFAULT_EXCHANGE_FORMAT


def test_an_unknown_adapter_is_a_translation_error_with_the_installed_names() -> None:
    with pytest.raises(AdapterError) as caught:
        adapters.get("no-such-format")
    assert caught.value.code == "TRANSLATE_UNKNOWN_FORMAT"
    assert "maa-xml" in caught.value.reason

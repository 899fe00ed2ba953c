"""Tests for gateway/config/agreement.py: the agreement model and loading agreements from TOML files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.config.agreement import load_agreement, load_agreements
from gateway.errors import ConfigError
from maagw_testing.policy import (
    make_agreement,
)

ROOT = Path(__file__).resolve().parents[3]


def test_example_agreements_load_and_allow_a_request() -> None:
    """The shipped example config holds a bilateral MAA agreement and an AEO MRA, valid now."""
    agreements = load_agreements(ROOT / "config" / "agreements")
    kinds = {a.kind for a in agreements.values()}
    assert kinds == {"bilateral-maa", "aeo-mra"}
    for agreement in agreements.values():
        assert set(agreement.parties) == {"XA", "XB"}
        assert agreement.status == "active"
        assert agreement.valid_at(datetime.now(UTC))


def _write(tmp_path: Path, text: str, name: str = "a.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


VALID = (ROOT / "config" / "agreements" / "xa-xb-maa.toml").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("old", "new", "needles"),
    [
        ('kind = "bilateral-maa"', 'kind = "trade"', ["kind"]),
        ("valid_until = 2031-12-31", "valid_until = 2025-01-01", ["valid_until", "before"]),
        ('status = "active"', 'status = "suspended"', ["status_reason", "required"]),
        ('parties = ["XA", "XB"]', 'parties = ["XA", "XA"]', ["parties", "differ"]),
        ("retention_days = 3650", "retention_days = 0", ["retention_days"]),
        ("retention_days = 3650", "retention_days = 3650\ncolour = 1", ["colour", "xtra"]),
        (
            'purpose_required = ["maa.request"]\n',
            "purpose_required = []\n",
            ['flows."XA->XB".purpose_required', "maa.request"],
        ),
        ('[flows."XA->XB"]', '[flows."XA->XC"]', ['flows."XA->XC"', "SENDER->RECEIVER"]),
        (
            'message_types = ["maa.request", "maa.reply", "maa.refusal"]',
            'message_types = ["maa.request", "mra.aeo-status"]',
            ['flows."XA->XB".message_types', "mra.aeo-status"],
        ),
        (
            'redactions = ["persons.*.identityDocuments", "persons.*.birthPlace"',
            'redactions = ["persons..x"',
            ['flows."XA->XB".redactions', "persons..x"],
        ),
        (
            'redactions = ["persons.*.identityDocuments", "persons.*.birthPlace"',
            'redactions = ["persons.*"',
            ["last segment"],
        ),
        (
            'onward_transfer = "consent-required"',
            'onward_transfer = "anyone"',
            ['flows."XA->XB".onward_transfer'],
        ),
        ("personal_data = true", "personal_data = false", ["personal_data is false"]),
        ("max_size_bytes = 5_000_000", "max_size_bytes = -1", ["max_size_bytes"]),
        ("id = ", "id = = ", ["not valid TOML"]),
    ],
)
def test_bad_agreement_names_file_key_and_problem(
    tmp_path: Path, old: str, new: str, needles: list[str]
) -> None:
    """A bad agreement file is a ConfigError naming the file, the key and the problem."""
    assert old in VALID
    path = _write(tmp_path, VALID.replace(old, new, 1))
    with pytest.raises(ConfigError) as caught:
        load_agreement(path)
    message = str(caught.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message


def test_missing_file_and_directory_are_config_errors(tmp_path: Path) -> None:
    """A missing agreement file or directory is a ConfigError, not a traceback."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_agreement(tmp_path / "none.toml")
    with pytest.raises(ConfigError, match="not found"):
        load_agreements(tmp_path / "none")


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    """Two files declaring the same agreement id are a ConfigError naming both."""
    first = _write(tmp_path, VALID, "a.toml")
    second = _write(tmp_path, VALID, "b.toml")
    with pytest.raises(ConfigError) as caught:
        load_agreements(tmp_path)
    assert str(first) in str(caught.value)
    assert str(second) in str(caught.value)


def test_agreement_is_frozen() -> None:
    """A loaded agreement cannot be changed in place."""
    agreement = make_agreement()
    with pytest.raises(ValueError, match="frozen"):
        agreement.status = "terminated"  # type: ignore[misc]


def test_agreement_validity_is_inclusive_of_both_days() -> None:
    """valid_at covers the whole of valid_from and valid_until (UTC days)."""
    agreement = make_agreement()
    assert agreement.valid_at(datetime(2031, 12, 31, 23, 59, tzinfo=UTC))
    assert not agreement.valid_at(datetime(2031, 12, 31, tzinfo=UTC) + timedelta(days=1))

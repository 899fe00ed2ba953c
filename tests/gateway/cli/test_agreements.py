"""Tests for gateway/cli/agreements.py: ``maagw agreements list | show | explain``."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner, Result

import adapters
from adapters.base import Document
from gateway.cli import agreements as cli_agreements
from gateway.cli.agreements import agreements
from gateway.config.agreement import load_agreements
from gateway.errors import ConfigError, DecodeError
from gateway.policy.engine import find_agreement

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "config" / "agreements"
NOW = "2027-06-01T12:00:00+00:00"


class FakeAdapter:
    """Reads a JSON object; its ``categories`` key says which categories it contains."""

    name = "fake-json"
    media_type = "application/json"

    def decode(self, data: bytes, *, message_type: str | None = None) -> Document:
        """Parse the JSON; the message type comes from ``messageType`` unless given."""
        obj = json.loads(data)
        if not isinstance(obj, dict):
            raise DecodeError("not an object", location="$")
        return Document(message_type or obj["messageType"], obj)

    def encode(self, document: Document) -> bytes:
        """Write the body as JSON."""
        return json.dumps(document.body).encode()

    def categories(self, document: Document) -> frozenset[str]:
        """The categories the body lists."""
        return frozenset(document.body.get("categories", []))


@pytest.fixture
def formats(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Route every format name to the fake adapter and record which names were asked for."""
    asked: list[str] = []

    def get(name: str) -> FakeAdapter:
        asked.append(name)
        return FakeAdapter()

    monkeypatch.setattr(adapters, "get", get)
    return asked


def message(tmp_path: Path, name: str = "m.json", **body: Any) -> Path:
    """Write a message file for the fake adapter."""
    content: dict[str, Any] = {
        "messageType": "maa.request",
        "purpose": "verification of origin",
        "legalBasis": "Art. 4",
        "categories": ["goods", "personal"],
    }
    content.update(body)
    path = tmp_path / name
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


def run(*args: str) -> Result:
    """Invoke the ``agreements`` group."""
    return CliRunner().invoke(agreements, list(args))


def explain(path: Path, *extra: str, sender: str = "XA", receiver: str = "XB") -> Result:
    """Run ``explain`` on the example agreements at a fixed time."""
    return run(
        "explain",
        "--message",
        str(path),
        "--from",
        sender,
        "--to",
        receiver,
        "--agreements-dir",
        str(EXAMPLES),
        "--at",
        NOW,
        *extra,
    )


def test_list_prints_one_line_per_agreement() -> None:
    """list shows id, kind, parties, status and validity of each agreement, sorted by id."""
    result = run("list", "--agreements-dir", str(EXAMPLES))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    expected = sorted(load_agreements(EXAMPLES).values(), key=lambda a: a.id)
    assert len(lines) == len(expected)
    for line, agreement in zip(lines, expected, strict=True):
        assert line.split() == [
            agreement.id,
            agreement.kind,
            "-".join(agreement.parties),
            agreement.status,
            f"{agreement.valid_from}..{agreement.valid_until}",
        ]


def test_list_marks_expired_agreements(tmp_path: Path) -> None:
    """An agreement past its validity is marked expired in the list."""
    text = (EXAMPLES / "xa-xb-maa.toml").read_text(encoding="utf-8")
    text = text.replace("valid_from = 2026-01-01", "valid_from = 2020-01-01")
    text = text.replace("valid_until = 2031-12-31", "valid_until = 2021-12-31")
    (tmp_path / "old.toml").write_text(text, encoding="utf-8")
    result = run("list", "--agreements-dir", str(tmp_path))
    assert result.exit_code == 0
    assert result.output.rstrip().endswith("(expired)")


def test_list_reads_the_configuration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without --agreements-dir the agreements come from load_settings(--config)."""
    seen: list[Path] = []

    def load_settings(path: Path) -> SimpleNamespace:
        seen.append(path)
        return SimpleNamespace(agreements=load_agreements(EXAMPLES), gateway_id="XA")

    monkeypatch.setattr(cli_agreements, "load_settings", load_settings)
    config = tmp_path / "gateway.toml"
    result = run("list", "--config", str(config))
    assert result.exit_code == 0
    assert seen == [config]
    assert "xa-xb-maa" in result.output


def test_configuration_error_is_one_line_exit_2(tmp_path: Path) -> None:
    """A bad agreement file exits 2 with one line naming the file on stderr."""
    (tmp_path / "bad.toml").write_text('id = "x"\n', encoding="utf-8")
    result = CliRunner().invoke(agreements, ["list", "--agreements-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert "bad.toml" in result.output


def test_show_prints_every_flow() -> None:
    """show prints the agreement's rules for each direction."""
    result = run("show", "xa-xb-maa", "--agreements-dir", str(EXAMPLES))
    assert result.exit_code == 0, result.output
    agreement = load_agreements(EXAMPLES)["xa-xb-maa"]
    for key, flow in agreement.flows.items():
        assert f"flow {key}" in result.output
        for path in flow.redactions:
            assert path in result.output
    assert agreement.title in result.output


def test_show_unknown_id_is_a_usage_error() -> None:
    """show with an unknown id exits 2 and lists the known ids."""
    result = run("show", "nope", "--agreements-dir", str(EXAMPLES))
    assert result.exit_code == 2
    assert "xa-xb-maa" in result.output


def test_explain_allows_and_prints_redactions(tmp_path: Path, formats: list[str]) -> None:
    """An allowed outbound message exits 0 and shows the rule and the redactions to apply."""
    result = explain(message(tmp_path))
    assert result.exit_code == 0, result.output
    assert "ALLOW POLICY_ALLOW" in result.output
    assert "flows.XA->XB" in result.output
    flow = load_agreements(EXAMPLES)["xa-xb-maa"].flows["XA->XB"]
    for path in flow.redactions:
        assert f"- {path}" in result.output
    assert formats == ["national-json"]


@pytest.mark.parametrize(
    ("body", "extra", "code"),
    [
        ({"messageType": "maa.spontaneous"}, (), "POLICY_MESSAGE_TYPE"),
        ({}, ("--type", "mra.aeo-status", "--agreement", "xa-xb-maa"), "POLICY_MESSAGE_TYPE"),
        ({"categories": ["biometric"]}, (), "POLICY_DATA_CATEGORY"),
        ({}, ("--declared", "goods"), "POLICY_DATA_CATEGORY"),
        ({"purpose": None}, (), "POLICY_PURPOSE_MISSING"),
        ({}, ("--legal-basis", ""), "POLICY_PURPOSE_MISSING"),
        ({}, ("--format", "ncts-p5-json"), "POLICY_FORMAT"),
        ({}, ("--agreement", "none-such"), "POLICY_NO_AGREEMENT"),
        ({}, ("--at", "2032-01-01T00:00:00Z"), "POLICY_EXPIRED"),
        ({"messageType": "maa.reply"}, ("--unknown-request",), "POLICY_NO_REQUEST"),
    ],
)
def test_explain_denies_with_exit_1(
    tmp_path: Path, formats: list[str], body: dict[str, Any], extra: tuple[str, ...], code: str
) -> None:
    """A refused message exits 1 and prints the refusing code."""
    result = explain(message(tmp_path, **body), *extra)
    assert result.exit_code == 1, result.output
    assert f"DENY {code}" in result.output


def test_explain_reply_notes_the_unchecked_request(tmp_path: Path, formats: list[str]) -> None:
    """A reply explained without --known-request says that check was not made."""
    result = explain(message(tmp_path, messageType="maa.reply"))
    assert result.exit_code == 0, result.output
    assert "--known-request" in result.output


@pytest.mark.parametrize(
    ("gateway_id", "expected"), [("XA", "outbound"), ("XB", "inbound"), ("XC", "outbound")]
)
def test_explain_direction_follows_the_gateway_id(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    formats: list[str],
    gateway_id: str,
    expected: str,
) -> None:
    """A message to this gateway is inbound (no redactions); one from it is outbound."""

    def load_settings(path: Path) -> SimpleNamespace:
        return SimpleNamespace(agreements=load_agreements(EXAMPLES), gateway_id=gateway_id)

    monkeypatch.setattr(cli_agreements, "load_settings", load_settings)
    path = message(tmp_path)
    result = run("explain", "--message", str(path), "--from", "XA", "--to", "XB", "--at", NOW)
    assert result.exit_code == 0, result.output
    assert f"direction:  {expected} XA -> XB" in result.output
    assert ("redactions: none" in result.output) is (expected == "inbound")


@pytest.mark.parametrize(
    ("name", "fmt"), [("m.json", "national-json"), ("m.xml", "maa-xml"), ("m.csv", "aeo-mra-csv")]
)
def test_explain_format_defaults_from_the_suffix(
    tmp_path: Path, formats: list[str], name: str, fmt: str
) -> None:
    """Without --format, the file suffix chooses the adapter."""
    explain(message(tmp_path, name))
    assert formats == [fmt]


def test_explain_unknown_suffix_is_a_usage_error(tmp_path: Path, formats: list[str]) -> None:
    """A file whose suffix names no format, without --format, exits 2."""
    result = explain(message(tmp_path, "m.bin"))
    assert result.exit_code == 2
    assert "--format" in result.output


def test_explain_undecodable_message_is_refused(tmp_path: Path, formats: list[str]) -> None:
    """A file the adapter cannot decode exits 1 with one line naming the problem."""
    path = tmp_path / "m.json"
    path.write_text("[1]", encoding="utf-8")
    result = explain(path)
    assert result.exit_code == 1
    assert result.output.strip() == "error: TRANSLATE_DECODE: not an object"


def test_explain_bad_time_is_a_usage_error(tmp_path: Path, formats: list[str]) -> None:
    """--at must be an ISO 8601 time."""
    result = explain(message(tmp_path), "--at", "yesterday")
    assert result.exit_code == 2


def test_config_error_class_is_used_for_missing_directory(tmp_path: Path) -> None:
    """A missing agreements directory is a configuration error (exit 2)."""
    result = run("list", "--agreements-dir", str(tmp_path / "none"))
    assert result.exit_code == 2
    assert ConfigError.default_code in result.output


SHIPPED = sorted(
    [
        *(ROOT / "examples" / "national-json").glob("*.json"),
        *(ROOT / "examples" / "maa-xml").glob("*.xml"),
    ]
)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
@pytest.mark.parametrize(("sender", "receiver"), [("XA", "XB"), ("XB", "XA")])
def test_explain_on_the_shipped_examples(path: Path, sender: str, receiver: str) -> None:
    """Each example passes the example agreements unless its type is not allowed that way."""
    result = explain(path, "--known-request", sender=sender, receiver=receiver)
    message_type = path.stem
    agreement = find_agreement(load_agreements(EXAMPLES), None, sender, receiver, message_type)
    assert agreement is not None
    flow = agreement.flows[f"{sender}->{receiver}"]
    if message_type in flow.message_types:
        assert result.exit_code == 0, result.output
        assert "ALLOW POLICY_ALLOW" in result.output
    else:
        assert result.exit_code == 1, result.output
        assert "DENY POLICY_MESSAGE_TYPE" in result.output

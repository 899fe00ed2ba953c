"""Tests for gateway/cli/translate.py: the ``maagw translate`` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli.translate import translate_command

ROOT = Path(__file__).parents[3]
EXAMPLES = ROOT / "examples"


def run(*args: str) -> tuple[int, bytes, str]:
    """Run the command; return exit status, stdout bytes and stderr text."""
    result = CliRunner().invoke(translate_command, list(args))
    return result.exit_code, result.stdout_bytes, result.stderr


@pytest.mark.parametrize(
    ("source", "target", "path", "starts"),
    [
        ("national-json", "maa-xml", "national-json/maa.request.json", b"<?xml"),
        ("maa-xml", "national-json", "maa-xml/maa.reply.xml", b"{"),
        ("aeo-mra-csv", "aeo-mra-json", "aeo-mra/aeo-status-full.csv", b"{"),
        ("aeo-mra-json", "maa-xml", "aeo-mra/aeo-status-delta.json", b"<?xml"),
        ("ncts-p5-xml", "ncts-p5-json", "ncts-p5/cc015c.xml", b"{"),
    ],
)
def test_translation_written_to_stdout(source: str, target: str, path: str, starts: bytes) -> None:
    """A valid file is translated to stdout with exit status 0 and nothing on stderr."""
    status, out, err = run("--from", source, "--to", target, str(EXAMPLES / path))
    assert (status, err) == (0, "")
    assert out.startswith(starts)


def test_refusal_is_one_located_line(tmp_path: Path) -> None:
    """An invalid input exits 1 with `CODE at LOCATION: reason` on one stderr line."""
    document = json.loads((EXAMPLES / "national-json" / "maa.request.json").read_text())
    document["persons"][0]["birthDate"] = "1979-02-30"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(document))
    status, out, err = run("--from", "national-json", "--to", "maa-xml", str(bad))
    assert status == 1
    assert out == b""
    assert err.startswith("TRANSLATE_SCHEMA at $.persons[0].birthDate: ")
    assert err.count("\n") == 1


def test_wrong_type_refused() -> None:
    """--type names the message type the input must have."""
    path = str(EXAMPLES / "national-json" / "maa.request.json")
    status, _, err = run("--from", "national-json", "--to", "maa-xml", "--type", "maa.reply", path)
    assert status == 1
    assert err.startswith("TRANSLATE_TYPE at $.messageType")


def test_untranslatable_pair_refused() -> None:
    """An NCTS message has no place in the MAA form: refused, exit 1."""
    path = str(EXAMPLES / "ncts-p5" / "cc015c.xml")
    status, _, err = run("--from", "ncts-p5-xml", "--to", "maa-xml", path)
    assert status == 1
    assert err.startswith("TRANSLATE_ENCODE")


def test_unknown_format_is_usage_error() -> None:
    """An adapter name that is not installed is a usage error (exit 2)."""
    path = str(EXAMPLES / "national-json" / "maa.request.json")
    status, _, err = run("--from", "telex", "--to", "maa-xml", path)
    assert status == 2
    assert "telex" in err

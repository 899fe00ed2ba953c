"""Tests for gateway/service/logging.py: JSON lines with the request context, filtered by level."""

from __future__ import annotations

import json

import pytest
import structlog

from gateway.service import logging as gw_logging


def test_json_lines_carry_the_bound_request_context(capsys: pytest.CaptureFixture[str]) -> None:
    """In JSON, each line is one object with event, level, UTC time and the bound partner and message id."""
    gw_logging.configure("json", "INFO")
    log = structlog.get_logger("test")
    with gw_logging.bound(partner="XB", message_id="m-1"):
        log.info("message_received", size=10)
    log.info("after_request")
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first["event"] == "message_received" and first["level"] == "info"
    assert first["partner"] == "XB" and first["message_id"] == "m-1" and first["size"] == 10
    assert first["timestamp"].endswith("Z")
    assert "partner" not in second


def test_lines_below_the_level_are_dropped(capsys: pytest.CaptureFixture[str]) -> None:
    """At WARNING, info lines are not written and warnings are."""
    gw_logging.configure("json", "warning")
    log = structlog.get_logger("test")
    log.info("quiet")
    log.warning("loud")
    lines = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
    assert lines == ["loud"]

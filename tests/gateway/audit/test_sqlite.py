"""Tests for gateway/audit/sqlite.py: the SQLite backend of the audit log."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.audit.log import AuditLog
from gateway.errors import AuditError


def test_sqlite_missing_file_is_not_created(tmp_path: Path) -> None:
    """Opening with create=False refuses a missing SQLite file instead of creating one."""

    async def go() -> None:
        with pytest.raises(AuditError) as info:
            await AuditLog.open(str(tmp_path / "none.db"), gateway_id="XA", create=False)
        assert info.value.code == "AUDIT_NOT_FOUND"

    asyncio.run(go())
    assert not (tmp_path / "none.db").exists()

"""The one vocabulary of codes: each once, in its family, with its statuses, and the doc that follows."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from gateway import errors
from gateway.errors import (
    CODES,
    FAMILIES,
    AuditError,
    ConfigError,
    DeadLetterError,
    DeliveryError,
    ErrorCode,
    GatewayError,
    RelayError,
    StoreError,
    exit_status,
    family,
    http_status,
    render_markdown,
)

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(ROOT / "gateway").rglob("*.py"), *(ROOT / "adapters").rglob("*.py")])

#: modules the lead rewrites in issue 13: they still spell codes as string literals
PENDING_LITERALS: tuple[str, ...] = ()

#: raise sites in those modules whose class is not the code's family, until the rewrite
PENDING_MISMATCHES: set[tuple[str, str, str]] = set()

#: the prefix table that decided HTTP statuses before the enum (longest prefix wins)
OLD_PREFIX_STATUS = {
    "AUTH_": 403,
    "SIZE_LIMIT": 413,
    "XML_UNSAFE": 400,
    "SCHEMA_INVALID": 400,
    "ENVELOPE_": 400,
    "HTTP_": 400,
    "HTTP_HEADER_TIMEOUT": 408,
    "HTTP_BODY_TIMEOUT": 408,
    "HTTP_CONTENT_": 415,
    "HTTP_TRANSFER_ENCODING": 501,
    "HTTP_REQUESTS_LIMIT": 503,
    "SIG_": 400,
    "POLICY_RATE": 429,
    "POLICY_": 403,
    "TRANSLATE_": 422,
    "RELAY_": 503,
    "AUDIT_": 503,
}

CODE_SHAPE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|DUPLICATE")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _old_status(code: str) -> int:
    best = max((p for p in OLD_PREFIX_STATUS if code.startswith(p)), key=len, default="")
    return OLD_PREFIX_STATUS[best] if best else 500


def _error_classes() -> dict[str, type[GatewayError]]:
    """Every class of the tree, by name."""
    found: dict[str, type[GatewayError]] = {}
    todo: list[type[GatewayError]] = [GatewayError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo += cls.__subclasses__()
    return found


def _code_of(node: ast.expr) -> str | None:
    """The code a ``code=`` argument names literally (``ErrorCode.X`` or ``"X"``), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "ErrorCode"
    ):
        return node.attr
    return None


def test_every_code_is_there_once_under_its_own_name() -> None:
    """No two members share a value (no aliases), and each value is the member's name."""
    assert len(ErrorCode.__members__) == len(list(ErrorCode))
    assert [m.name for m in ErrorCode] == [m.value for m in ErrorCode]


def test_the_table_describes_every_code() -> None:
    """``CODES`` has exactly one row per member, in the enum's order, each with a description."""
    assert list(CODES) == list(ErrorCode)
    assert all(row.text and "\n" not in row.text for row in CODES.values())


def test_codes_are_the_same_strings_on_the_wire() -> None:
    """A member is its string in JSON, f-strings, comparisons and dict keys."""
    code = ErrorCode.POLICY_RATE
    assert json.dumps({"code": code, code: 1}) == '{"code": "POLICY_RATE", "POLICY_RATE": 1}'
    assert f"{code}" == str(code) == "POLICY_RATE" == code
    assert str(GatewayError("slow down", code=code)) == "POLICY_RATE: slow down"


def test_a_known_string_becomes_its_member_and_an_unknown_one_stays() -> None:
    """A code read from a partner's receipt or answer is kept as is when it names no member."""
    assert GatewayError("x", code="SIG_STALE").code is ErrorCode.SIG_STALE
    foreign = GatewayError("x", code="THEIR_OWN_CODE")
    assert foreign.code == "THEIR_OWN_CODE" and not isinstance(foreign.code, ErrorCode)
    assert StoreError("x").code is ErrorCode.STORE_FAILED


def test_every_class_of_the_tree_has_a_family_and_a_default_code_in_it() -> None:
    """Each class (StoreError and DeadLetterError included) owns a prefix; its default is in it."""
    families = {cls for _, cls in FAMILIES}
    for cls in _error_classes().values():
        assert issubclass(cls, tuple(families)), cls
        owner = family(cls.default_code)
        assert owner is not None and issubclass(cls, owner), (cls, cls.default_code)
    assert {StoreError, DeadLetterError} <= families


@pytest.mark.parametrize("code", list(ErrorCode), ids=str)
def test_a_code_belongs_to_the_family_of_its_class(code: ErrorCode) -> None:
    """Every RELAY_* is a RelayError's, every STORE_* a StoreError's …; a record has no class."""
    row = CODES[code]
    owner = family(code)
    if row.cls is None:
        assert row.exit is None, "a code never raised makes no command fail"
    else:
        assert owner is not None and issubclass(row.cls, owner), (code, row.cls, owner)


def test_raise_sites_give_a_class_a_code_of_its_own_family() -> None:
    """No ``EnvelopeError(code="RELAY_…")``: every ``XError(…, code=…)`` with a literal code matches."""
    classes = _error_classes()
    mismatches = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if name not in classes:
                continue
            for kw in node.keywords:
                code = _code_of(kw.value) if kw.arg == "code" else None
                owner = family(code) if code else None
                if code and (owner is None or not issubclass(classes[name], owner)):
                    mismatches.add((_rel(path), name, code))
    assert mismatches <= PENDING_MISMATCHES


def test_no_code_is_spelt_as_a_string_literal() -> None:
    """Everywhere but errors.py a code is spelt ``ErrorCode.X``, never ``"X"``."""
    members = {m.value for m in ErrorCode}
    left: dict[str, set[str]] = {}
    for path in SOURCES:
        if path.name == "errors.py" and path.parent.name == "gateway":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in members:
                left.setdefault(_rel(path), set()).add(str(node.value))
    assert sorted(p for p in left if not p.startswith(PENDING_LITERALS)) == []
    # the scan reads the sources: errors.py itself spells every code
    table = next(p for p in SOURCES if p.name == "errors.py" and p.parent.name == "gateway")
    spelt = {n.value for n in ast.walk(ast.parse(table.read_text())) if isinstance(n, ast.Constant)}
    assert members <= spelt


def test_every_literal_code_in_a_code_context_is_a_member() -> None:
    """``code="X"``, ``.code == "X"`` and code-shaped strings in the pending modules name members."""
    members = {m.value for m in ErrorCode}
    unknown = set()
    for path in SOURCES:
        pending = _rel(path).startswith(PENDING_LITERALS)
        for node in ast.walk(ast.parse(path.read_text())):
            found: list[str] = []
            if isinstance(node, ast.keyword) and node.arg == "code":
                found += [c for c in [_code_of(node.value)] if c]
            elif isinstance(node, ast.Compare) and getattr(node.left, "attr", "") == "code":
                found += [c for c in map(_code_of, node.comparators) if c]
            elif pending and isinstance(node, ast.Constant) and isinstance(node.value, str):
                found += [node.value] if CODE_SHAPE.fullmatch(node.value) else []
            unknown |= {(_rel(path), c) for c in found if c not in members}
    assert sorted(unknown) == []


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("POLICY_RATE", 429),
        ("POLICY_RATE_REFUSALS", 429),
        ("POLICY_EXPIRED", 403),
        ("SIZE_LIMIT", 413),
        ("HTTP_TRANSFER_ENCODING", 501),
        ("TRANSLATE_SCHEMA", 422),
        ("RELAY_UNAVAILABLE", 503),
        ("STORE_FAILED", 503),
        ("DELIVERY_UNREACHABLE", 503),
        ("CONN_PARTNER_LIMIT", None),
    ],
)
def test_http_status_spot_checks(code: str, status: int | None) -> None:
    """A few statuses partners rely on, from the table."""
    assert CODES[ErrorCode(code)].http == status


def test_auth_is_403_and_no_delivery_or_store_code_falls_through_to_500() -> None:
    """Every AUTH_* is 403; every DELIVERY_* and STORE_* has a deliberate status; only unknown is 500."""
    for code, row in CODES.items():
        if code.startswith("AUTH_"):
            assert row.http == 403, code
        if code.startswith(("DELIVERY_", "STORE_")):
            assert row.http is not None and row.http != 500, code
        assert row.http != 500, code
    assert http_status("NOBODY_KNOWS_THIS") == 500
    assert http_status(ErrorCode.STORE_UNAVAILABLE) == 503


def test_no_status_a_partner_saw_before_the_enum_changed() -> None:
    """Each code raised that the old prefix table answered other than 500 keeps its status."""
    never_answered = {ErrorCode.HTTP_IDLE_CLOSED}  # closes the connection; the 400 was never sent
    for code, row in CODES.items():
        old = _old_status(code)
        if row.cls is None:  # records and outcomes never went through http_status()
            continue
        if old != 500 and row.http is not None and code not in never_answered:
            assert row.http == old, (code, old, row.http)
        if row.http is None:
            assert old == 500 or code in never_answered, code


def test_a_code_no_http_answer_carries_is_a_caller_bug() -> None:
    """Asking the HTTP status of a handshake refusal or a record raises, not a silent 500."""
    with pytest.raises(ValueError, match="TLS_TIMEOUT"):
        http_status(ErrorCode.TLS_TIMEOUT)


def test_receipt_statuses_follow_the_inbound_pipeline() -> None:
    """Refusals receipted ``rejected`` are final 4xx/5xx answers; back-pressure yields no receipt."""
    assert CODES[ErrorCode.POLICY_ALLOW].receipt == "accepted"
    assert CODES[ErrorCode.DUPLICATE].receipt == "duplicate"
    for code, row in CODES.items():
        if row.receipt == "rejected":
            assert row.http is not None and row.http >= 400 and not row.retryable, code
        if row.retryable:
            assert row.receipt is None, code


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (ConfigError("x"), 2),
        (ConfigError("x", code="SOMETHING_ELSE"), 2),
        (RelayError("x", code=ErrorCode.RELAY_ACCESS_REFUSED), 2),
        (RelayError("x", code=ErrorCode.RELAY_UNCONFIRMED), 1),
        (AuditError("x", code=ErrorCode.AUDIT_BAD_RANGE), 1),
        (DeadLetterError("x", code=ErrorCode.DEAD_RESOLVED), 1),
        (DeliveryError("x"), 1),
        (GatewayError("x", code="FROM_A_NEWER_GATEWAY"), 1),
    ],
)
def test_exit_status_comes_from_the_code(exc: GatewayError, status: int) -> None:
    """CONFIG_* and a broker the configuration names wrongly exit 2, other failures 1."""
    assert exit_status(exc) == status


def test_every_config_code_exits_2() -> None:
    """A ConfigError's code exits 2 like the class did before the enum."""
    for code, row in CODES.items():
        if row.cls is ConfigError:
            assert row.exit == 2, code


def test_docs_errors_md_is_rendered_from_the_enum() -> None:
    """docs/errors.md is what ``render_markdown()`` writes today (regenerate with ``make docs``)."""
    doc = ROOT / "docs" / "errors.md"
    assert doc.read_text() == render_markdown(), (
        "docs/errors.md is stale: run `make docs` (python -m gateway.errors > docs/errors.md)"
    )
    for code in ErrorCode:
        assert f"| `{code}` |" in doc.read_text()


def test_errors_module_imports_nothing_of_the_project() -> None:
    """gateway/errors.py stays at the bottom of the layers: no project import."""
    tree = ast.parse(Path(errors.__file__).read_text())
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert not {m for m in imported if m.startswith(("gateway", "adapters"))}

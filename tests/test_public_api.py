"""The public surface: what ``gateway`` and ``adapters`` export, pinned name by name.

A name that disappears, changes kind or is exported without being listed here fails a
test: removing one is a breaking change to say in the changelog, adding one a decision
to record here.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import pytest

import adapters
import gateway

#: the kind a public name must have: a class (an exception, a protocol), or a function
CLASS, EXCEPTION, PROTOCOL, FUNCTION, COROUTINE, CONSTANT = (
    "class",
    "exception",
    "protocol",
    "function",
    "coroutine function",
    "constant",
)

GATEWAY_API = {
    # the service
    "Gateway": CLASS,
    # settings and agreements
    "Settings": CLASS,
    "load_settings": FUNCTION,
    "Agreement": CLASS,
    "load_agreements": FUNCTION,
    # the audit log as an auditor's script reads and verifies it
    "AuditLog": CLASS,
    "AuditEvent": CLASS,
    "SearchFilter": CLASS,
    "VerifyReport": CLASS,
    "verify_bundle": FUNCTION,
    # the error vocabulary and tree
    "ErrorCode": CLASS,
    "GatewayError": EXCEPTION,
    "ConfigError": EXCEPTION,
    "AuthError": EXCEPTION,
    "EnvelopeError": EXCEPTION,
    "ProtocolError": EXCEPTION,
    "SignatureError": EXCEPTION,
    "PolicyViolation": EXCEPTION,
    "AdapterError": EXCEPTION,
    "DecodeError": EXCEPTION,
    "EncodeError": EXCEPTION,
    "RelayError": EXCEPTION,
    "DeliveryError": EXCEPTION,
    "CrlError": EXCEPTION,
    "AuditError": EXCEPTION,
    "StoreError": EXCEPTION,
    "DeadLetterError": EXCEPTION,
}

ADAPTERS_API = {
    "Adapter": PROTOCOL,
    "Document": CLASS,
    "Attachment": CLASS,
    "available": FUNCTION,
    "get": FUNCTION,
    "GROUP": CONSTANT,
    "DEFAULT_EXCHANGE_FORMAT": CONSTANT,
    "FORMAT_BY_SUFFIX": CONSTANT,
    "format_for_file": FUNCTION,
}


def kind_of(value: Any) -> str:
    """The kind of a public object, in the words of the tables above."""
    if inspect.isclass(value):
        if issubclass(value, BaseException):
            return EXCEPTION
        if Protocol in getattr(value, "__mro__", ()) or getattr(value, "_is_protocol", False):
            return PROTOCOL
        return CLASS
    if inspect.iscoroutinefunction(value):
        return COROUTINE
    if callable(value):
        return FUNCTION
    return CONSTANT


@pytest.mark.parametrize(
    ("module", "expected"),
    [(gateway, GATEWAY_API), (adapters, ADAPTERS_API)],
    ids=["gateway", "adapters"],
)
def test_all_is_exactly_the_pinned_names(module: ModuleType, expected: dict[str, str]) -> None:
    """``__all__`` lists the pinned names, no more and no fewer."""
    assert sorted(module.__all__) == sorted(expected)


@pytest.mark.parametrize(
    ("module", "name", "kind"),
    [(gateway, n, k) for n, k in GATEWAY_API.items()]
    + [(adapters, n, k) for n, k in ADAPTERS_API.items()],
    ids=lambda v: v.__name__ if isinstance(v, ModuleType) else str(v),
)
def test_each_public_name_imports_and_has_its_kind(
    module: ModuleType, name: str, kind: str
) -> None:
    """Each pinned name is an attribute of its package and is the kind of object pinned."""
    assert kind_of(getattr(module, name)) == kind


def test_every_gateway_error_derives_from_gateway_error() -> None:
    """An except clause on GatewayError catches every exported error."""
    errors = [getattr(gateway, n) for n, k in GATEWAY_API.items() if k == EXCEPTION]
    assert all(issubclass(e, gateway.GatewayError) for e in errors)
    assert issubclass(gateway.DecodeError, gateway.AdapterError)
    assert issubclass(gateway.EncodeError, gateway.AdapterError)


def test_public_names_are_the_defining_modules_objects() -> None:
    """``gateway.Gateway`` is the service class itself, not a copy or a wrapper."""
    from gateway.audit.export import verify_bundle
    from gateway.config.files import load_settings
    from gateway.service.gateway import Gateway

    assert gateway.Gateway is Gateway
    assert gateway.load_settings is load_settings
    assert gateway.verify_bundle is verify_bundle


def test_an_unknown_name_is_an_attribute_error() -> None:
    """A name that is not public is not invented by the lazy lookup."""
    with pytest.raises(AttributeError, match="no_such_name"):
        gateway.no_such_name  # noqa: B018


def test_importing_the_errors_does_not_load_the_service() -> None:
    """``import gateway.errors`` (what adapters do) loads neither the service nor aiohttp nor aio-pika."""
    code = (
        "import json, sys, gateway.errors, adapters; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'aiohttp', 'aio_pika'} or m.startswith('gateway.service'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []

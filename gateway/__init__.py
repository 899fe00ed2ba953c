"""maa-gateway: message exchange between customs administrations.

The public names are the ones below (pinned by ``tests/test_public_api.py``); every other
module is implementation and may change. An auditor's script, for example::

    from gateway import AuditLog, verify_bundle

    report = verify_bundle(bundle_dir, trusted_certs=[checkpoint_cert])
    assert report.ok, report.problems

The error tree is imported at once (``gateway.errors`` imports nothing of the project).
Everything else is imported on first use (PEP 562 ``__getattr__``): every module of the
project imports this package first, and ``import gateway.errors`` (as each adapter does)
must not pull in the service, aiohttp and the broker client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gateway.errors import (
    AdapterError,
    AuditError,
    AuthError,
    ConfigError,
    CrlError,
    DeadLetterError,
    DecodeError,
    DeliveryError,
    EncodeError,
    EnvelopeError,
    ErrorCode,
    GatewayError,
    PolicyViolation,
    ProtocolError,
    RelayError,
    SignatureError,
    StoreError,
)

if TYPE_CHECKING:
    from gateway.audit.backend import SearchFilter
    from gateway.audit.chain import AuditEvent
    from gateway.audit.export import verify_bundle
    from gateway.audit.log import AuditLog
    from gateway.audit.verify import VerifyReport
    from gateway.config.agreement import Agreement, load_agreements
    from gateway.config.files import load_settings
    from gateway.config.models import Settings
    from gateway.service.gateway import Gateway

#: public name -> the module that defines it, imported on first access
_LAZY = {
    "Gateway": "gateway.service.gateway",
    "Settings": "gateway.config.models",
    "load_settings": "gateway.config.files",
    "Agreement": "gateway.config.agreement",
    "load_agreements": "gateway.config.agreement",
    "AuditLog": "gateway.audit.log",
    "AuditEvent": "gateway.audit.chain",
    "SearchFilter": "gateway.audit.backend",
    "VerifyReport": "gateway.audit.verify",
    "verify_bundle": "gateway.audit.export",
}

__all__ = [
    "AdapterError",
    "Agreement",
    "AuditError",
    "AuditEvent",
    "AuditLog",
    "AuthError",
    "ConfigError",
    "CrlError",
    "DeadLetterError",
    "DecodeError",
    "DeliveryError",
    "EncodeError",
    "EnvelopeError",
    "ErrorCode",
    "Gateway",
    "GatewayError",
    "PolicyViolation",
    "ProtocolError",
    "RelayError",
    "SearchFilter",
    "Settings",
    "SignatureError",
    "StoreError",
    "VerifyReport",
    "load_agreements",
    "load_settings",
    "verify_bundle",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access (see the module docstring)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

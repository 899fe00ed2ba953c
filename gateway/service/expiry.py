"""The certificate-expiry watch: a daily look at every configured certificate file."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from gateway.ca import inspect
from gateway.config.models import Settings
from gateway.errors import GatewayError

log = structlog.get_logger(__name__)


#: how often the expiry watch looks at the configured certificates
EXPIRY_CHECK_SECONDS = 24 * 3600.0


def cert_expiry(settings: Settings) -> dict[str, int]:
    """Days to expiry of every configured certificate file (the fewest, for a bundle).

    Blocking (file reads): the watch runs it in a thread.
    """
    days: dict[str, int] = {}
    for path, _subject, left in inspect.expiry_report(inspect.configured_cert_paths(settings)):
        key = str(path)
        days[key] = min(left, days.get(key, left))
    return days


async def watch_expiry(settings: Callable[[], Settings]) -> None:
    """Daily, until cancelled: warn of every certificate file expiring within the warning days."""
    while True:
        try:
            report = await asyncio.to_thread(cert_expiry, settings())
        except GatewayError as exc:
            log.warning("cert_expiry_unreadable", code=exc.code, reason=exc.reason)
            report = {}
        for path, left in sorted(report.items()):
            if left < inspect.EXPIRY_WARNING_DAYS:
                log.warning("cert_expiring", path=path, days_left=left)
        await asyncio.sleep(EXPIRY_CHECK_SECONDS)

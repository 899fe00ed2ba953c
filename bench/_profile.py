"""Sampling profiles of the gateway processes under load (py-spy), and their summary.

``record`` starts ``py-spy record --format raw`` (collapsed stacks, one line per
distinct stack with its sample count) on each pid; ``summarise`` turns a
collapsed file into the top functions by own time and by inclusive time, and
the share of own time per library, the figures bench/README.md quotes.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")

#: own time by the library the sampled Python frame belongs to, first match wins
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("TLS (ssl, asyncio sslproto)", ("ssl.py", "sslproto.py")),
    ("AMQP client (aio-pika, aiormq, pamqp)", ("aio_pika", "aiormq", "pamqp")),
    ("HTTP (aiohttp, multidict, yarl)", ("aiohttp", "multidict", "yarl")),
    (
        "signing and XML (gateway/xml, lxml, xmlsec)",
        ("gateway/xml/", "lxml", "xmlsec"),
    ),
    (
        "audit log and state store (gateway/audit, gateway/state, sqlite)",
        ("gateway/audit/", "gateway/state/", "sqlite", "aiosqlite"),
    ),
    ("translation (adapters, jsonschema)", ("adapters/", "jsonschema", "xmlschema")),
    ("policy (gateway/policy)", ("gateway/policy/",)),
    ("logging (structlog, json)", ("structlog", "logging/", "json/")),
    (
        "pipelines (gateway/pipeline, relay, partner_client, api)",
        ("gateway/pipeline/", "gateway/relay/", "gateway/partner_client/", "gateway/api/"),
    ),
    ("asyncio event loop", ("asyncio/", "selectors.py")),
    ("thread hand-offs (run_in_executor, to_thread)", ("concurrent/futures", "threading.py")),
)


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter or on PATH."""
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


def record(
    pids: dict[str, int],
    out_dir: Path,
    seconds: int,
    prefix: str = "profile",
    extra: tuple[str, ...] = (),
) -> dict[str, tuple[Any, Path]]:
    """Start one py-spy per process; returns name -> (Popen, collapsed-stacks path)."""
    exe = py_spy()
    if exe is None:
        raise FileNotFoundError("py-spy is not installed (`.venv/bin/pip install py-spy`)")
    out_dir.mkdir(parents=True, exist_ok=True)
    running: dict[str, tuple[Any, Path]] = {}
    for name, pid in pids.items():
        path = out_dir / f"{prefix}-{name}.txt"
        proc = subprocess.Popen(
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(seconds),
                "--rate",
                "200",
                "--nonblocking",
                *extra,
                "--format",
                "raw",
                "--output",
                str(path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        running[name] = (proc, path)
    return running


def _frame(text: str) -> tuple[str, str]:
    m = FRAME.match(text.strip())
    if m is None:
        return text.strip(), ""
    file = m.group("file")
    for marker in ("site-packages/", "lib/python3.11/", "/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return m.group("func"), file


def summarise(path: Path, top: int = 15) -> dict[str, Any]:
    """Own and inclusive time per function, own time per library, from collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    by_category: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        total += count
        func, file = frames[-1]
        own[f"{func} ({file})"] += count
        for name in {f"{fn} ({fl})" for fn, fl in frames if _own_code(fl)}:
            inclusive[name] += count
        by_category[_category(file)] += count
    if total == 0:
        return {"samples": 0}

    def share(counter: collections.Counter[str], n: int) -> list[list[Any]]:
        return [[name, round(100 * c / total, 1)] for name, c in counter.most_common(n)]

    return {
        "samples": total,
        "own_top": share(own, top),
        # the project's own functions, with everything they call
        "inclusive_top": share(inclusive, top),
        "own_by_library": share(by_category, len(CATEGORIES) + 1),
    }


def _own_code(file: str) -> bool:
    """A frame of the gateway or its adapters, other than the command-line entry points."""
    return file.startswith(("gateway/", "adapters/")) and not file.startswith(
        ("gateway/cli", "gateway/__main__")
    )


def _category(file: str) -> str:
    for name, markers in CATEGORIES:
        if any(m in file for m in markers):
            return name
    return "other"

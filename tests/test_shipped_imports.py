"""Shipped code stands without the test tooling: no module of gateway/ or adapters/ pulls it in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("gateway", "adapters")
TEST_ONLY = ("pytest", "_pytest", "hypothesis", "maagw_testing")

# Run in a fresh interpreter: in this process pytest and hypothesis are loaded already.
PROBE = """
import importlib, json, pkgutil, sys
names = []
for top in {shipped!r}:
    package = importlib.import_module(top)
    names.append(top)
    for info in pkgutil.walk_packages(package.__path__, top + "."):
        if not info.name.endswith(".__main__"):  # running it starts the CLI
            names.append(info.name)
for name in names:
    importlib.import_module(name)
test_only = sorted(m for m in sys.modules if m.split(".")[0] in {test_only!r})
print(json.dumps({{"imported": names, "test_only": test_only}}))
"""


def _probe() -> dict[str, list[str]]:
    code = PROBE.format(shipped=SHIPPED, test_only=TEST_ONLY)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, list[str]] = json.loads(done.stdout)
    return result


def test_importing_every_shipped_module_loads_no_test_library() -> None:
    """Importing each module of gateway/ and adapters/ leaves pytest, hypothesis and maagw_testing unloaded."""
    result = _probe()
    on_disk = {
        ".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts).removesuffix(".__init__")
        for top in SHIPPED
        for path in (PROJECT_ROOT / top).rglob("*.py")
        if path.name != "__main__.py"
    }
    # the probe really walked the tree: every module file was imported
    assert on_disk <= set(result["imported"])
    assert result["test_only"] == []

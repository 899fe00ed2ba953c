"""Process figures read from /proc: CPU seconds, peak and current RSS, the broker's pid."""

from __future__ import annotations

import os
import resource
import subprocess
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds ``pid`` has used so far (0.0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            stat = fh.read()
    except OSError:
        return 0.0
    # the command name may hold spaces and parentheses: fields start after the last ')'
    fields = stat.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a gateway run with ``--workers`` is several processes)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children", encoding="ascii") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its living descendants."""
    return sum(cpu_seconds(p) for p in tree(pid))


def memory_mb(pid: int, field: str = "VmHWM") -> float:
    """A ``/proc/<pid>/status`` memory field in MB (VmHWM: peak RSS; VmRSS: current)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


def self_cpu_seconds() -> float:
    """CPU seconds of this (the load generator's) process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def broker_pid() -> int | None:
    """The pid of RabbitMQ's Erlang VM on this machine, if one runs."""
    try:
        out = subprocess.run(
            ["pgrep", "-f", "beam.smp"], capture_output=True, text=True, timeout=5, check=False
        ).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        out = []
    if out:
        return int(out[0])
    try:
        text = subprocess.run(
            ["rabbitmqctl", "eval", "os:getpid()."],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    digits = "".join(c for c in text if c.isdigit())
    return int(digits) if digits else None


@dataclass
class CpuMeter:
    """CPU seconds of named processes between ``start`` and ``stop``."""

    pids: dict[str, int | None]
    _begin: dict[str, float] | None = None

    def _now(self) -> dict[str, float]:
        now = {name: tree_cpu_seconds(pid) for name, pid in self.pids.items() if pid}
        now["loadgen"] = self_cpu_seconds()
        now["machine_busy"], now["machine_total"] = machine_busy()
        return now

    def start(self) -> None:
        self._begin = self._now()

    def stop(self) -> dict[str, float]:
        """CPU seconds used by each process (and ``loadgen``: this process) since ``start``.

        ``machine`` is the share of all cores that was busy (anyone's work), 0..1.
        """
        assert self._begin is not None, "start() first"
        end = self._now()
        used = {name: max(0.0, end[name] - self._begin[name]) for name in end}
        busy, total = used.pop("machine_busy"), used.pop("machine_total")
        used["machine"] = busy / total if total > 0 else 0.0
        return used

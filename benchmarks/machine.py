"""What the benchmarks print about the machine they ran on.

The benchmark scripts are run as files (``.venv/bin/python benchmarks/bench_<name>.py``), which puts this
directory first on ``sys.path``: they import this module as ``from machine import cpu_model``.
"""

from __future__ import annotations

import platform


def cpu_model() -> str:
    """The CPU model (``model name`` of /proc/cpuinfo), else the platform's processor string, else ``unknown
    CPU``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"

"""What every benchmark prints beside its figures."""

from __future__ import annotations

import os
import subprocess


def cpu_model() -> str:
    """lscpu's model line: figures from two machines of the same kind differ by 2x."""
    try:
        out = subprocess.run(
            ["lscpu"],  # noqa: S607  (a system tool, looked up on PATH)
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
        ).stdout
    except OSError:
        return "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.partition(":")[2].strip()
    return "unknown"

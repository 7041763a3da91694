"""Whether Celery workers answer, asked over the broker's broadcast channel."""

from __future__ import annotations

from dataclasses import dataclass

from panel.celery import app


@dataclass(frozen=True)
class WorkerStatus:
    reachable: bool
    workers: list[str]
    error: str = ""


def worker_status(*, timeout: float = 2.0) -> WorkerStatus:
    try:
        replies = app.control.ping(timeout=timeout)
    except Exception as exc:  # any broker failure means "not reachable", with the reason
        return WorkerStatus(False, [], f"{type(exc).__name__}: {exc}")
    names = sorted(name for reply in replies or [] for name in reply)
    return WorkerStatus(bool(names), names)

"""The README's first command, run for real: bin/demo on SQLite with the embedded broker."""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port


def processes_with_state_dir(state: Path) -> list[int]:
    """Processes started for this demo, found by the state dir in their environment."""
    marker = f"PANEL_STATE_DIR={state}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def start_demo(state: Path, port: int) -> tuple[subprocess.Popen[str], str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "SECRET_KEY"}
    }
    env.update(
        PANEL_STATE_DIR=str(state),
        PORT=str(port),
        DEMO_SITES_PORT=str(port + 1),
        FASTAGI_LISTEN=f"127.0.0.1:{free_port()}",
        DEMO_RELAY_PORT=str(free_port()),
        DEMO_INBOUND_PORT=str(free_port()),
    )
    proc = subprocess.Popen(
        [str(ROOT / "bin" / "demo")],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    seen = []
    deadline = time.monotonic() + 180
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if "Press Ctrl-C to stop" in line:
            return proc, "".join(seen)
    proc.kill()
    raise AssertionError("demo did not start:\n" + "".join(seen)[-4000:])


def stop_demo(proc: subprocess.Popen[str], state: Path) -> None:
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    proc.wait(timeout=60)
    deadline = time.monotonic() + 10
    while processes_with_state_dir(state) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_with_state_dir(state) == [], "Ctrl-C left processes running"


def login_and_get(base: str, email: str, password: str, path: str) -> str:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page = opener.open(f"{base}/accounts/login/", timeout=10).read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    data = urllib.parse.urlencode(
        {"csrfmiddlewaretoken": token, "login": email, "password": password}
    )
    opener.open(f"{base}/accounts/login/", data.encode(), timeout=10)
    return opener.open(f"{base}{path}", timeout=10).read().decode()


@pytest.mark.worker
def test_demo_serves_the_dashboard_runs_a_worker_and_stops_on_ctrl_c(tmp_path):
    state, port = tmp_path / "demo-state", free_port()
    proc, banner = start_demo(state, port)
    try:
        base = f"http://127.0.0.1:{port}"
        assert f"{base}/" in banner
        logins = dict(re.findall(r"(\S+@demo\.coop)\s+password: (\S+)", banner))
        assert set(logins) == {
            "carol@demo.coop",
            "alice@demo.coop",
            "bob@demo.coop",
            "dave@demo.coop",
        }
        dashboard = login_and_get(base, "alice@demo.coop", logins["alice@demo.coop"], "/dashboard/")
        assert "Share No." in dashboard
        status = login_and_get(base, "carol@demo.coop", logins["carol@demo.coop"], "/staff/status/")
        deadline = time.monotonic() + 30
        while "answering" not in status and time.monotonic() < deadline:
            time.sleep(1)
            status = login_and_get(
                base, "carol@demo.coop", logins["carol@demo.coop"], "/staff/status/"
            )
        assert "answering" in status, "the demo's Celery worker answers a ping"
        assert "demo@" in status
        # The seed approved two members; the worker sent their emails from the file broker.
        log = state / "logs" / "worker.log"
        deadline = time.monotonic() + 30
        while (
            log.read_text().count("send_application_decision") < 2 and time.monotonic() < deadline
        ):
            time.sleep(0.5)
        assert (
            len(
                re.findall(
                    r"Task panel\.tasks\.send_application_decision\[.*\] succeeded", log.read_text()
                )
            )
            == 2
        )
        # The demo's local hosting node serves alice's site (set up by the worker).
        deadline = time.monotonic() + 60
        body = ""
        while "alice.localhost" not in body and time.monotonic() < deadline:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port + 1}/", headers={"Host": "alice.localhost"}
            )
            try:
                body = urllib.request.urlopen(request, timeout=5).read().decode()
            except OSError:
                time.sleep(0.5)
        assert "alice.localhost" in body
        # Alice's first campaign goes out through the demo relay into the outbox.
        outbox = state / "outbox" / "new"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(list(outbox.glob("*"))) < 20:
            time.sleep(0.5)
        assert len(list(outbox.glob("*"))) == 20
        shown = login_and_get(
            base, "carol@demo.coop", logins["carol@demo.coop"], "/newsletters/staff/outbox/"
        )
        assert "Welcome to the garden notes" in shown
        assert "List-Unsubscribe" in shown
    finally:
        stop_demo(proc, state)

    # Running it again reuses the database, the secret key and the logins.
    proc, banner_again = start_demo(state, port)
    try:
        assert dict(re.findall(r"(\S+@demo\.coop)\s+password: (\S+)", banner_again)) == logins
        assert "installing" not in banner_again
    finally:
        stop_demo(proc, state)

"""The Asterisk node role for real, on bare hosts.

The dialplan is the panel's: the role runs manage.py asterisk_dialplan on the controller (this
machine) against the panel's database, which here is the test database, and installs what it
prints.

- With ``asterisk_node_install: none`` the host has no Asterisk: only the dialplan is
  installed (from the old single HOST:PORT form of asterisk_node_agi), and nothing is reloaded.
- With ``source`` the role builds the release it pins, from a tarball this test serves over
  loopback HTTP (get_url checks the checksum), with a small module set and without the bundled
  libraries (which the build would download). The build tree is cached across test sessions:
  a directory under ~/.cache/commune-panel/ is mounted at the role's asterisk_node_source_dir
  inside the host, so a later session finds configure and make done (the role's ``creates:``
  guards) and only installs. Then Asterisk runs (started by the role through its init script),
  its dialplan is the panel's, the panel's manager user logs in, and a second run changes
  nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.server
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from telephony.models import AccessNumber
from tests.ansible.fixtures import (
    ROOT,
    DeployKey,
    PlaybookRun,
    run_playbook,
    start_bare_host,
)
from tests.asterisk.build import find_source
from tests.conftest import free_port
from tests.hosts.rootfs import cache_root, rootfs_path
from tests.hosts.testhost import TestHost

pytestmark = pytest.mark.ansible

AGI = "panel.test.example:4573"
AGI_SERVERS = ["panel.test.example:4573", "panel.test.example:4574"]
# The inventory name run_playbook gives the host: the node's name by default.
NODE = "testnode"
VERSION = "22.10.1"
CHECKSUM = "sha256:373c98f4d4a1b923b42def0aee03f4e36aca9d1c244a8eeda646da8a97f89663"
SOURCE_DIR = "/usr/local/src"
ASTERISK = "/usr/sbin/asterisk"
# What the panel's dialplan needs (the role's asterisk_node_modules) and the tests use; SHARED()
# is in func_global (there is no func_shared), res_agi needs res_speech.
MODULES = [
    "res_agi",
    "res_speech",
    "app_dial",
    "app_stack",
    "pbx_config",
    "func_global",
    "func_strings",
    "func_callerid",
    "func_cdr",
    "func_channel",
    "func_cut",
    "func_logic",
    "func_db",
    "func_rand",
    "res_clioriginate",
    "bridge_builtin_features",
    "bridge_builtin_interval_features",
    "bridge_simple",
    "app_playback",
    "app_read",
    "app_senddtmf",
    "app_verbose",
    "app_exec",
    "cdr_csv",
    "format_wav",
    "codec_ulaw",
    "codec_alaw",
    "res_timing_timerfd",
]
# Without the bundled pjproject, jansson and libjwt (the build would download them) and without
# the XML documentation (only for `core show application`; slow to build).
CONFIGURE_OPTIONS = [
    "--without-pjproject-bundled",
    "--with-jansson-bundled=no",
    "--with-libjwt-bundled=no",
    "--disable-xmldoc",
]
# The role's default (no sound downloads, no BUILD_NATIVE), then only the modules above,
# unoptimised (half the compile time; COMPILE_DOUBLE would compile everything twice).
MENUSELECT = [
    "--disable-category",
    "MENUSELECT_CORE_SOUNDS",
    "--disable-category",
    "MENUSELECT_MOH",
    "--disable-category",
    "MENUSELECT_EXTRA_SOUNDS",
    "--disable",
    "BUILD_NATIVE",
    "--disable-all",
    *[arg for module in MODULES for arg in ("--enable", module)],
    "--enable",
    "OPTIONAL_API",
    "--enable",
    "DONT_OPTIMIZE",
    "--disable",
    "COMPILE_DOUBLE",
]
PANEL_CONTEXTS = ("dialin", "dialin-fr", "panel-call", "panel-answered", "panel-hangup")


@pytest.fixture
def panel_environment(
    transactional_db: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> dict[str, str]:
    """The panel's environment for commands run on the controller: the test database."""
    db = connection.settings_dict
    values = {
        "DATABASE_URL": (
            f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        ),
        "SECRET_KEY": settings.SECRET_KEY,
        "PANEL_STATE_DIR": str(tmp_path / "state"),
    }
    # ansible-playbook inherits the test's environment, and the delegated command inherits
    # ansible-playbook's, as it does from the panel's service when the panel runs a playbook.
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture
def access_numbers(panel_environment: dict[str, str]) -> None:
    AccessNumber.objects.create(number="+4930900900", city="Berlin", country="DE")
    AccessNumber.objects.create(
        number="+33170000000", city="Paris", country="FR", context="dialin-fr"
    )


def dialplan(agi: str) -> str:
    """What the panel prints for the arguments the role passes."""
    done = subprocess.run(
        [sys.executable, "manage.py", "asterisk_dialplan", "--agi", agi, "--node", NODE],
        cwd=ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def _task_changed(output: str, task: str) -> bool:
    """Whether the run reported ``task`` (its name's start) as changed."""
    found = re.search(rf"^TASK \[[^\]]*: {re.escape(task)}[^\n]*\n(\S+):", output, re.M)
    return bool(found) and found.group(1) == "changed"  # type: ignore[union-attr]


def test_asterisk_node_installs_the_panels_dialplan_and_is_idempotent(
    bare_host: TestHost,
    deploy_key: DeployKey,
    tmp_path: Path,
    access_numbers: None,
    artifacts: Path,
) -> None:
    def run(name: str) -> PlaybookRun:
        return run_playbook(
            "asterisk_node.yml",
            bare_host,
            deploy_key,
            group="asterisk_nodes",
            # The single HOST:PORT string of earlier versions is still taken.
            extra_vars={"asterisk_node_install": "none", "asterisk_node_agi": AGI},
            workdir=tmp_path / name,
        )

    first = run("first")
    assert first.returncode == 0, first.output[-5000:]
    expected = dialplan(AGI)
    assert "[dialin]" in expected
    assert "[dialin-fr]" in expected
    assert f"--node {NODE}" in expected
    installed = bare_host.run(["cat", "/etc/asterisk/extensions_panel.conf"])
    assert installed == expected
    extensions = bare_host.run(["cat", "/etc/asterisk/extensions.conf"])
    assert "#include extensions_panel.conf" in extensions.splitlines()
    # No Asterisk on the host: nothing to reload, and nothing tried; its own settings are
    # left alone (asterisk_node_configure is false with none).
    assert not bare_host.exists("/usr/sbin/asterisk")
    assert not bare_host.exists("/etc/asterisk/manager.conf")

    second = run("second")
    assert second.returncode == 0, second.output[-5000:]
    assert second.changed() == 0, second.recap_line()

    # A new access number in the panel: the next run installs it, and only that changes.
    AccessNumber.objects.create(number="+4940900900", city="Hamburg", country="DE")
    third = run("third")
    assert third.returncode == 0, third.output[-5000:]
    assert third.changed() == 1, third.recap_line()
    installed = bare_host.run(["cat", "/etc/asterisk/extensions_panel.conf"])
    assert installed == dialplan(AGI)
    assert "+4940900900" in installed
    (artifacts / "ansible-asterisk_node.txt").write_text(
        "".join(
            f"{name} run: {result.seconds:.1f} s\n{result.recap_line()}\n"
            for name, result in (("first", first), ("second", second), ("third", third))
        )
    )


# The source install ----------------------------------------------------------------------


class _TarballServer:
    """The release tarball over loopback HTTP, as the download site would serve it; counts the
    downloads."""

    def __init__(self, tarball: Path) -> None:
        self.tarball = tarball
        self.downloads = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != f"/{tarball.name}":
                    self.send_error(404)
                    return
                outer.downloads += 1
                data = tarball.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/{self.tarball.name}"

    def __enter__(self) -> _TarballServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def source_cache() -> Iterator[Path]:
    """The build trees, kept across sessions: per rootfs (its compiler and libraries) and
    release. One session at a time uses it (a lock), and the tarball in it is removed first, so
    that every session downloads and checks it."""
    key = hashlib.sha256(f"{rootfs_path().name}|{VERSION}".encode()).hexdigest()[:12]
    cache = cache_root() / f"asterisk-node-src-{key}"
    cache.mkdir(parents=True, exist_ok=True)
    with cache.with_name(cache.name + ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        (cache / f"asterisk-{VERSION}.tar.gz").unlink(missing_ok=True)
        yield cache


def _ami(port: int, secret: str, *, source: str = "127.0.0.1") -> dict[str, str]:
    """Log into the manager interface as the panel does (MD5 challenge), then CoreStatus,
    DBGetTree and an action the user may not run; the answers by action."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        reader = s.makefile("rb")
        banner = reader.readline().decode()

        def action(name: str, **fields: str) -> str:
            lines = [f"Action: {name}", *(f"{k}: {v}" for k, v in fields.items())]
            s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            # The response, and for list actions their events up to the Complete one.
            answer = ""
            while True:
                block = b""
                while not block.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return answer + block.decode()
                    block += line
                answer += block.decode()
                if "EventList: start" not in answer or "EventList: Complete" in answer:
                    return answer

        answers = {"banner": banner}
        answers["Challenge"] = action("Challenge", AuthType="MD5")
        challenge = re.search(r"^Challenge: (\S+)", answers["Challenge"], re.M)
        assert challenge, answers
        key = hashlib.md5((challenge.group(1) + secret).encode()).hexdigest()  # noqa: S324
        answers["Login"] = action("Login", AuthType="MD5", Username="panel", Key=key, Events="off")
        if "Response: Success" not in answers["Login"]:
            return answers
        answers["CoreStatus"] = action("CoreStatus")
        answers["DBGetTree"] = action("DBGetTree", Family="panel")
        answers["Originate"] = action(
            "Originate", Channel="Local/s@panel-call", Application="Wait", Data="1"
        )
        answers["Logoff"] = action("Logoff")
        return answers


def _asterisk(host: TestHost, command: str) -> str:
    return host.run([ASTERISK, "-rx", command])


def test_asterisk_node_builds_asterisk_from_source_runs_it_and_is_idempotent(
    deploy_key: DeployKey,
    tmp_path: Path,
    access_numbers: None,
    source_cache: Path,
    artifacts: Path,
) -> None:
    ami_port = free_port()
    ami_secret = secrets.token_hex(16)
    host = start_bare_host(
        tmp_path / "host", deploy_key.public, bind_mounts=[(source_cache, SOURCE_DIR)]
    )
    try:
        with _TarballServer(find_source()) as tarball:

            def run(name: str) -> PlaybookRun:
                return run_playbook(
                    "asterisk_node.yml",
                    host,
                    deploy_key,
                    group="asterisk_nodes",
                    extra_vars={
                        "asterisk_node_install": "source",
                        "asterisk_node_source_url": tarball.url,
                        "asterisk_node_configure_options": CONFIGURE_OPTIONS,
                        "asterisk_node_menuselect": MENUSELECT,
                        "asterisk_node_agi": AGI_SERVERS,
                        "asterisk_node_ami_port": ami_port,
                        "asterisk_node_ami_permit": ["127.0.0.1"],
                        # The role's defaults, said here to show they are what is tested.
                        "asterisk_node_version": VERSION,
                        "asterisk_node_source_checksum": CHECKSUM,
                        "asterisk_node_source_dir": SOURCE_DIR,
                    },
                    secrets_={"asterisk_node_ami_secret": ami_secret},
                    workdir=tmp_path / name,
                    timeout=3600,
                )

            first = run("first")
            assert first.returncode == 0, first.output[-5000:]
            built = _task_changed(first.output, "Build Asterisk")
            assert tarball.downloads == 1
            assert _task_changed(first.output, "Install Asterisk, its init script")
            _check_asterisk(host, ami_port, ami_secret)

            second = run("second")
            assert second.returncode == 0, second.output[-5000:]
            assert second.changed() == 0, second.recap_line() + _changed_tasks(second.output)
            assert tarball.downloads == 1
            # Still the same process: nothing restarted it.
            assert "Asterisk 22.10.1" in _asterisk(host, "core show version")
    finally:
        host.stop()
    (artifacts / "ansible-asterisk_node-source.txt").write_text(
        f"first run ({'cold: configure and make' if built else 'cached build: install only'}):"
        f" {first.seconds:.1f} s\n{first.recap_line()}\n"
        f"second run: {second.seconds:.1f} s\n{second.recap_line()}\n"
    )


def _changed_tasks(output: str) -> str:
    changed, task = [], ""
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line
        elif line.startswith("changed:"):
            changed.append(task)
    return "\n" + "\n".join(changed)


def _check_asterisk(host: TestHost, ami_port: int, ami_secret: str) -> None:
    # Asterisk runs (the role started it), the release pinned, as its own user.
    deadline = time.monotonic() + 60
    while "Asterisk" not in host.run([ASTERISK, "-rx", "core show version"], check=False):
        assert time.monotonic() < deadline, host.run(
            ["tail", "-n", "40", "/var/log/asterisk/messages.log"], check=False
        )
        time.sleep(1)
    assert _asterisk(host, "core show version").startswith(f"Asterisk {VERSION} ")
    pid = host.run(["pidof", "asterisk"]).split()[0]
    uid = host.run(["id", "-u", "asterisk"]).strip()
    assert f"Uid:\t{uid}" in host.run(["cat", f"/proc/{pid}/status"])
    assert re.search(rf"System name:\s+{NODE}$", _asterisk(host, "core show settings"), re.M)
    # The panel's dialplan, and the modules it needs.
    assert host.run(["cat", "/etc/asterisk/extensions_panel.conf"]) == dialplan(
        ",".join(AGI_SERVERS)
    )
    contexts = _asterisk(host, "dialplan show")
    for context in PANEL_CONTEXTS:
        assert f"[ Context '{context}' created by 'pbx_config' ]" in contexts, contexts
    modules = _asterisk(host, "module show")
    for module in ("res_agi", "func_db", "func_global", "func_rand", "app_stack", "app_dial"):
        assert re.search(rf"^{module}(\.so)?\s.*\bRunning\b", modules, re.M), modules
    # The panel's manager user: logs in from a permitted address, runs what the
    # reconciliation needs and nothing else.
    answers = _ami(ami_port, ami_secret)
    assert answers["banner"].startswith("Asterisk Call Manager/"), answers
    assert "Response: Success" in answers["Login"], answers
    assert "Response: Success" in answers["CoreStatus"], answers
    assert "Response: Success" in answers["DBGetTree"], answers
    assert "Permission denied" in answers["Originate"], answers
    # From an address not permitted (loopback, but not 127.0.0.1), or with a wrong secret:
    # refused.
    assert "Response: Success" not in _ami(ami_port, ami_secret, source="127.0.0.2")["Login"]
    assert "Response: Success" not in _ami(ami_port, "x" * 32)["Login"]
    manager = host.run(["stat", "-c", "%a %U:%G", "/etc/asterisk/manager.conf"]).split()
    assert manager == ["640", "root:asterisk"]

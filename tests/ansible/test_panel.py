"""The panel role for real: panel.yml against a bare host (once for the module), then the
panel answers over HTTPS, its worker answers a ping, beat, FastAGI and the inbound endpoint run,
the nightly backup makes a dump pg_restore can read, and a second run changes nothing.

The controller builds what the role installs: the panel's wheel, fresh for every session (the
code under test), and a wheelhouse of its dependencies, cached across sessions under
~/.cache/commune-panel/ (keyed by pyproject.toml, where the dependencies are declared).
"""

from __future__ import annotations

import hashlib
import http.client
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pytest

from tests.ansible.fixtures import DeployKey, PlaybookRun, run_playbook, start_bare_host
from tests.conftest import free_port
from tests.hosts.rootfs import cache_root, ensure_rootfs
from tests.hosts.testhost import TestHost, wait_for_port

pytestmark = pytest.mark.ansible

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("panel", "provisioning", "telephony", "newsletters")
ENV_FILE = "/etc/commune-panel/panel.env"
MANAGE = "/srv/commune-panel/bin/manage"
CERT = "/etc/commune-panel/tls/panel.crt"
BACKUPS = "/var/backups/commune-panel"
T = TypeVar("T")


@dataclass(frozen=True)
class Build:
    wheel: Path
    wheelhouse: Path


@dataclass
class Deployment:
    host: TestHost
    ports: dict[str, int]
    secrets: dict[str, str]
    first: PlaybookRun
    deploy: Callable[[str], PlaybookRun] = field(repr=False)

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.ports['https']}"

    def https(self) -> http.client.HTTPSConnection:
        """A connection that trusts the host's self-signed certificate (it names 127.0.0.1)."""
        context = ssl.create_default_context(cadata=self.host.run(["cat", CERT]))
        return http.client.HTTPSConnection(
            "127.0.0.1", self.ports["https"], context=context, timeout=30
        )


def _source_copy(directory: Path) -> Path:
    """The project's packaging inputs, copied, so that building writes nothing into the
    checkout (setuptools builds in the source tree)."""
    source = directory / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package,
            source / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    return source


def _server_python() -> str:
    """The test host's Python version (Debian's python3), read from the rootfs' dpkg status."""
    status = (ensure_rootfs() / "var" / "lib" / "dpkg" / "status").read_text()
    found = re.search(
        r"^Package: python3-minimal\n(?:\S.*\n)*?Version: (\d+\.\d+\.\d+)", status, re.M
    )
    assert found, "python3-minimal is not in the test hosts' rootfs"
    return found.group(1)


def _pip_wheel(*args: str, python_version: str | None = None) -> None:
    """pip wheel; with python_version, environment markers are evaluated for that Python.

    pip evaluates markers for the interpreter it runs on, and the server's may differ in its
    patch level, which markers can name (Debian 12 has 3.11.2; redis needs async-timeout below
    3.11.3). So pip runs here with platform.python_version() answering the server's version.
    """
    script = (
        f"import platform, runpy, sys\nplatform.python_version = lambda: {python_version!r}\n"
        if python_version
        else "import runpy, sys\n"
    ) + "sys.argv[0] = 'pip'\nrunpy.run_module('pip', run_name='__main__', alter_sys=True)\n"
    done = subprocess.run(
        [sys.executable, "-c", script, "wheel", "--quiet", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _wheelhouse(source: Path) -> Path:
    """All dependencies with the deploy extra, as wheels for the server's Python; built once
    per pyproject.toml (where the dependencies are declared) and server Python."""
    python_version = _server_python()
    key = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + f"|{python_version}".encode()
    ).hexdigest()[:12]
    target = cache_root() / f"wheelhouse-{key}"
    if (target / ".complete").exists():
        return target
    building = target.with_name(f"{target.name}.building-{secrets.token_hex(4)}")
    try:
        _pip_wheel("--wheel-dir", str(building), f"{source}[deploy]", python_version=python_version)
        # The panel's own wheel is built fresh for every session, never taken from here.
        for own in building.glob("commune_panel-*.whl"):
            own.unlink()
        (building / ".complete").write_text(key + "\n")
        try:
            building.rename(target)
        except OSError:  # another session finished the same wheelhouse first
            assert (target / ".complete").exists()
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


@pytest.fixture(scope="session")
def panel_build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    directory = tmp_path_factory.mktemp("panel-build")
    source = _source_copy(directory)
    wheelhouse = _wheelhouse(source)
    dist = directory / "dist"
    _pip_wheel("--no-deps", "--wheel-dir", str(dist), str(source))
    (wheel,) = dist.glob("commune_panel-*.whl")
    return Build(wheel, wheelhouse)


def _request(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    *,
    body: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], str]:
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    text = response.read().decode(errors="replace")
    return response.status, {k.lower(): v for k, v in response.getheaders()}, text


def _eventually(check: Callable[[], tuple[bool, T]], *, timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        ok, value = check()
        if ok:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} after {timeout}s: {value}")
        time.sleep(1)


def _log(host: TestHost, service: str) -> str:
    """The end of a service's log on the host, for failure messages."""
    return host.run(["tail", "-n", "40", f"/var/log/commune-panel/{service}.log"], check=False)


def _changed_tasks(output: str) -> str:
    """The tasks a run reported as changed, to say what is not idempotent."""
    changed, task = [], ""
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line
        elif line.startswith("changed:"):
            changed.append(task)
    return "\n" + "\n".join(changed)


@pytest.fixture(scope="module")
def deployed(
    tmp_path_factory: pytest.TempPathFactory, deploy_key: DeployKey, panel_build: Build
) -> Iterator[Deployment]:
    """A bare host that panel.yml ran against once, with free ports for everything it serves."""
    workdir = tmp_path_factory.mktemp("panel-role")
    host = start_bare_host(workdir / "host", deploy_key.public)
    try:
        ports = {
            name: free_port()
            for name in ("http", "https", "postgres", "redis", "fastagi", "inbound")
        }
        extra_vars = {
            "panel_wheel": str(panel_build.wheel),
            "panel_wheelhouse": str(panel_build.wheelhouse),
            "panel_server_names": ["panel.test", "127.0.0.1"],
            "panel_listen_addresses": ["127.0.0.1"],
            "panel_http_port": ports["http"],
            "panel_https_port": ports["https"],
            "panel_postgres_port": ports["postgres"],
            "panel_redis_port": ports["redis"],
            "panel_fastagi_listen": f"127.0.0.1:{ports['fastagi']}",
            "panel_inbound_listen": f"127.0.0.1:{ports['inbound']}",
            "panel_gunicorn_workers": 2,
            "panel_worker_concurrency": 2,
        }
        secrets_ = {
            "panel_secret_key": secrets.token_urlsafe(50),
            "panel_db_password": secrets.token_hex(16),
            "panel_redis_password": secrets.token_hex(16),
        }

        def deploy(name: str) -> PlaybookRun:
            return run_playbook(
                "panel.yml",
                host,
                deploy_key,
                group="panel",
                workdir=workdir / name,
                extra_vars=extra_vars,
                secrets_=secrets_,
            )

        first = deploy("first")
        assert first.returncode == 0, first.output[-5000:]
        yield Deployment(host, ports, secrets_, first, deploy)
    finally:
        host.stop()


def test_the_environment_file_is_roots_and_readable_by_the_panel(deployed: Deployment) -> None:
    host = deployed.host
    assert host.run(["stat", "-c", "%a %U:%G", ENV_FILE]).split() == ["640", "root:panel"]
    environment = host.run(["cat", ENV_FILE])
    assert f"SECRET_KEY='{deployed.secrets['panel_secret_key']}'" in environment
    assert "BEHIND_TLS_PROXY='1'" in environment
    assert f"PANEL_BASE_URL='https://panel.test:{deployed.ports['https']}'" in environment
    # Every line is KEY='value', as systemd and sh both read it.
    for line in environment.splitlines():
        assert line.startswith("#") or re.fullmatch(r"[A-Z_][A-Z0-9_]*='[^']*'", line), line


def test_the_panel_answers_over_https_and_http_redirects(deployed: Deployment) -> None:
    wait_for_port(deployed.ports["https"], timeout=30)
    web = deployed.https()

    def login_page() -> tuple[bool, tuple[int, dict[str, str], str]]:
        answer = _request(web, "GET", "/accounts/login/")
        return answer[0] == 200, answer

    _status, headers, page = _eventually(login_page, timeout=60, what="no login page")
    assert 'name="login"' in page
    assert headers["strict-transport-security"].startswith("max-age=31536000")
    # Django takes the request for HTTPS (X-Forwarded-Proto): its cookies are secure.
    assert "csrftoken=" in headers["set-cookie"]
    assert "Secure" in headers["set-cookie"]
    # Static files come from nginx, not from gunicorn.
    status, headers, css = _request(web, "GET", "/static/panel/panel.css")
    assert status == 200
    assert headers["server"].startswith("nginx")
    assert css.strip()
    web.close()

    plain = http.client.HTTPConnection("127.0.0.1", deployed.ports["http"], timeout=10)
    status, headers, _body = _request(plain, "GET", "/accounts/login/")
    assert status == 301
    assert headers["location"] == f"{deployed.base}/accounts/login/"
    plain.close()
    # Names the panel does not answer to get no answer at all.
    stranger = http.client.HTTPConnection("127.0.0.1", deployed.ports["http"], timeout=10)
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        _request(stranger, "GET", "/", headers={"Host": "elsewhere.example"})
    stranger.close()


def test_a_login_attempt_passes_csrf_and_allauths_client_ip(deployed: Deployment) -> None:
    web = deployed.https()
    _status, headers, page = _request(web, "GET", "/accounts/login/")
    csrftoken = re.search(r"csrftoken=([^;]+)", headers["set-cookie"]).group(1)  # type: ignore[union-attr]
    form_token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    status, _headers, page = _request(
        web,
        "POST",
        "/accounts/login/",
        body=urllib.parse.urlencode(
            {"csrfmiddlewaretoken": form_token, "login": "nobody@example.org", "password": "x"}
        ),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"csrftoken={csrftoken}",
            "Origin": deployed.base,
            "Referer": f"{deployed.base}/accounts/login/",
        },
    )
    web.close()
    # A wrong password gets the form again with an error: not a 403.
    assert status == 200, _log(deployed.host, "panel-web")
    assert 'name="login"' in page


def test_the_worker_answers_and_beat_fastagi_and_inbound_run(deployed: Deployment) -> None:
    host = deployed.host

    def ping() -> tuple[bool, str]:
        out = host.run([MANAGE, "worker_status", "--timeout", "3"], check=False)
        return "answers" in out, out

    status = _eventually(ping, timeout=90, what="no worker answered")
    assert re.search(r"^worker: celery@\S+ answers$", status, re.M), status

    uid = host.run(["id", "-u", "panel"]).strip()
    for service, word in (("panel-beat", " beat "), ("panel-web", "gunicorn")):
        pid = host.run(["cat", f"/run/{service}.pid"]).strip()
        cmdline = host.run(["cat", f"/proc/{pid}/cmdline"]).replace("\0", " ")
        assert word in cmdline, cmdline
        assert f"Uid:\t{uid}" in host.run(["cat", f"/proc/{pid}/status"]), service
    wait_for_port(deployed.ports["fastagi"], timeout=30)
    wait_for_port(deployed.ports["inbound"], timeout=30)


def test_the_backup_script_makes_a_dump_pg_restore_reads(deployed: Deployment) -> None:
    host = deployed.host
    assert "root /usr/local/sbin/commune-panel-backup" in host.run(
        ["cat", "/etc/cron.d/commune-panel-backup"]
    )
    host.run(["/usr/local/sbin/commune-panel-backup"])
    dumps = host.run(["find", BACKUPS, "-name", "panel-*.dump"]).split()
    assert len(dumps) == 1, dumps
    assert host.run(["stat", "-c", "%a %U", dumps[0]]).split() == ["600", "root"]
    listing = host.run(["pg_restore", "--list", dumps[0]])
    assert "TABLE DATA public django_migrations" in listing


def test_a_second_run_changes_nothing(deployed: Deployment, artifacts: Path) -> None:
    second = deployed.deploy("second")
    first = deployed.first
    (artifacts / "ansible-panel.txt").write_text(
        f"first run:  {first.seconds:.1f} s  {first.recap_line()}\n"
        f"second run: {second.seconds:.1f} s  {second.recap_line()}\n"
    )
    assert second.returncode == 0, second.output[-5000:]
    assert second.changed() == 0, second.recap_line() + _changed_tasks(second.output)

"""The panel role for real: panel.yml against a bare host (once for the module), then the
panel answers over HTTPS, its worker answers a ping, beat, the FastAGI servers and the inbound
endpoint run, the FastAGI ports are firewalled to the Asterisk nodes, the nightly backup makes a
dump pg_restore can read, a second run changes nothing, and an upgrade restarts the FastAGI
servers one at a time.

The host runs in a network namespace of its own (NetNS), so that the firewall it loads is its
own: this machine's is never touched. The machine reaches it over a veth pair, from two
addresses: the "Asterisk node" the firewall lets in, and a stranger.

The controller builds what the role installs: the panel's wheel, fresh for every session (the
code under test), and a wheelhouse of its dependencies, cached across sessions under
~/.cache/commune-panel/ (keyed by pyproject.toml, where the dependencies are declared).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import threading
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
from tests.hosts.testhost import NetNS, TestHost, wait_for_port

pytestmark = pytest.mark.ansible

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("panel", "provisioning", "telephony", "newsletters")
ENV_FILE = "/etc/commune-panel/panel.env"
MANAGE = "/srv/commune-panel/bin/manage"
CERT = "/etc/commune-panel/tls/panel.crt"
BACKUPS = "/var/backups/commune-panel"
# The role's default ports: the host has a network namespace of its own, so nothing of this
# machine's is in the way.
FASTAGI_PORTS = (4573, 4574)
FIREWALL_TABLE = "commune_panel_fastagi"
# A ten-year apt cache: the namespace reaches no mirror, and the rootfs has every package.
APT_CACHE_VALID = 10 * 365 * 86400
T = TypeVar("T")


@dataclass(frozen=True)
class Build:
    wheel: Path
    wheelhouse: Path


@dataclass
class Deployment:
    host: TestHost
    netns: NetNS
    ports: dict[str, int]
    secrets: dict[str, str]
    first: PlaybookRun
    deploy: Callable[..., PlaybookRun] = field(repr=False)

    @property
    def address(self) -> str:
        return self.host.address

    @property
    def base(self) -> str:
        return f"https://{self.address}:{self.ports['https']}"

    def https(self) -> http.client.HTTPSConnection:
        """A connection that trusts the host's self-signed certificate (it names the host's
        address)."""
        context = ssl.create_default_context(cadata=self.host.run(["cat", CERT]))
        return http.client.HTTPSConnection(
            self.address, self.ports["https"], context=context, timeout=30
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
    body: str | bytes | None = None,
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


def _listener(host: TestHost, port: int) -> list[int]:
    """The PIDs listening on a TCP port of the host."""
    out = host.run(["ss", "-Hltnp", "sport", "=", f":{port}"])
    return sorted({int(pid) for pid in re.findall(r"pid=(\d+)", out)})


def _connect(source: str, address: str, port: int, *, timeout: float = 2.0) -> int:
    """A TCP connection from ``source`` (an address of this machine): 0 when accepted, else
    the error (ECONNREFUSED: nothing listens; a timeout, EAGAIN: no answer at all)."""
    with socket.socket() as probe:
        probe.settimeout(timeout)
        probe.bind((source, 0))
        return probe.connect_ex((address, port))


def _connects(source: str, address: str, port: int, *, timeout: float = 2.0) -> bool:
    return _connect(source, address, port, timeout=timeout) == 0


def _changed_tasks(output: str) -> str:
    """The tasks a run reported as changed, to say what is not idempotent."""
    changed, task = [], ""
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line
        elif line.startswith("changed:"):
            changed.append(task)
    return "\n" + "\n".join(changed)


# What the nodes' manager interfaces look like to the panel (ASTERISK_AMI): one entry given as a
# mapping, one as a string. Nothing listens there; the test reads the environment file.
AMI_SECRET = secrets.token_hex(16)
ASTERISK_AMI = [
    {"name": "voice1", "url": f"ami://panel:{AMI_SECRET}@10.0.0.5:5038"},
    f"voice-2=ami://panel:{AMI_SECRET}@10.0.0.6:5038",
]


def _old_single_fastagi(host: TestHost, key: DeployKey, workdir: Path) -> None:
    """What earlier versions of the role left: one service, panel-fastagi, holding the first
    FastAGI port (a stand-in that only listens)."""
    done = run_playbook(
        "../tests/ansible/playbooks/old_panel_fastagi.yml",
        host,
        key,
        group="panel",
        workdir=workdir,
        extra_vars={"old_fastagi_port": FASTAGI_PORTS[0]},
    )
    assert done.returncode == 0, done.output[-5000:]
    wait_for_port(FASTAGI_PORTS[0], address=host.address, timeout=30)


@pytest.fixture(scope="module")
def deployed(
    tmp_path_factory: pytest.TempPathFactory, deploy_key: DeployKey, panel_build: Build
) -> Iterator[Deployment]:
    """A bare host in a network namespace of its own that panel.yml ran against once, after
    an old single FastAGI service and a table of the admins' were put there."""
    workdir = tmp_path_factory.mktemp("panel-role")
    netns = NetNS.create()
    try:
        host = start_bare_host(workdir / "host", deploy_key.public, netns=netns)
        try:
            yield _deploy(host, netns, deploy_key, panel_build, workdir)
        finally:
            host.stop()
    finally:
        netns.close()


def _deploy(
    host: TestHost, netns: NetNS, deploy_key: DeployKey, panel_build: Build, workdir: Path
) -> Deployment:
    # The admins' own rules: the role must leave them as they are.
    host.run(
        ["nft", "-f", "-"],
        input=(
            "table inet admins_own {\n"
            "  set trusted { type ipv4_addr; elements = { 192.0.2.7 } }\n"
            "}\n"
        ),
    )
    _old_single_fastagi(host, deploy_key, workdir / "old")
    ports = {name: free_port() for name in ("http", "https", "postgres", "redis", "inbound")}
    extra_vars: dict[str, object] = {
        "panel_wheel": str(panel_build.wheel),
        "panel_wheelhouse": str(panel_build.wheelhouse),
        "panel_server_names": ["panel.test", host.address],
        "panel_listen_addresses": [host.address],
        "panel_http_port": ports["http"],
        "panel_https_port": ports["https"],
        "panel_postgres_port": ports["postgres"],
        "panel_redis_port": ports["redis"],
        # The FastAGI servers on every address, the role's default ports; only the "Asterisk
        # node" (this machine's gateway address on the pair) may connect.
        "panel_fastagi_address": "0.0.0.0",  # noqa: S104  (in the host's own namespace)
        "panel_fastagi_allow": [f"{netns.gateway}/32", "127.0.0.0/8"],
        "panel_inbound_listen": f"127.0.0.1:{ports['inbound']}",
        "panel_gunicorn_workers": 2,
        "panel_worker_concurrency": 2,
        "panel_apt_cache_valid_time": APT_CACHE_VALID,
    }
    secrets_ = {
        "panel_secret_key": secrets.token_urlsafe(50),
        "panel_db_password": secrets.token_hex(16),
        "panel_redis_password": secrets.token_hex(16),
    }

    def deploy(name: str, **more: object) -> PlaybookRun:
        # The AMI secrets come from the vault, as the example inventory has them.
        return run_playbook(
            "panel.yml",
            host,
            deploy_key,
            group="panel",
            workdir=workdir / name,
            extra_vars={**extra_vars, **more},
            secrets_={**secrets_, "panel_asterisk_ami": ASTERISK_AMI},
        )

    first = deploy("first")
    assert first.returncode == 0, first.output[-5000:]
    return Deployment(host, netns, ports, secrets_, first, deploy)


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


def test_nginx_takes_uploads_up_to_the_panels_limit_and_says_it_beyond(
    deployed: Deployment,
) -> None:
    """One limit for the panel and nginx (panel_upload_max_mb): a rate deck the panel would
    take is never cut off by a bare 413, and one beyond it gets the limit in words."""
    assert "PANEL_UPLOAD_MAX_MB='50'" in deployed.host.run(["cat", ENV_FILE])
    wait_for_port(deployed.ports["https"], timeout=30, address=deployed.address)
    megabyte = 1024 * 1024
    headers = {"Content-Type": "application/octet-stream"}
    web = deployed.https()
    # Through nginx to Django, which refuses an anonymous POST (403, CSRF), not nginx (413).
    status, _headers, _page = _request(
        web, "POST", "/calls/staff/decks/", body=b"x" * (50 * megabyte), headers=headers
    )
    assert status == 403
    web.close()
    web = deployed.https()
    status, _headers, page = _request(
        web, "POST", "/calls/staff/decks/", body=b"x" * (52 * megabyte), headers=headers
    )
    assert status == 413
    assert "larger than 50 MB, the largest upload the panel takes" in page
    web.close()


def test_the_panel_answers_over_https_and_http_redirects(deployed: Deployment) -> None:
    wait_for_port(deployed.ports["https"], timeout=30, address=deployed.address)
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

    plain = http.client.HTTPConnection(deployed.address, deployed.ports["http"], timeout=10)
    status, headers, _body = _request(plain, "GET", "/accounts/login/")
    assert status == 301
    assert headers["location"] == f"{deployed.base}/accounts/login/"
    plain.close()
    # Names the panel does not answer to get no answer at all.
    stranger = http.client.HTTPConnection(deployed.address, deployed.ports["http"], timeout=10)
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


def test_the_worker_answers_and_beat_the_fastagi_servers_and_inbound_run(
    deployed: Deployment,
) -> None:
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
    # panel-beat leads (the only host) and runs celery beat as its child.
    leader = host.run(["cat", "/run/panel-beat.pid"]).strip()

    def beat_child() -> tuple[bool, str]:
        children = host.run(["cat", f"/proc/{leader}/task/{leader}/children"]).split()
        lines = [host.run(["cat", f"/proc/{c}/cmdline"]).replace("\0", " ") for c in children]
        return any("celery" in line and " beat " in line for line in lines), str(lines)

    _eventually(beat_child, timeout=30, what="panel-beat runs no celery beat")
    for port in FASTAGI_PORTS:
        wait_for_port(port, timeout=30, address=deployed.address)
    # The inbound endpoint listens on the host's loopback, out of this machine's reach.
    _eventually(
        lambda: (bool(_listener(host, deployed.ports["inbound"])), _log(host, "panel-inbound")),
        timeout=30,
        what="nothing listens for inbound mail",
    )


def test_one_fastagi_service_per_port_with_its_own_listen_address(deployed: Deployment) -> None:
    host = deployed.host
    environment = host.run(["cat", ENV_FILE])
    # For manage.py (dialin_check, asterisk_dialplan): the first server.
    assert f"FASTAGI_LISTEN='0.0.0.0:{FASTAGI_PORTS[0]}'" in environment
    assert f"FASTAGI_ALLOW='{deployed.netns.gateway}/32,127.0.0.0/8'" in environment
    assert "FASTAGI_DRAIN_SECONDS='30'" in environment
    assert "FASTAGI_SETTLE_SESSIONS='16'" in environment
    assert "FASTAGI_MAX_PER_PEER='80'" in environment
    # Both forms, sorted by name.
    assert (
        f"ASTERISK_AMI='voice-2=ami://panel:{AMI_SECRET}@10.0.0.6:5038,"
        f"voice1=ami://panel:{AMI_SECRET}@10.0.0.5:5038'"
    ) in environment
    uid = host.run(["id", "-u", "panel"]).strip()
    for port in FASTAGI_PORTS:
        name = f"panel-fastagi-{port}"
        assert f"FASTAGI_LISTEN='0.0.0.0:{port}'" in host.run(["cat", f"/etc/default/{name}"])
        unit = host.run(["cat", f"/etc/systemd/system/{name}.service"])
        assert f"EnvironmentFile=/etc/default/{name}" in unit
        # Longer than the drain (30 s): a stop lets the calls' sessions finish.
        assert "TimeoutStopSec=45" in unit
        assert "--retry=TERM/45/KILL/5" in host.run(["cat", f"/etc/init.d/{name}"])
        pid = int(host.run(["cat", f"/run/{name}.pid"]))
        assert _listener(host, port) == [pid], _log(host, name)
        environ = host.run(["cat", f"/proc/{pid}/environ"]).split("\0")
        assert f"FASTAGI_LISTEN=0.0.0.0:{port}" in environ
        assert f"Uid:\t{uid}" in host.run(["cat", f"/proc/{pid}/status"])


def test_the_old_single_fastagi_service_is_gone(deployed: Deployment) -> None:
    host = deployed.host
    for path in (
        "/etc/init.d/panel-fastagi",
        "/etc/systemd/system/panel-fastagi.service",
        "/run/panel-fastagi.pid",
    ):
        assert not host.exists(path), path
    links = host.run(["sh", "-c", "ls /etc/rc*.d/ | grep -x '[SK][0-9]*panel-fastagi' || true"])
    assert links.strip() == ""
    assert "http.server" not in host.run(["ps", "-eo", "args"])


def test_the_firewall_lets_only_the_asterisk_nodes_reach_fastagi(deployed: Deployment) -> None:
    host, netns = deployed.host, deployed.netns
    for port in FASTAGI_PORTS:
        assert _connects(netns.gateway, netns.address, port), f"allowed address, port {port}"
        # Dropped: no answer at all, not even a refusal.
        error = _connect(netns.stranger, netns.address, port)
        assert error not in (0, errno.ECONNREFUSED), f"stranger, port {port}: {error}"
        # From the host itself (loopback) too.
        assert (
            host.run(
                [
                    "python3",
                    "-c",
                    f"import socket; socket.create_connection(('127.0.0.1', {port}), 5)"
                    "; print('ok')",
                ]
            ).strip()
            == "ok"
        )
    # Only the FastAGI ports: the stranger reaches the web server.
    assert _connects(netns.stranger, netns.address, deployed.ports["https"])
    table = host.run(["nft", "list", "table", "inet", FIREWALL_TABLE])
    assert "tcp dport { 4573, 4574 } jump fastagi" in table, table
    # The admins' table is untouched.
    assert "192.0.2.7" in host.run(["nft", "list", "table", "inet", "admins_own"])
    # Loaded at boot: the init script is in rcS (systemd hosts get the unit, enabled).
    links = host.run(["ls", "/etc/rcS.d"])
    assert re.search(r"^S\d+commune-panel-fastagi-firewall$", links, re.M), links
    assert host.exists("/etc/systemd/system/commune-panel-fastagi-firewall.service")


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


@dataclass
class Probe:
    """Connects to both FastAGI ports over and over, from the allowed address, and notes which
    ones accepted: one round a few milliseconds long, both ports in it."""

    netns: NetNS
    rounds: list[tuple[float, bool, bool]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            up = [
                _connects(self.netns.gateway, self.netns.address, port, timeout=0.5)
                for port in FASTAGI_PORTS
            ]
            self.rounds.append((time.monotonic(), up[0], up[1]))
            time.sleep(0.02)


def test_an_upgrade_restarts_the_fastagi_servers_one_at_a_time(
    deployed: Deployment, artifacts: Path
) -> None:
    """A changed environment restarts every service, as a new wheel does: the FastAGI servers
    one after the other, never both down at once, each in a new process."""
    host = deployed.host
    before = {port: _listener(host, port) for port in FASTAGI_PORTS}
    probe = Probe(deployed.netns)
    thread = threading.Thread(target=probe.run, daemon=True)
    thread.start()
    try:
        upgrade = deployed.deploy("upgrade", panel_extra_env={"PANEL_TEST_UPGRADE": "1"})
    finally:
        probe.stop.set()
        thread.join(timeout=10)
    assert upgrade.returncode == 0, upgrade.output[-5000:]
    after = {port: _listener(host, port) for port in FASTAGI_PORTS}
    for port in FASTAGI_PORTS:
        assert after[port], (before, after)
        assert set(after[port]).isdisjoint(before[port]), (before, after)
    both_down = [t for t, first, second in probe.rounds if not first and not second]
    start = probe.rounds[0][0] if probe.rounds else 0.0
    down = {
        port: [t - start for t, *up in probe.rounds if not up[index]]
        for index, port in enumerate(FASTAGI_PORTS)
    }
    (artifacts / "ansible-panel-fastagi-restart.txt").write_text(
        f"probe rounds: {len(probe.rounds)}\n"
        + "".join(
            f"port {port}: down in {len(times)} rounds"
            + (f", {min(times):.2f} s .. {max(times):.2f} s into the run" if times else "")
            + "\n"
            for port, times in down.items()
        )
        + f"both down in {len(both_down)} rounds\n"
    )
    assert both_down == []
    # The probe saw each restart (so it would have seen an overlap), the first one done
    # before the second began.
    first, second = (down[port] for port in FASTAGI_PORTS)
    assert first, down
    assert second, down
    assert max(first) < min(second)

"""A real hosting node for tests: Debian in a chroot, in its own mount and PID namespaces.

The cached rootfs is the lower layer of an overlay, so every test host starts clean and the
cache is never written. sshd, nginx, PHP-FPM, Pebble (the ACME server) and its DNS helper
listen on 127.0.0.1 high ports; MariaDB and PostgreSQL on their sockets only. The node agent
is installed with provisioning/agent/install.sh, the same steps the Ansible role takes.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "provisioning" / "agent" / "panel_agent.py"
INSTALL = ROOT / "provisioning" / "agent" / "install.sh"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(
    port: int,
    *,
    timeout: float = 30.0,
    proc: subprocess.Popen[bytes] | None = None,
    address: str = "127.0.0.1",
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"test host exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((address, port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {address}:{port} after {timeout}s")


NETNS_STATE = Path("/run/commune-panel-test-netns")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class NetNS:
    """A network namespace of its own for a test host, and a veth pair to it from this machine.

    Inside, the host has ``address`` (10.231.N.2/24) and its own loopback; this machine's end of
    the pair has ``gateway`` (.1) and ``stranger`` (.3), two source addresses a test can connect
    from. A firewall the host loads stays in its namespace: this machine's own is never touched.
    Nothing is routed beyond the pair (the host reaches no network but this machine).
    """

    number: int
    name: str = ""
    outer: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"commune-test-{self.number}"
        self.outer = self.outer or f"cptv{self.number}"

    @property
    def prefix(self) -> str:
        return f"10.231.{self.number}"

    @property
    def address(self) -> str:
        return f"{self.prefix}.2"

    @property
    def gateway(self) -> str:
        return f"{self.prefix}.1"

    @property
    def stranger(self) -> str:
        return f"{self.prefix}.3"

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    @classmethod
    def create(cls) -> NetNS:
        """A new namespace, in a /24 no interface of this machine uses. Needs root.

        Namespaces that test sessions left behind (killed before their cleanup) go first: each
        records the PID of the session that made it.
        """
        NETNS_STATE.mkdir(parents=True, exist_ok=True)
        with (NETNS_STATE / "lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for owner in NETNS_STATE.glob("*.owner"):
                if not _pid_alive(int(owner.read_text().strip() or 0)):
                    cls(int(owner.stem))._remove()
                    owner.unlink(missing_ok=True)
            used = _ip("-4", "-o", "addr", "show").stdout
            taken = {int(p.stem) for p in NETNS_STATE.glob("*.owner")}
            for number in range(1, 255):
                netns = cls(number)
                if number in taken or f" {netns.prefix}." in used:
                    continue
                if Path(netns.path).exists():
                    continue
                (NETNS_STATE / f"{number}.owner").write_text(f"{os.getpid()}\n")
                try:
                    netns._add()
                except Exception:
                    netns.close()
                    raise
                return netns
        raise RuntimeError("no free 10.231.N.0/24 for a test network namespace")

    def _add(self) -> None:
        inner = f"cptp{self.number}"
        _ip("netns", "add", self.name)
        _ip("link", "add", self.outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", self.name)
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.outer)
        _ip("addr", "add", f"{self.stranger}/24", "dev", self.outer)
        _ip("link", "set", self.outer, "up")
        _ip("-n", self.name, "addr", "add", f"{self.address}/24", "dev", inner)
        _ip("-n", self.name, "link", "set", inner, "up")
        _ip("-n", self.name, "link", "set", "lo", "up")

    def _remove(self) -> None:
        # Deleting this end deletes the other one too.
        _ip("link", "del", self.outer, check=False)
        _ip("netns", "del", self.name, check=False)

    def close(self) -> None:
        """Remove the pair and the namespace (once its processes are gone, the kernel frees it)."""
        self._remove()
        (NETNS_STATE / f"{self.number}.owner").unlink(missing_ok=True)


@dataclass
class BridgePort:
    """One host's place on a Bridge: a network namespace of its own, joined to the bridge by
    a veth pair.

    It offers what TestHost needs of a NetNS (``path``, ``address``), so a host started with it
    reaches every other host on the bridge, and this machine reaches it from ``gateway``.
    """

    bridge: Bridge
    index: int

    @property
    def name(self) -> str:
        return f"commune-br{self.bridge.number}-{self.index}"

    @property
    def inner(self) -> str:
        return f"cpbi{self.bridge.number}-{self.index}"

    @property
    def outer(self) -> str:
        return f"cpbo{self.bridge.number}-{self.index}"

    @property
    def address(self) -> str:
        return f"{self.bridge.prefix}.{10 + self.index}"

    @property
    def gateway(self) -> str:
        return self.bridge.gateway

    @property
    def stranger(self) -> str:
        return self.bridge.stranger

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def _add(self) -> None:
        _ip("netns", "add", self.name)
        _ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        _ip("link", "set", self.inner, "netns", self.name)
        _ip("link", "set", self.outer, "master", self.bridge.device)
        _ip("link", "set", self.outer, "up")
        _ip("-n", self.name, "addr", "add", f"{self.address}/24", "dev", self.inner)
        _ip("-n", self.name, "link", "set", self.inner, "up")
        _ip("-n", self.name, "link", "set", "lo", "up")

    def down(self) -> None:
        """Cut the host off the network, as a pulled cable does: its processes go on, and
        nothing reaches them or leaves them (connections in progress hang, not reset)."""
        _ip("link", "set", self.outer, "down")

    def up(self) -> None:
        _ip("link", "set", self.outer, "up")

    def _remove(self) -> None:
        _ip("link", "del", self.outer, check=False)
        _ip("netns", "del", self.name, check=False)


@dataclass
class Bridge:
    """A bridge on this machine for several test hosts that talk to each other (a cluster).

    10.232.N.0/24: this machine has .1 (``gateway``) and .3 (``stranger``, a source address the
    hosts do not know) on the bridge, the hosts .10 and up, each in a network namespace of its
    own (``attach``). Nothing is routed beyond the bridge: the hosts reach each other and this
    machine, no other network. A firewall a host loads stays in its namespace.
    """

    number: int
    ports: list[BridgePort] = field(default_factory=list)

    @property
    def device(self) -> str:
        return f"cpbr{self.number}"

    @property
    def prefix(self) -> str:
        return f"10.232.{self.number}"

    @property
    def gateway(self) -> str:
        return f"{self.prefix}.1"

    @property
    def stranger(self) -> str:
        return f"{self.prefix}.3"

    @classmethod
    def create(cls) -> Bridge:
        """A new bridge, in a /24 no interface of this machine uses; bridges that killed test
        sessions left behind go first (as NetNS.create does). Needs root."""
        NETNS_STATE.mkdir(parents=True, exist_ok=True)
        with (NETNS_STATE / "lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            for owner in NETNS_STATE.glob("bridge-*.owner"):
                if not _pid_alive(int(owner.read_text().split()[0] or 0)):
                    stale = cls(int(owner.stem.removeprefix("bridge-")))
                    for index in owner.read_text().split()[1:]:
                        BridgePort(stale, int(index))._remove()
                    stale._remove()
                    owner.unlink(missing_ok=True)
            used = _ip("-4", "-o", "addr", "show").stdout
            taken = {
                int(p.stem.removeprefix("bridge-")) for p in NETNS_STATE.glob("bridge-*.owner")
            }
            for number in range(1, 255):
                bridge = cls(number)
                if number in taken or f" {bridge.prefix}." in used:
                    continue
                bridge._record()
                try:
                    _ip("link", "add", bridge.device, "type", "bridge")
                    _ip("addr", "add", f"{bridge.gateway}/24", "dev", bridge.device)
                    _ip("addr", "add", f"{bridge.stranger}/24", "dev", bridge.device)
                    _ip("link", "set", bridge.device, "up")
                except Exception:
                    bridge.close()
                    raise
                return bridge
        raise RuntimeError("no free 10.232.N.0/24 for a test bridge")

    def _record(self) -> None:
        owner = NETNS_STATE / f"bridge-{self.number}.owner"
        owner.write_text(" ".join([str(os.getpid()), *(str(p.index) for p in self.ports)]) + "\n")

    def attach(self) -> BridgePort:
        """A new host's place on the bridge (pass it as a TestHost's netns)."""
        port = BridgePort(self, len(self.ports))
        self.ports.append(port)
        self._record()
        port._add()
        return port

    def _remove(self) -> None:
        _ip("link", "del", self.device, check=False)

    def close(self) -> None:
        for port in self.ports:
            port._remove()
        self._remove()
        (NETNS_STATE / f"bridge-{self.number}.owner").unlink(missing_ok=True)


def _minica(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a certificate for 127.0.0.1 / localhost (Pebble's own HTTPS)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test host minica")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = (
        directory / "ca.pem",
        directory / "cert.pem",
        directory / "key.pem",
    )
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


NGINX_CONF = """user www-data;
worker_processes 2;
pid /run/nginx.pid;
error_log /var/log/nginx/error.log;
events {{ worker_connections 512; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on;
    server_names_hash_bucket_size 128;
    server_names_hash_max_size 4096;
    access_log /var/log/nginx/access.log;
    include /etc/nginx/conf.d/*.conf;
    server {{
        listen {http_port} default_server;
        server_name _;
        return 404;
    }}
}}
"""

# The host's PID 1, after the start: it reaps orphans, as an init does. Daemons that end (an
# init script's stop) are its children; left as zombies, start-stop-daemon would take them for
# running (a stop would wait its whole timeout, a start would not start).
REAPER = (
    "python3 -c 'import os, time\n"
    "while True:\n"
    "    try:\n"
    "        os.wait()\n"
    "    except ChildProcessError:\n"
    "        time.sleep(1)\n'"
)

INIT = """#!/bin/sh
# PID 1 of the test host: install the agent, start the services, keep sshd in front.
set -e
mkdir -p /run/sshd /run/php /var/log/nginx /tmp
chmod 1777 /tmp
/usr/local/lib/panel-agent/install.sh \\
  /testhost/panel_agent.py /testhost/config.json /testhost/panel.pub
# Every host gets its own keys (the cached rootfs must not hand out the same ones).
rm -f /etc/ssh/ssh_host_*
ssh-keygen -A >/dev/null
php-fpm8.2 --daemonize --fpm-config /etc/php/8.2/fpm/php-fpm.conf
# MariaDB for site databases: socket only, as on a hosting node.
install -d -o mysql -g mysql /run/mysqld
mariadbd --user=mysql --skip-networking --socket=/run/mysqld/mysqld.sock \\
  >/var/log/mariadb.log 2>&1 &
# PostgreSQL for site databases too: socket only (this machine's own server has 127.0.0.1:5432),
# no TLS (nothing reaches it over a network).
install -d -o postgres -g postgres /run/postgresql
runuser -u postgres -- /usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main \\
  -c config_file=/etc/postgresql/15/main/postgresql.conf -c listen_addresses= -c ssl=off \\
  >/var/log/postgresql.log 2>&1 &
nginx
pebble-challtestsrv -defaultIPv4 127.0.0.1 -defaultIPv6 "" -dns01 127.0.0.1:{dns_port} \\
  -http01 "" -https01 "" -tlsalpn01 "" -management 127.0.0.1:{challtest_port} \\
  >/var/log/challtestsrv.log 2>&1 &
PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 PEBBLE_AUTHZREUSE=0 \\
  pebble -config /testhost/pebble.json -dnsserver 127.0.0.1:{dns_port} -strict=false \\
  >/var/log/pebble.log 2>&1 &
/usr/local/sbin/testhost-sshd
# PID 1 keeps the namespace alive (sshd can be stopped and started under it) and reaps the
# daemons that end.
exec {reaper}
"""

# A bare host: what a freshly installed server offers an admin, sshd with root's key, and
# nothing else of ours; the Ansible roles must do the rest. Pebble is the test's certificate
# authority (the internet's, not the host's), so it runs here too.
INIT_BARE = """#!/bin/sh
set -e
mkdir -p /run/sshd /tmp
chmod 1777 /tmp
rm -f /etc/ssh/ssh_host_*
ssh-keygen -A >/dev/null
pebble-challtestsrv -defaultIPv4 127.0.0.1 -defaultIPv6 "" -dns01 127.0.0.1:{dns_port} \\
  -http01 "" -https01 "" -tlsalpn01 "" -management 127.0.0.1:{challtest_port} \\
  >/var/log/challtestsrv.log 2>&1 &
PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 PEBBLE_AUTHZREUSE=0 \\
  pebble -config /testhost/pebble.json -dnsserver 127.0.0.1:{dns_port} -strict=false \\
  >/var/log/pebble.log 2>&1 &
/usr/local/sbin/testhost-sshd
exec {reaper}
"""

SSHD = """#!/bin/sh
exec /usr/sbin/sshd -E /var/log/sshd.log -p {ssh_port} -o ListenAddress={address} -o UseDNS=no \\
  -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no -o LogLevel=VERBOSE
"""


@dataclass
class TestHost:
    __test__ = False  # a helper named Test*, not a test class for pytest to collect

    rootfs: Path
    workdir: Path
    panel_public_key: str
    ssh_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    https_port: int = field(default_factory=free_port)
    pebble_port: int = field(default_factory=free_port)
    pebble_mgmt_port: int = field(default_factory=free_port)
    dns_port: int = field(default_factory=free_port)
    challtest_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    host_key: str = ""
    ca_path: Path | None = None
    # Bare: only sshd (root logs in with root_public_key) and the test CA; see INIT_BARE.
    bare: bool = False
    root_public_key: str = ""
    # Bare hosts: directories of this machine mounted into the host, (source, path inside);
    # e.g. a build cache that outlives the host.
    bind_mounts: list[tuple[Path, str]] = field(default_factory=list)
    # A network namespace of its own (NetNS): sshd listens on its address instead of
    # 127.0.0.1, and whatever the host does to its network (a firewall) stays there.
    netns: NetNS | BridgePort | None = None

    @property
    def address(self) -> str:
        """Where this machine reaches the host's services (sshd, and what the host listens on
        besides its loopback)."""
        return self.netns.address if self.netns is not None else "127.0.0.1"

    @property
    def upper(self) -> Path:
        return self.workdir / "upper"

    @property
    def merged(self) -> Path:
        return self.workdir / "merged"

    @property
    def acme_directory(self) -> str:
        return f"https://127.0.0.1:{self.pebble_port}/dir"

    def _stage(self) -> None:
        """Files for the host, written into the overlay's upper layer before it is mounted."""
        for sub in ("upper", "work", "merged"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        stage = self.upper / "testhost"
        stage.mkdir(parents=True, exist_ok=True)
        ca, _cert, _key = _minica(stage / "pebble-tls")
        self.ca_path = ca
        self._stage_pebble(stage)
        sbin = self.upper / "usr" / "local" / "sbin"
        sbin.mkdir(parents=True, exist_ok=True)
        sshd = sbin / "testhost-sshd"
        sshd.write_text(SSHD.format(ssh_port=self.ssh_port, address=self.address))
        sshd.chmod(0o755)
        init = sbin / "testhost-init"
        ports = {"dns_port": self.dns_port, "challtest_port": self.challtest_port}
        if self.bare:
            dot_ssh = self.upper / "root" / ".ssh"
            dot_ssh.mkdir(parents=True, mode=0o700, exist_ok=True)
            (dot_ssh / "authorized_keys").write_text(self.root_public_key + "\n")
            init.write_text(INIT_BARE.format(reaper=REAPER, **ports))
            init.chmod(0o755)
            return
        shutil.copy(AGENT, stage / "panel_agent.py")
        lib = self.upper / "usr" / "local" / "lib" / "panel-agent"
        lib.mkdir(parents=True, exist_ok=True)
        shutil.copy(INSTALL, lib / "install.sh")
        (stage / "panel.pub").write_text(self.panel_public_key + "\n")
        (stage / "config.json").write_text(
            json.dumps(
                {
                    "sites_root": "/srv/sites",
                    "vhost_dir": "/etc/nginx/panel-sites",
                    "state_dir": "/var/lib/panel-agent",
                    "backup_dir": "/var/backups/panel",
                    "log_dir": "/var/log/nginx/panel",
                    "http_port": self.http_port,
                    "https_port": self.https_port,
                    "php_fpm_reload": ["sh", "-c", "kill -USR2 $(cat /run/php/php8.2-fpm.pid)"],
                    "acme_ca_bundle": "/testhost/pebble-tls/ca.pem",
                    "reload_settle_s": 0.2,
                }
            )
        )
        nginx = self.upper / "etc" / "nginx"
        nginx.mkdir(parents=True, exist_ok=True)
        (nginx / "nginx.conf").write_text(NGINX_CONF.format(http_port=self.http_port))
        init.write_text(INIT.format(ssh_port=self.ssh_port, reaper=REAPER, **ports))
        init.chmod(0o755)

    def _stage_pebble(self, stage: Path) -> None:
        (stage / "pebble.json").write_text(
            json.dumps(
                {
                    "pebble": {
                        "listenAddress": f"127.0.0.1:{self.pebble_port}",
                        "managementListenAddress": f"127.0.0.1:{self.pebble_mgmt_port}",
                        "certificate": "/testhost/pebble-tls/cert.pem",
                        "privateKey": "/testhost/pebble-tls/key.pem",
                        "httpPort": self.http_port,
                        "tlsPort": self.https_port,
                        "ocspResponderURL": "",
                        "externalAccountBindingRequired": False,
                    }
                }
            )
        )

    def start(self) -> TestHost:
        assert self.bare or not self.bind_mounts, "bind mounts are for bare hosts"
        self._stage()
        binds = "".join(
            f"mkdir -p {shlex.quote(f'{self.merged}{inside}')}; "
            f"mount --bind {shlex.quote(str(source))} {shlex.quote(f'{self.merged}{inside}')}; "
            for source, inside in self.bind_mounts
        )
        launch = (
            "set -e; "
            f"mount -t overlay overlay -o lowerdir={self.rootfs},upperdir={self.upper},"
            f"workdir={self.workdir / 'work'} {self.merged}; "
            f"mount --rbind /dev {self.merged}/dev; "
            f"mount -t proc proc {self.merged}/proc; "
            f"mount -t tmpfs -o mode=755 tmpfs {self.merged}/run; "
            f"{binds}"
            f"exec chroot {self.merged} /usr/local/sbin/testhost-init"
        )
        log = (self.workdir / "host.log").open("wb")
        # nsenter execs unshare in the namespace, so the process stays unshare's (stop() ends
        # its group).
        enter = ["nsenter", f"--net={self.netns.path}"] if self.netns is not None else []
        self.proc = subprocess.Popen(
            [
                *enter,
                "unshare",
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--propagation",
                "private",
                "sh",
                "-c",
                launch,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            waited: tuple[int, ...] = (
                (self.ssh_port, self.pebble_port)
                if self.bare
                else (
                    self.ssh_port,
                    self.http_port,
                    self.pebble_port,
                )
            )
            if self.netns is not None:
                # Pebble listens on the namespace's loopback, out of this machine's reach.
                waited = (self.ssh_port,)
            for port in waited:
                wait_for_port(port, proc=self.proc, timeout=60, address=self.address)
        except Exception:
            self.stop()
            raise RuntimeError(f"test host did not start:\n{self.log()}") from None
        self.host_key = " ".join(self.run(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).split()[:2])
        return self

    def log(self) -> str:
        path = self.workdir / "host.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def init_pid(self) -> int:
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return int(children[0])

    def run(self, cmd: list[str], *, check: bool = True, input: str | None = None) -> str:
        """Run a command inside the host (its mounts, its PIDs, its root)."""
        done = subprocess.run(
            [
                "nsenter",
                "--target",
                str(self.init_pid()),
                "--mount",
                "--pid",
                *(["--net"] if self.netns is not None else []),
                "chroot",
                str(self.merged),
                *cmd,
            ],
            capture_output=True,
            text=True,
            input=input,
            check=False,
            timeout=60,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{cmd} failed in the test host: {done.stderr}")
        return done.stdout

    def exists(self, path: str) -> bool:
        return (
            self.run(["sh", "-c", 'test -e "$1" && echo yes', "sh", path], check=False).strip()
            == "yes"
        )

    def wait_for_databases(self, timeout: float = 30.0) -> None:
        """Wait until MariaDB and PostgreSQL answer on their sockets (they start in the
        background and may still be starting on a fresh host)."""
        deadline = time.monotonic() + timeout
        probes = [
            ["mariadb", "--batch", "--skip-column-names", "-e", "SELECT 1"],
            ["runuser", "-u", "postgres", "--", "psql", "-tAc", "SELECT 1"],
        ]
        for probe in probes:
            while self.run(probe, check=False).strip() != "1":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{probe[0]} does not answer in the test host")
                time.sleep(0.2)

    def stop_sshd(self) -> None:
        """Stop listening for SSH (sessions in progress go on, as with a real restart)."""
        self.run(["sh", "-c", "kill $(cat /run/sshd.pid)"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex((self.address, self.ssh_port)) != 0:
                    return
            time.sleep(0.05)
        raise TimeoutError("sshd did not stop")

    def start_sshd(self) -> None:
        self.run(["/usr/local/sbin/testhost-sshd"])
        wait_for_port(self.ssh_port, address=self.address)

    def http(
        self, host: str, path: str = "/", *, tls: bool = False, timeout: float = 5.0
    ) -> tuple[int, str]:
        """GET with a Host header against the node's nginx, like a browser for that domain."""
        port = self.https_port if tls else self.http_port
        scheme = "https" if tls else "http"
        request = urllib.request.Request(
            f"{scheme}://127.0.0.1:{port}{path}", headers={"Host": host}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def stop(self) -> None:
        # The host's PID 1 (the reaper) ignores SIGTERM, as every PID 1 without a handler does, so
        # a polite stop only waits; the host is thrown away, and SIGKILL to unshare's group
        # ends the namespace and everything in it.
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

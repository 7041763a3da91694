#!/usr/bin/env python3
"""The commune panel's node agent: one JSON request on stdin, one JSON answer on stdout.

It runs on every hosting node as the forced command of a dedicated SSH user (or, for a
single-server co-op, locally). It accepts only the verbs below, validates every field against
an allowlist pattern before anything touches the system, and answers with the state it finds
afterwards. Operations are "ensure": running one twice gives the same state, and a repeated
job uuid returns the recorded answer without doing anything.

What needs root runs in a second invocation of this same file through a fixed sudoers entry
(`panel-agent ALL=(root) NOPASSWD: /usr/local/lib/panel-agent/panel-agent --root`), which
validates the request again. Standard library only: nodes run Debian's python3.
"""

from __future__ import annotations

import fcntl
import grp
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

VERSION = "1"
CONFIG_PATH = Path(os.environ.get("PANEL_AGENT_CONFIG", "/etc/panel-agent/config.json"))
MAX_REQUEST = 256 * 1024

# Every pattern is used with fullmatch, never match or search with "$": "$" also matches before
# a trailing newline, and "a\n.com" would reach nginx as the names "a" and ".com" (nginx's
# wildcard for every .com name). [0-9] and [a-z] are ASCII only, unlike \d and \w.
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
USER = re.compile(r"s[0-9]{1,9}")
LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
KEY = re.compile(
    r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521|"
    r"sk-ssh-ed25519@openssh\.com) [A-Za-z0-9+/]{20,8192}={0,3}( [A-Za-z0-9@._+-]{0,100})?"
)
# A site's databases and their users are named after the site's system user: sN_1, sN_2...
# The "_" ends the user's part, so no site's names can be another's (s1_2 is not s12_...).
DB_SUFFIX = r"_[0-9]{1,6}"
# Refused even if a pattern ever let them through: the engines' own accounts and schemas.
RESERVED_DB_NAMES = {
    "postgres",
    "root",
    "mysql",
    "information_schema",
    "performance_schema",
    "sys",
    "template0",
    "template1",
    "mariadb.sys",
}
PASSWORD = re.compile(r"[A-Za-z0-9_-]{16,128}")
URL = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?")
EMAIL = re.compile(r"[A-Za-z0-9._+-]{1,64}@[A-Za-z0-9.-]{1,200}")
VERBS = {
    "node.facts",
    "site.ensure",
    "site.suspend",
    "site.resume",
    "site.remove",
    "site.purge",
    "key.ensure",
    "db.ensure",
    "cert.ensure",
    "usage.report",
}
ROOT_VERBS = VERBS - {"node.facts", "usage.report"}


class Refused(Exception):
    """The request is not acceptable; nothing was done. Permanent: retrying will not help."""


class Failed(Exception):
    """The request was valid but the system could not do it (may be transient)."""


# Validation -----------------------------------------------------------------------------------


def domain(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.isascii():
        raise Refused(f"{where}: a domain is ASCII (IDN in punycode, xn--)")
    name = value.lower()
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(LABEL.fullmatch(label) for label in labels):
        raise Refused(f"{where}: {value!r} is not a valid domain name")
    if labels[-1].isdigit():
        raise Refused(f"{where}: {value!r} looks like an address, not a domain")
    return name


def field(spec: dict[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = spec.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise Refused(f"field {name!r} is missing or does not match {pattern.pattern}")
    return value


def site_db_name(spec: dict[str, Any], name: str, user: str) -> str:
    """A database or database user of site ``user``, and of no one else.

    The agent is the last line of defence when the panel is compromised: a request about one
    site must not reach the engines' own accounts (postgres, root), their schemas, or
    another site's databases.
    """
    value = spec.get(name)
    if (
        not isinstance(value, str)
        or not re.fullmatch(re.escape(user) + DB_SUFFIX, value)
        or value in RESERVED_DB_NAMES
    ):
        raise Refused(f"field {name!r} must be one of site {user}'s own names ({user}_N)")
    return value


def integer(spec: dict[str, Any], name: str, low: int, high: int) -> int:
    value = spec.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise Refused(f"field {name!r} must be an integer from {low} to {high}")
    return value


def validate(request: Any) -> dict[str, Any]:
    """The request, with every field checked; unknown verbs and fields are refused."""
    if not isinstance(request, dict):
        raise Refused("the request is a JSON object")
    unknown = set(request) - {"uuid", "verb", "spec"}
    if unknown:
        raise Refused(f"unknown request fields {sorted(unknown)}")
    verb = request.get("verb")
    if not isinstance(verb, str) or verb not in VERBS:
        raise Refused(f"unknown verb {verb!r}")
    uuid = field(request, "uuid", UUID)
    spec = request.get("spec", {})
    if not isinstance(spec, dict):
        raise Refused("spec is a JSON object")
    clean: dict[str, Any] = {}
    allowed: set[str] = set()
    if verb in {
        "site.ensure",
        "site.suspend",
        "site.resume",
        "site.remove",
        "site.purge",
        "key.ensure",
        "cert.ensure",
        "db.ensure",
    }:
        clean["user"] = field(spec, "user", USER)
        allowed.add("user")
    if verb in {"site.ensure", "site.suspend", "site.resume", "cert.ensure"}:
        domains = spec.get("domains")
        if not isinstance(domains, list) or not 1 <= len(domains) <= 50:
            raise Refused("field 'domains' is a list of 1 to 50 names")
        clean["domains"] = [domain(d, f"domains[{i}]") for i, d in enumerate(domains)]
        if len(set(clean["domains"])) != len(clean["domains"]):
            raise Refused("field 'domains' has a name twice")
        allowed.add("domains")
    if verb in {"site.ensure", "site.suspend", "site.resume"}:
        kind = spec.get("kind")
        if kind not in ("static", "php"):
            raise Refused("field 'kind' is 'static' or 'php'")
        state = spec.get("state", "active")
        if state not in ("active", "suspended"):
            raise Refused("field 'state' is 'active' or 'suspended'")
        clean.update(kind=kind, state=state, quota_mb=integer(spec, "quota_mb", 10, 10_000_000))
        clean["tls"] = bool(spec.get("tls", False))
        allowed |= {"kind", "state", "quota_mb", "tls", "keys"}
    if verb in {"site.ensure", "site.suspend", "site.resume", "key.ensure"}:
        keys = spec.get("keys", [])
        if not isinstance(keys, list) or len(keys) > 100:
            raise Refused("field 'keys' is a list of at most 100 public keys")
        for i, key in enumerate(keys):
            if not isinstance(key, str) or not KEY.fullmatch(key):
                raise Refused(f"keys[{i}] is not a single OpenSSH public key")
        clean["keys"] = keys
        allowed.add("keys")
    if verb == "db.ensure":
        engine = spec.get("engine")
        if engine not in ("mariadb", "postgresql"):
            raise Refused("field 'engine' is 'mariadb' or 'postgresql'")
        clean.update(
            engine=engine,
            name=site_db_name(spec, "name", clean["user"]),
            db_user=site_db_name(spec, "db_user", clean["user"]),
            password=field(spec, "password", PASSWORD),
        )
        allowed |= {"engine", "name", "db_user", "password"}
    if verb == "cert.ensure":
        clean["directory"] = field(spec, "directory", URL)
        clean["email"] = field(spec, "email", EMAIL)
        allowed |= {"directory", "email"}
    extra = set(spec) - allowed
    if extra:
        raise Refused(f"unknown spec fields {sorted(extra)} for {verb}")
    return {"uuid": uuid, "verb": verb, "spec": clean}


# Configuration and paths ----------------------------------------------------------------------


def load_config() -> dict[str, Any]:
    config = json.loads(CONFIG_PATH.read_text())
    for name in ("sites_root", "vhost_dir", "state_dir", "backup_dir", "log_dir"):
        config[name] = Path(config[name])
    config.setdefault("privileged", True)
    config.setdefault("http_port", 80)
    config.setdefault("https_port", 443)
    config.setdefault("sftp_group", "panel-sftp")
    config.setdefault("keys_dir", "/etc/ssh/panel-keys")
    config.setdefault("php_pool_dir", "/etc/php/8.2/fpm/pool.d")
    config.setdefault("php_socket_dir", "/run/php")
    config.setdefault("nginx", ["nginx"])
    config.setdefault("php_fpm_reload", ["pkill", "-USR2", "-f", "php-fpm: master"])
    config.setdefault("reload_settle_s", 0.3)
    # Readable by the web server's workers (the agent's own state directory is not).
    config["pages_dir"] = Path(config.get("pages_dir", "/var/www/panel-pages"))
    # lego runs as a user of its own (not root, not a site's): its account, keys and
    # certificates in acme_dir, the HTTP-01 answers in acme_webroot, which every site's vhost
    # serves /.well-known/acme-challenge/ from and no site user can write.
    config.setdefault("acme_user", "panel-acme")
    config["acme_dir"] = Path(config.get("acme_dir", "/var/lib/panel-acme"))
    config["acme_webroot"] = Path(config.get("acme_webroot", "/var/www/panel-acme"))
    return config


def inside(root: Path, *parts: str) -> Path:
    """``root/parts`` canonicalised, refusing anything that would leave ``root``."""
    path = (root.joinpath(*parts)).resolve()
    if path != root.resolve() and root.resolve() not in path.parents:
        raise Refused(f"path {path} is outside {root}")
    return path


def run(cmd: list[str], *, stdin: str | None = None, timeout: int = 120) -> str:
    """Run a command with an argument list (never a shell); raise Failed with its output."""
    try:
        done = subprocess.run(  # noqa: S603  (argument lists built from validated fields)
            cmd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Failed(f"{cmd[0]}: {exc}") from exc
    if done.returncode != 0:
        raise Failed(
            f"{' '.join(cmd[:3])} failed ({done.returncode}): {done.stderr.strip()[-500:]}"
        )
    return done.stdout


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    """Write atomically when the content differs; True when something changed."""
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)
    return True


# Web server -----------------------------------------------------------------------------------

VHOST = """# Managed by the commune panel agent; changes are overwritten.
server {{
    listen {http_port};
    listen [::]:{http_port};
    server_name {names};
    access_log {log_dir}/{user}.access.log panel;
    error_log {log_dir}/{user}.error.log;
    root {root};
    index index.html index.php;
    location ^~ /.well-known/acme-challenge/ {{ root {acme_webroot}; try_files $uri =404; }}
{tls_redirect}{body}
}}
{tls_server}"""

TLS_SERVER = """server {{
    listen {https_port} ssl;
    listen [::]:{https_port} ssl;
    server_name {names};
    ssl_certificate {cert};
    ssl_certificate_key {key};
    access_log {log_dir}/{user}.access.log panel;
    error_log {log_dir}/{user}.error.log;
    root {root};
    index index.html index.php;
{body}
}}
"""

STATIC_BODY = "    location / { try_files $uri $uri/ =404; }\n"
PHP_BODY = """    location / {{ try_files $uri $uri/ /index.php?$args; }}
    location ~ \\.php$ {{
        try_files $uri =404;
        include fastcgi_params;
        fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
        fastcgi_pass unix:{socket};
    }}
"""
SUSPENDED_BODY = """    location / {{ return 503; }}
    error_page 503 /suspended.html;
    location = /suspended.html {{ root {pages}; internal; }}
"""
SUSPENDED_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Suspended</title></head>
<body><h1>This site is suspended</h1>
<p>Its owner can resume it in the co-op's panel.</p></body></html>
"""
PLACEHOLDER = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{domain}</title></head>
<body><h1>{domain}</h1><p>This site is hosted by the co-op. Upload your files over SFTP.</p>
</body></html>
"""
POOL = """; Managed by the commune panel agent.
[{user}]
user = {user}
group = {user}
listen = {socket}
listen.owner = www-data
listen.group = www-data
pm = ondemand
pm.max_children = 4
pm.process_idle_timeout = 30s
php_admin_value[open_basedir] = {root}:/tmp
"""


def site_paths(config: dict[str, Any], user: str) -> dict[str, Path]:
    home = inside(config["sites_root"], user)
    return {
        "home": home,
        "htdocs": home / "htdocs",
        "vhost": inside(config["vhost_dir"], f"{user}.conf"),
        "pool": inside(Path(config["php_pool_dir"]), f"{user}.conf"),
        "keys": inside(Path(config["keys_dir"]), user),
        "cert_dir": inside(config["acme_dir"], "certificates"),
        # Where lego kept certificates when it ran as root; served until they are renewed.
        "legacy_cert_dir": inside(config["state_dir"], "acme", "certificates"),
    }


def site_certificate(spec: dict[str, Any], paths: dict[str, Path]) -> tuple[Path, Path] | None:
    """The certificate and key the site's TLS server uses, when it has TLS and they exist."""
    if not spec.get("tls"):
        return None
    for directory in (paths["cert_dir"], paths["legacy_cert_dir"]):
        cert = directory / f"{spec['domains'][0]}.crt"
        key = directory / f"{spec['domains'][0]}.key"
        if cert.exists() and key.exists():
            return cert, key
    return None


def render_vhost(config: dict[str, Any], spec: dict[str, Any], paths: dict[str, Path]) -> str:
    user = spec["user"]
    socket = f"{config['php_socket_dir']}/panel-{user}.sock"
    if spec.get("state") == "suspended":
        body = SUSPENDED_BODY.format(pages=config["pages_dir"])
    elif spec["kind"] == "php":
        body = PHP_BODY.format(socket=socket)
    else:
        body = STATIC_BODY
    pair = site_certificate(spec, paths)
    common = {
        "names": " ".join(spec["domains"]),
        "log_dir": config["log_dir"],
        "user": user,
        "root": paths["htdocs"],
        "body": body,
    }
    tls_server = ""
    if pair:
        tls_server = TLS_SERVER.format(
            https_port=config["https_port"], cert=pair[0], key=pair[1], **common
        )
    return VHOST.format(
        http_port=config["http_port"],
        acme_webroot=config["acme_webroot"],
        tls_redirect="",
        tls_server=tls_server,
        **common,
    )


def nginx_check_and_reload(config: dict[str, Any]) -> None:
    """Test the whole configuration, then reload once for a burst of changes.

    Every change bumps a counter; whoever takes the lock waits a moment, reloads, and records
    the counter it reloaded; changes already covered by that reload do not reload again.
    """
    state = config["state_dir"]
    lock_path, wanted_path, done_path = (
        state / "reload.lock",
        state / "reload.wanted",
        state / "reload.done",
    )
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        wanted = int(wanted_path.read_text() or 0) if wanted_path.exists() else 0
        wanted += 1
        wanted_path.write_text(str(wanted))
    time.sleep(float(config["reload_settle_s"]))
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = int(done_path.read_text() or 0) if done_path.exists() else 0
        if done >= wanted:
            return  # a reload after our change already happened
        latest = int(wanted_path.read_text() or 0)
        run([*config["nginx"], "-t", "-q"])
        run([*config["nginx"], "-s", "reload"])
        done_path.write_text(str(latest))
        count_path = state / "reload.count"  # for operators (and tests): reloads so far
        count_path.write_text(
            str(int(count_path.read_text() or 0) + 1 if count_path.exists() else 1)
        )


# Root operations ------------------------------------------------------------------------------


def ensure_user(config: dict[str, Any], user: str, home: Path) -> bool:
    if not config["privileged"]:
        return False
    try:
        pwd.getpwnam(user)
        return False
    except KeyError:
        pass
    try:
        grp.getgrnam(config["sftp_group"])
    except KeyError:
        run(["groupadd", "--system", config["sftp_group"]])
    run(
        [
            "useradd",
            "--home-dir",
            str(home),
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--user-group",
            "--groups",
            config["sftp_group"],
            user,
        ]
    )
    return True


def chown(path: Path, user: str, config: dict[str, Any]) -> None:
    if config["privileged"]:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


# Disk quotas ----------------------------------------------------------------------------------


def mount_of(path: Path) -> tuple[str, str]:
    """The type and mount point of the filesystem that holds ``path`` (/proc/self/mounts)."""
    where = os.path.realpath(path)
    found = ("", "/")
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return found
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside_point = where == point or where.startswith(point.rstrip("/") + "/")
        if inside_point and len(point) >= len(found[1]):
            found = (fields[2], point)
    return found


def is_subvolume(path: Path) -> bool:
    """A btrfs subvolume's root directory is always inode 256."""
    try:
        return mount_of(path)[0] == "btrfs" and os.stat(path).st_ino == 256
    except OSError:
        return False


def quota_mode(config: dict[str, Any]) -> str:
    """How this node limits a site's disk: "btrfs" (quota groups), "setquota" (ext4/XFS user
    quotas on ``quota_filesystem``) or "" (it cannot). The config key ``quota`` says, or
    "auto" (the default) finds it out from the filesystem that holds the sites."""
    wanted = config.get("quota", "auto")
    if wanted in ("btrfs", "setquota"):
        return str(wanted)
    if wanted != "auto" or not config["privileged"]:
        return ""
    fstype = mount_of(config["sites_root"])[0]
    if fstype == "btrfs" and shutil.which("btrfs"):
        return "btrfs"
    if fstype in ("ext4", "xfs") and config.get("quota_filesystem") and shutil.which("setquota"):
        return "setquota"
    return ""


def quota_ensure(config: dict[str, Any], user: str, home: Path, quota_mb: int) -> dict[str, Any]:
    """Limit the site's disk to ``quota_mb``; what is enforced is reported, never assumed."""
    mode = quota_mode(config)
    limit = quota_mb * 1024 * 1024
    if mode == "btrfs":
        if not is_subvolume(home):
            return {"enforced": False, "why": "the site's home is no subvolume (made before)"}
        try:
            run(["btrfs", "qgroup", "limit", str(limit), str(home)])
        except Failed as exc:
            # Quotas switched off on the filesystem: say so (the role switches them on).
            return {"enforced": False, "why": str(exc)[-200:]}
        return {"enforced": True, "how": "btrfs", "limit_bytes": limit}
    if mode == "setquota":
        blocks = str(limit // 1024)  # 1 KiB blocks, soft = hard: writes past it fail
        run(["setquota", "-u", user, blocks, blocks, "0", "0", str(config["quota_filesystem"])])
        return {"enforced": True, "how": "setquota", "limit_bytes": limit}
    return {"enforced": False, "why": "this node's filesystem for sites has no quotas"}


def site_ensure(config: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    user = spec["user"]
    paths = site_paths(config, user)
    changed = []
    if ensure_user(config, user, paths["home"]):
        changed.append("user")
    # The SFTP chroot needs a root-owned home; the site's files live below it. On btrfs the
    # home is a subvolume of its own: its quota group is what limits the site's disk.
    if not paths["home"].exists():
        if config["privileged"] and mount_of(config["sites_root"])[0] == "btrfs":
            paths["home"].parent.mkdir(parents=True, exist_ok=True)
            run(["btrfs", "subvolume", "create", str(paths["home"])])
        else:
            paths["home"].mkdir(parents=True)
    paths["home"].chmod(0o755)
    if config["privileged"]:
        os.chown(paths["home"], 0, 0)
    if not paths["htdocs"].exists():
        paths["htdocs"].mkdir()
        (paths["htdocs"] / "index.html").write_text(PLACEHOLDER.format(domain=spec["domains"][0]))
        chown(paths["htdocs"], user, config)
        chown(paths["htdocs"] / "index.html", user, config)
        changed.append("htdocs")
    paths["htdocs"].chmod(0o755)
    config["log_dir"].mkdir(parents=True, exist_ok=True)
    write_if_changed(config["pages_dir"] / "suspended.html", SUSPENDED_PAGE)
    if keys_ensure(config, user, spec.get("keys", [])):
        changed.append("keys")
    if spec["kind"] == "php" and spec["state"] == "active":
        socket = f"{config['php_socket_dir']}/panel-{user}.sock"
        pool = POOL.format(user=user, socket=socket, root=paths["home"])
        if write_if_changed(paths["pool"], pool):
            changed.append("php")
            run(list(config["php_fpm_reload"]))
    elif paths["pool"].exists():
        paths["pool"].unlink()
        changed.append("php")
        run(list(config["php_fpm_reload"]))
    if write_if_changed(paths["vhost"], render_vhost(config, spec, paths)):
        changed.append("vhost")
        try:
            nginx_check_and_reload(config)
        except Failed:
            paths["vhost"].unlink()  # never leave a configuration nginx refuses
            raise
    quota = quota_ensure(config, user, paths["home"], spec["quota_mb"])
    expected = 503 if spec["state"] == "suspended" else None
    pair = site_certificate(spec, paths)
    return {
        "changed": changed,
        "quota": quota,
        "served": {
            name: served(config, name, expected, cert=pair[0] if pair else None)
            for name in spec["domains"]
        },
        **site_state(config, user),
    }


def served(
    config: dict[str, Any],
    name: str,
    expected: int | None,
    wait_s: float = 5.0,
    cert: Path | None = None,
) -> int:
    """The HTTP status the node's web server gives for ``name`` once the reload took effect.

    A reload is asynchronous (old workers finish their requests), so ask until the answer is
    the one this configuration gives, or the time is up; the status found is reported. With
    ``cert``, until the TLS handshake for ``name`` hands out that certificate too: the HTTP
    answer alone cannot tell an old worker from a new one when only TLS changed.
    """
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + wait_s
    status = 0
    while True:
        request = urllib.request.Request(
            f"http://127.0.0.1:{config['http_port']}/", headers={"Host": name}, method="HEAD"
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as response:  # noqa: S310
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError:
            status = 0
        good = status == expected if expected else status in (200, 301, 302, 403)
        if good and cert is not None:
            good = serves_certificate(config, name, cert)
        if good or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def serves_certificate(config: dict[str, Any], name: str, cert: Path) -> bool:
    """Whether nginx hands out ``cert`` (its first, the site's own) in a handshake for ``name``."""
    import socket
    import ssl

    try:
        pem = cert.read_text()
        leaf = ssl.PEM_cert_to_DER_cert(pem[: pem.index(ssl.PEM_FOOTER) + len(ssl.PEM_FOOTER)])
    except (OSError, ValueError):
        return False
    # Not a verification (that is the client's business): only which certificate comes back.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", config["https_port"]), timeout=2) as raw,
            context.wrap_socket(raw, server_hostname=name) as tls,
        ):
            return tls.getpeercert(binary_form=True) == leaf
    except OSError:
        return False


def keys_ensure(config: dict[str, Any], user: str, keys: list[str]) -> bool:
    path = site_paths(config, user)["keys"]
    # `restrict` takes away pty, forwarding and agent: the keys are for SFTP only.
    text = "".join(f"restrict {key}\n" for key in keys)
    return write_if_changed(path, text, 0o644)


def site_remove(config: dict[str, Any], spec: dict[str, Any], uuid: str) -> dict[str, Any]:
    """Suspend and keep a backup; the files stay until purge (the delete can be undone)."""
    user = spec["user"]
    paths = site_paths(config, user)
    backup = inside(config["backup_dir"], f"{user}-{uuid}.tar.gz")
    if not backup.exists() and paths["home"].exists():
        config["backup_dir"].mkdir(parents=True, exist_ok=True)
        tmp = backup.with_name(f".{backup.name}.tmp")
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(paths["htdocs"], arcname="htdocs")
        tmp.chmod(0o600)
        tmp.replace(backup)
    if paths["vhost"].exists():
        text = paths["vhost"].read_text()
        domains = re.search(r"server_name ([^;]+);", text)
        suspended = {
            "user": user,
            "kind": "static",
            "state": "suspended",
            "domains": domains.group(1).split() if domains else [f"{user}.invalid"],
        }
        if write_if_changed(paths["vhost"], render_vhost(config, suspended, paths)):
            nginx_check_and_reload(config)
        for name in suspended["domains"]:
            served(config, name, 503)
    return {"backup": str(backup), **site_state(config, user)}


def site_purge(config: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    user = spec["user"]
    paths = site_paths(config, user)
    reload = False
    gone = site_state(config, user)["domains"]
    for name in ("vhost", "pool", "keys"):
        if paths[name].exists():
            paths[name].unlink()
            reload = reload or name == "vhost"
    if reload:
        nginx_check_and_reload(config)
        for name in gone:
            served(config, name, 404)
    if paths["home"].exists():
        if is_subvolume(paths["home"]):
            run(["btrfs", "subvolume", "delete", str(paths["home"])])
        else:
            shutil.rmtree(paths["home"])
    if config["privileged"]:
        try:
            pwd.getpwnam(user)
            run(["userdel", user])
        except KeyError:
            pass
    return site_state(config, user)


def cert_ensure(config: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """Obtain or renew a certificate over HTTP-01 with lego, as the ACME user.

    Not as root, and not into the site's files: lego talks to a server on the internet, and
    a member who could write where root writes the challenge could point it anywhere with a
    symlink. The ACME user owns the account, the keys and the challenge directory; nginx
    (root, at reload) reads the certificates.
    """
    paths = site_paths(config, spec["user"])
    acme, webroot = config["acme_dir"], config["acme_webroot"]
    cert = paths["cert_dir"] / f"{spec['domains'][0]}.crt"
    identity: dict[str, Any] = {}
    if config["privileged"]:
        try:
            entry = pwd.getpwnam(config["acme_user"])
        except KeyError:
            raise Failed(
                f"the node has no user {config['acme_user']} for lego "
                "(run install.sh or the hosting_node role again)"
            ) from None
        identity = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        for directory, mode in ((acme, 0o700), (webroot, 0o755)):
            if not directory.exists():
                directory.mkdir(parents=True, mode=mode)
                os.chown(directory, entry.pw_uid, entry.pw_gid)
    # Only what lego needs: no variables of the root helper's caller.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(acme), "LANG": "C.UTF-8"}
    if config.get("acme_ca_bundle"):
        env["LEGO_CA_CERTIFICATES"] = str(config["acme_ca_bundle"])
    action = "renew" if cert.exists() else "run"
    cmd = [
        "lego",
        "--accept-tos",
        "--server",
        spec["directory"],
        "--email",
        spec["email"],
        "--path",
        str(acme),
        "--http",
        "--http.webroot",
        str(webroot),
    ]
    for name in spec["domains"]:
        cmd += ["--domains", name]
    cmd.append(action)
    if action == "renew":
        cmd += ["--days", "30"]
    try:
        done = subprocess.run(  # noqa: S603
            cmd,
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=str(acme),
            check=False,
            **identity,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Failed(f"lego: {exc}") from exc
    if done.returncode != 0:
        raise Failed(f"lego failed: {done.stderr.strip()[-800:]}")
    return {"certificate": str(cert), "not_after": cert_not_after(cert)}


def cert_not_after(cert: Path) -> str | None:
    if not cert.exists():
        return None
    out = subprocess.run(  # noqa: S603
        ["openssl", "x509", "-noout", "-enddate", "-in", str(cert)],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip().removeprefix("notAfter=") or None


def db_ensure(config: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    name, user, password = spec["name"], spec["db_user"], spec["password"]
    if spec["engine"] == "mariadb":
        if not shutil.which("mariadb"):
            raise Refused("this node has no MariaDB")
        # Identifiers and the password were matched against sN_N / [A-Za-z0-9_-] above. In a
        # GRANT, "_" is a wildcard for any one character: escaped, the grant is this name only.
        pattern = name.replace("_", "\\_")
        sql = (
            f"CREATE DATABASE IF NOT EXISTS `{name}`;\n"
            f"CREATE USER IF NOT EXISTS '{user}'@'localhost' IDENTIFIED BY '{password}';\n"
            f"ALTER USER '{user}'@'localhost' IDENTIFIED BY '{password}';\n"
            f"GRANT ALL ON `{pattern}`.* TO '{user}'@'localhost';\n"
        )
        run(["mariadb", "--batch"], stdin=sql)
    else:
        if not shutil.which("psql"):
            raise Refused("this node has no PostgreSQL")
        sql = (
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') THEN "
            f"CREATE ROLE {user} LOGIN; END IF; END $$;\n"
            f"ALTER ROLE {user} PASSWORD '{password}';\n"
        )
        run(["runuser", "-u", "postgres", "--", "psql", "-v", "ON_ERROR_STOP=1", "-q"], stdin=sql)
        exists = run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                "psql",
                "-tAc",
                f"SELECT 1 FROM pg_database WHERE datname = '{name}'",
            ]
        )
        if not exists.strip():
            run(["runuser", "-u", "postgres", "--", "createdb", "--owner", user, name])
        # A new database lets every role connect (PUBLIC has CONNECT): only its owner may.
        run(
            ["runuser", "-u", "postgres", "--", "psql", "-v", "ON_ERROR_STOP=1", "-q"],
            stdin=f"REVOKE ALL ON DATABASE {name} FROM PUBLIC;\n",
        )
    return {"database": name, "user": user}


def site_state(config: dict[str, Any], user: str) -> dict[str, Any]:
    """What is actually on the node for a site."""
    paths = site_paths(config, user)
    vhost = paths["vhost"].read_text() if paths["vhost"].exists() else ""
    try:
        exists = bool(pwd.getpwnam(user)) if config["privileged"] else paths["home"].exists()
    except KeyError:
        exists = False
    names = re.search(r"server_name ([^;]+);", vhost)
    return {
        "user_exists": exists,
        "home_exists": paths["home"].exists(),
        "vhost": bool(vhost),
        "suspended": "return 503" in vhost,
        "php": paths["pool"].exists(),
        "tls": "ssl_certificate" in vhost,
        "domains": names.group(1).split() if names else [],
        "keys": len(paths["keys"].read_text().splitlines()) if paths["keys"].exists() else 0,
    }


# Unprivileged operations ----------------------------------------------------------------------


def node_facts(config: dict[str, Any]) -> dict[str, Any]:
    usage = shutil.disk_usage(config["sites_root"] if config["sites_root"].exists() else "/")
    return {
        "agent": VERSION,
        "hostname": os.uname().nodename,
        "python": sys.version.split()[0],
        "disk_total": usage.total,
        "disk_free": usage.free,
        "quota": quota_mode(config) or "none",
        "sites": sorted(p.name for p in config["sites_root"].glob("s*") if USER.fullmatch(p.name))
        if config["sites_root"].exists()
        else [],
    }


def usage_report(config: dict[str, Any]) -> dict[str, Any]:
    """Disk bytes per site and cumulative bytes sent, from the per-site access logs.

    Counters only grow (a rotated log adds to the total), so the panel records the difference
    to what it saw last; a lost answer loses nothing.
    """
    counters_path = config["state_dir"] / "transfer.json"
    counters = json.loads(counters_path.read_text()) if counters_path.exists() else {}
    sites = {}
    for home in sorted(config["sites_root"].glob("s*")) if config["sites_root"].exists() else []:
        if not USER.fullmatch(home.name):
            continue
        user = home.name
        disk = 0
        for root, _dirs, files in os.walk(home):
            for name in files:
                try:
                    disk += os.lstat(os.path.join(root, name)).st_blocks * 512
                except OSError:
                    continue
        entry = counters.get(user, {"inode": 0, "offset": 0, "total": 0})
        log = config["log_dir"] / f"{user}.access.log"
        if log.exists():
            stat = log.stat()
            if stat.st_ino != entry["inode"] or stat.st_size < entry["offset"]:
                entry["inode"], entry["offset"] = stat.st_ino, 0
            with open(log, "rb") as handle:
                handle.seek(entry["offset"])
                for line in handle:
                    if not line.endswith(b"\n"):
                        break  # a line still being written: next time
                    entry["offset"] += len(line)
                    sent = line.rsplit(b" ", 1)[-1].strip()
                    if sent.isdigit():
                        entry["total"] += int(sent)
        counters[user] = entry
        sites[user] = {"disk_bytes": disk, "transfer_bytes_total": entry["total"]}
    write_if_changed(counters_path, json.dumps(counters), 0o600)
    return {"sites": sites, "at": int(time.time())}


# Dispatch -------------------------------------------------------------------------------------


def perform(config: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    verb, spec = request["verb"], request["spec"]
    if verb == "site.ensure":
        return site_ensure(config, spec)
    if verb in ("site.suspend", "site.resume"):
        # The full spec travels with these too, so that they are "ensure" like the rest.
        return site_ensure(
            config, {**spec, "state": "suspended" if verb == "site.suspend" else "active"}
        )
    if verb == "site.remove":
        return site_remove(config, spec, request["uuid"])
    if verb == "site.purge":
        return site_purge(config, spec)
    if verb == "key.ensure":
        return {"changed": keys_ensure(config, spec["user"], spec["keys"])}
    if verb == "cert.ensure":
        return cert_ensure(config, spec)
    if verb == "db.ensure":
        return db_ensure(config, spec)
    if verb == "node.facts":
        return node_facts(config)
    if verb == "usage.report":
        return usage_report(config)
    raise Refused(f"unknown verb {verb!r}")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse(raw: bytes) -> dict[str, Any]:
    """The request in ``raw``, validated; Refused for anything else.

    Bytes, not text: decoding stdin as text would raise on a stray byte before the agent could
    refuse it. json.loads raises more than JSONDecodeError: RecursionError for deep nesting,
    ValueError for integers of more than 4300 digits (and, here, for NaN and Infinity).
    """
    if len(raw) > MAX_REQUEST:
        raise Refused("the request is too large")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused("the request is not UTF-8") from None
    try:
        request = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise Refused(f"the request is not JSON: {str(exc)[:200]}") from None
    return validate(request)


def answer(ok: bool, **fields: Any) -> str:
    return json.dumps({"ok": ok, "agent": VERSION, **fields})


def main(argv: list[str]) -> int:
    root_mode = argv[1:] == ["--root"]
    if argv[1:] not in ([], ["--root"]):
        print(answer(False, error="usage: panel-agent [--root]", permanent=True))
        return 2
    raw = sys.stdin.buffer.read(MAX_REQUEST + 1)
    try:
        request = parse(raw)
        config = load_config()
        if root_mode:
            result = perform(config, request)
            print(answer(True, result=result))
            return 0
        journal = inside(config["state_dir"], "jobs", f"{request['uuid']}.json")
        if journal.exists():
            recorded = json.loads(journal.read_text())
            recorded["replayed"] = True
            print(json.dumps(recorded))
            return 0
        if request["verb"] in ROOT_VERBS and config["privileged"]:
            done = subprocess.run(  # noqa: S603
                [
                    "sudo",
                    "-n",
                    config.get("self", "/usr/local/lib/panel-agent/panel-agent"),
                    "--root",
                ],
                input=json.dumps(request),
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            try:
                response = json.loads(done.stdout)
            except json.JSONDecodeError:
                raise Failed(
                    f"root helper failed ({done.returncode}): {done.stderr.strip()[-500:]}"
                ) from None
        else:
            response = {"ok": True, "agent": VERSION, "result": perform(config, request)}
        if response.get("ok"):
            journal.parent.mkdir(parents=True, exist_ok=True)
            write_if_changed(journal, json.dumps(response), 0o600)
        print(json.dumps(response))
        return 0 if response.get("ok") else 1
    except Refused as exc:
        print(answer(False, error=str(exc), permanent=True))
        return 1
    except Failed as exc:
        print(answer(False, error=str(exc), permanent=False))
        return 1
    except Exception as exc:
        # A fault of the agent's own: still one JSON answer (the panel retries it and tells
        # the admins when it gives up); the traceback goes to stderr for the operators.
        import traceback

        traceback.print_exc(file=sys.stderr)
        print(answer(False, error=f"the agent failed: {type(exc).__name__}", permanent=False))
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

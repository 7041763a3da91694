"""Strict readers for settings taken from the environment.

A typo in a deployment variable should stop the process with a message that names the
variable, not fall back silently to a default that happens to run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class _Missing:
    pass


MISSING = _Missing()


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return value.strip()


def env_str(name: str, default: str | _Missing = MISSING) -> str:
    value = _raw(name)
    if value:
        return value
    if isinstance(default, _Missing):
        raise ImproperlyConfigured(f"environment variable {name} is required but not set")
    return default


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if not value:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(
        f"environment variable {name}={value!r} is not a boolean; use one of "
        f"{sorted(_TRUE | _FALSE)}"
    )


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = _raw(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(
            f"environment variable {name}={value!r} is not an integer"
        ) from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"environment variable {name}={number} is below {minimum}")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if value is None or value == "":
        return list(default)
    items = [item.strip() for item in value.split(",")]
    if any(not item for item in items):
        raise ImproperlyConfigured(f"environment variable {name}={value!r} has an empty item")
    return items


def env_choice(name: str, default: str, choices: set[str]) -> str:
    value = env_str(name, default)
    if value not in choices:
        raise ImproperlyConfigured(
            f"environment variable {name}={value!r} must be one of {sorted(choices)}"
        )
    return value


def env_path(name: str, default: Path) -> Path:
    value = _raw(name)
    return Path(value).expanduser() if value else default


def read_or_create_secret(path: Path, *, length: int = 64) -> str:
    """Read a secret from a file, generating it on first use.

    The demo and the test suite need a SECRET_KEY without one ever being committed; a file
    outside the repository, readable only by its owner, gives each installation its own.
    """
    import secrets

    if path.exists():
        secret = path.read_text().strip()
        if secret:
            return secret
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(length)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret


EMAIL_BACKENDS = {
    "smtp": "django.core.mail.backends.smtp.EmailBackend",
    "smtp+starttls": "django.core.mail.backends.smtp.EmailBackend",
    "smtps": "django.core.mail.backends.smtp.EmailBackend",
    "console": "django.core.mail.backends.console.EmailBackend",
    "file": "django.core.mail.backends.filebased.EmailBackend",
    "locmem": "django.core.mail.backends.locmem.EmailBackend",
    "dummy": "django.core.mail.backends.dummy.EmailBackend",
}


def parse_email_url(name: str, url: str) -> dict[str, object]:
    """Turn EMAIL_URL into Django's EMAIL_* settings.

    Forms: smtp://user:pass@host:25, smtp+starttls://host:587, smtps://host:465,
    console:, locmem:, dummy:, file:///absolute/folder. A ``timeout`` query parameter sets
    EMAIL_TIMEOUT (seconds, default 10: a hung relay must not hang a worker).
    """
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme not in EMAIL_BACKENDS:
        raise ImproperlyConfigured(
            f"environment variable {name}={url!r}: scheme {scheme!r} is not one of "
            f"{sorted(EMAIL_BACKENDS)}"
        )
    query = parse_qs(parts.query)
    unknown = set(query) - {"timeout"}
    if unknown:
        raise ImproperlyConfigured(
            f"environment variable {name}: unknown options {sorted(unknown)}"
        )
    try:
        timeout = int(query.get("timeout", ["10"])[0])
    except ValueError:
        raise ImproperlyConfigured(
            f"environment variable {name}: timeout is not an integer"
        ) from None
    config: dict[str, object] = {"EMAIL_BACKEND": EMAIL_BACKENDS[scheme], "EMAIL_TIMEOUT": timeout}
    if scheme == "file":
        if not parts.path.startswith("/"):
            raise ImproperlyConfigured(
                f"environment variable {name}: file:// needs an absolute path"
            )
        config["EMAIL_FILE_PATH"] = parts.path
    if scheme.startswith("smtp"):
        if not parts.hostname:
            raise ImproperlyConfigured(f"environment variable {name}: SMTP URL needs a host")
        default_port = {"smtp": 25, "smtp+starttls": 587, "smtps": 465}[scheme]
        try:
            port = parts.port or default_port
        except ValueError:
            raise ImproperlyConfigured(f"environment variable {name}: bad port") from None
        config.update(
            EMAIL_HOST=parts.hostname,
            EMAIL_PORT=port,
            EMAIL_HOST_USER=unquote(parts.username or ""),
            EMAIL_HOST_PASSWORD=unquote(parts.password or ""),
            EMAIL_USE_TLS=scheme == "smtp+starttls",
            EMAIL_USE_SSL=scheme == "smtps",
        )
    return config


def parse_database_url(url: str, *, conn_max_age: int) -> dict[str, Any]:
    """Django's DATABASES entry for DATABASE_URL, several PostgreSQL hosts included.

    ``postgres://u:p@db1:5432,db2:5432/panel?target_session_attrs=read-write`` is libpq's
    multi-host form: it tries the hosts in turn and keeps the one that takes writes, so a
    promoted standby is found without a change of settings. dj_database_url reads one host
    (or several without ports); the hosts and ports go to libpq as its comma lists.
    """
    import dj_database_url

    parts = urlsplit(url)
    hosts = ports = ""
    if parts.scheme.startswith("postgres") and "," in parts.netloc:
        credentials, _at, hostlist = parts.netloc.rpartition("@")
        pairs = []
        for entry in hostlist.split(","):
            host, port = entry, ""
            if not entry.endswith("]") and ":" in entry:
                host, _colon, port = entry.rpartition(":")
            if not host or (port and not port.isdigit()):
                raise ValueError(f"host {entry!r} is not host or host:port")
            pairs.append((host, port))
        hosts = ",".join(h.strip("[]") for h, _p in pairs)
        ports = ",".join(p or "5432" for _h, p in pairs)
        url = parts._replace(netloc=f"{credentials}{_at}{pairs[0][0]}").geturl()
    config: dict[str, Any] = dict(dj_database_url.parse(url, conn_max_age=conn_max_age))
    if hosts:
        config["HOST"], config["PORT"] = hosts, ports
    return config

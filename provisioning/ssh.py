"""How the panel talks to node agents: over SSH (paramiko), or locally for a one-server co-op.

One exception, AgentError, for everything that can go wrong on the way, with ``permanent``
telling the job runner whether a retry can help: a changed host key, a refused login or a
request the agent refuses are permanent; a connection refused, a timeout or a failed command
on the node are not.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from django.conf import settings

AGENT_COMMAND = "panel-agent"  # the node's forced command runs the agent whatever we send
MAX_ANSWER = 4 * 1024 * 1024
LOCAL_AGENT = Path(__file__).resolve().parent / "agent" / "panel_agent.py"


class AgentError(Exception):
    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    user: str
    host_key: str  # "ssh-ed25519 AAAA...", pinned when the node was enrolled
    transport: str = "ssh"  # or "local"
    local_config: str = ""


# The panel's own key ---------------------------------------------------------------------------


def panel_key_path() -> Path:
    return Path(settings.PROVISIONING_SSH_KEY_FILE)


def ensure_panel_key() -> Path:
    """The panel's ed25519 key, generated on first use into the state dir (never the repo)."""
    path = panel_key_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ed25519.Ed25519PrivateKey.generate()
        data = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    return path


def panel_public_key() -> str:
    key = paramiko.Ed25519Key.from_private_key_file(str(ensure_panel_key()))
    return f"{key.get_name()} {key.get_base64()} commune-panel"


# Calling the agent -----------------------------------------------------------------------------


def call_agent(
    endpoint: Endpoint, request: dict[str, Any], *, timeout: float = 120.0
) -> dict[str, Any]:
    """Send one request to a node's agent; return its ``result`` or raise AgentError."""
    payload = json.dumps(request)
    if endpoint.transport == "local":
        raw = _call_local(endpoint, payload, timeout)
    else:
        raw = _call_ssh(endpoint, payload, timeout)
    try:
        answer = json.loads(raw)
    except json.JSONDecodeError:
        raise AgentError(f"the agent answered no JSON: {raw[:300]!r}", permanent=False) from None
    if not answer.get("ok"):
        raise AgentError(
            f"agent: {answer.get('error', 'unknown error')}",
            permanent=bool(answer.get("permanent")),
        )
    result = answer.get("result", {})
    if answer.get("replayed"):
        result = {**result, "replayed": True}
    return result


def _host_key(endpoint: Endpoint) -> paramiko.PKey:
    try:
        kind, data = endpoint.host_key.split()[:2]
        return paramiko.PKey.from_type_string(kind, base64.b64decode(data))
    except (ValueError, paramiko.SSHException) as exc:
        raise AgentError(f"the pinned host key is not valid: {exc}", permanent=True) from None


def _call_ssh(endpoint: Endpoint, payload: str, timeout: float) -> str:
    client = paramiko.SSHClient()
    # Only the pinned key is accepted: an unknown or changed key is refused, never learnt.
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    name = endpoint.host if endpoint.port == 22 else f"[{endpoint.host}]:{endpoint.port}"
    pinned = _host_key(endpoint)
    client.get_host_keys().add(name, pinned.get_name(), pinned)
    try:
        client.connect(
            endpoint.host,
            port=endpoint.port,
            username=endpoint.user,
            key_filename=str(ensure_panel_key()),
            timeout=10,
            banner_timeout=10,
            auth_timeout=10,
            look_for_keys=False,
            allow_agent=False,
            disabled_algorithms={"keys": ["rsa-sha2-256", "rsa-sha2-512", "ssh-rsa"]}
            if pinned.get_name() != "ssh-rsa"
            else None,
        )
    except paramiko.BadHostKeyException as exc:
        raise AgentError(
            f"the node's host key changed ({exc}); nothing was sent", permanent=True
        ) from None
    except paramiko.AuthenticationException as exc:
        raise AgentError(f"the node refused the panel's key: {exc}", permanent=True) from None
    except paramiko.SSHException as exc:
        if "not found in known_hosts" in str(exc) or "known_hosts" in str(exc):
            raise AgentError(
                f"the node's host key is not the pinned one: {exc}", permanent=True
            ) from None
        raise AgentError(f"SSH: {exc}", permanent=False) from None
    except (TimeoutError, OSError) as exc:
        raise AgentError(
            f"cannot reach {endpoint.host}:{endpoint.port}: {exc}", permanent=False
        ) from None
    try:
        stdin, stdout, stderr = client.exec_command(AGENT_COMMAND, timeout=timeout)
        stdin.write(payload)
        stdin.channel.shutdown_write()
        raw = stdout.read(MAX_ANSWER).decode(errors="replace")
        status = stdout.channel.recv_exit_status()
        if not raw.strip():
            err = stderr.read(4000).decode(errors="replace")
            raise AgentError(f"the agent answered nothing (exit {status}): {err}", permanent=False)
        return raw
    except (TimeoutError, OSError, paramiko.SSHException) as exc:
        raise AgentError(f"the connection broke: {exc}", permanent=False) from None
    finally:
        client.close()


def _call_local(endpoint: Endpoint, payload: str, timeout: float) -> str:
    env = {**os.environ, "PANEL_AGENT_CONFIG": endpoint.local_config}
    try:
        done = subprocess.run(  # noqa: S603  (our own agent, fixed arguments)
            [sys.executable, str(LOCAL_AGENT)],
            input=payload,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AgentError(f"local agent: {exc}", permanent=False) from None
    if not done.stdout.strip():
        raise AgentError(f"local agent answered nothing: {done.stderr[-500:]}", permanent=False)
    return done.stdout


def scan_host_key(host: str, port: int, *, timeout: float = 10.0) -> str:
    """The server's ed25519 host key as "ssh-ed25519 AAAA…", read from its SSH handshake.

    Used once, when an admin enrolls a node: the key seen here is the one the enrollment run
    checks against and the one pinned afterwards (trust on first use, shown to the admin with
    its fingerprint in the log). ed25519 is asked for; Debian's sshd always has one.
    """
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise AgentError(f"cannot reach {host}:{port}: {exc}", permanent=False) from None
    transport = paramiko.Transport(sock)
    transport.banner_timeout = timeout
    transport.get_security_options().key_types = ["ssh-ed25519"]
    try:
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
    except paramiko.SSHException as exc:
        raise AgentError(
            f"no ed25519 host key from {host}:{port}: {exc}", permanent=False
        ) from None
    finally:
        transport.close()
    return f"{key.get_name()} {key.get_base64()}"


def fingerprint(host_key: str) -> str:
    """SHA256:… as ssh-keygen -l prints it."""
    data = base64.b64decode(host_key.split()[1])
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"

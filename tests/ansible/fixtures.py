"""Running the playbooks for real: bare test hosts, a deploy key, vault-encrypted secrets.

A bare host (tests/hosts/testhost.py) offers only sshd with root's key, as a fresh server
does; the playbook under test must do the rest. Ansible connects over SSH with host key
checking on, against the key the host generated at start.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hosts.rootfs import ensure_rootfs
from tests.hosts.testhost import BridgePort, NetNS, TestHost

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "ansible"
BIN = Path(sys.executable).parent
RECAP = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)"
    r"\s+ignored=(?P<ignored>\d+)",
    re.M,
)


@dataclass
class DeployKey:
    private: Path
    public: str


@dataclass
class PlaybookRun:
    returncode: int
    output: str
    recap: dict[str, dict[str, int]]
    seconds: float

    def recap_line(self, host: str = "testnode") -> str:
        found = re.search(rf"^{re.escape(host)}\s+:.*$", self.output, re.M)
        return found.group(0) if found else ""

    def changed(self, host: str = "testnode") -> int:
        return self.recap[host]["changed"]


def ansible_env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        **extra,
    }


@pytest.fixture(scope="session")
def deploy_key(tmp_path_factory: pytest.TempPathFactory) -> DeployKey:
    """The admins' key: root on a fresh server accepts it (cloud-init would put it there)."""
    directory = tmp_path_factory.mktemp("deploy-key")
    private = directory / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "admins@test", "-f", str(private)],
        check=True,
    )
    return DeployKey(private, (directory / "id_ed25519.pub").read_text().strip())


def start_bare_host(
    workdir: Path,
    root_public_key: str,
    *,
    netns: NetNS | BridgePort | None = None,
    bind_mounts: list[tuple[Path, str]] | None = None,
) -> TestHost:
    """A bare host (sshd only) whose root accepts ``root_public_key``; in a network namespace
    of its own with ``netns``, with directories of this machine mounted in with ``bind_mounts``
    (source, path inside)."""
    host = TestHost(
        rootfs=ensure_rootfs(),
        workdir=workdir,
        panel_public_key="",
        bare=True,
        root_public_key=root_public_key,
        netns=netns,
        bind_mounts=list(bind_mounts or []),
    )
    return host.start()


@pytest.fixture
def bare_host(tmp_path: Path, deploy_key: DeployKey) -> Iterator[TestHost]:
    host = start_bare_host(tmp_path / "host", deploy_key.public)
    try:
        yield host
    finally:
        host.stop()


def _host_entry(host: TestHost, key: DeployKey, known_hosts: Path) -> dict[str, object]:
    return {
        "ansible_host": host.address,
        "ansible_port": host.ssh_port,
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(key.private),
        "ansible_ssh_common_args": (
            f"-o UserKnownHostsFile={known_hosts} "
            "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
        ),
    }


def run_playbook(
    playbook: str,
    host: TestHost | None,
    key: DeployKey,
    *,
    group: str = "",
    workdir: Path,
    extra_vars: dict[str, object] | None = None,
    secrets_: dict[str, object] | None = None,
    timeout: float = 1200,
    groups: dict[str, dict[str, TestHost]] | None = None,
    extra_args: tuple[str, ...] = (),
) -> PlaybookRun:
    """ansible-playbook PLAYBOOK against one test host, as host "testnode" in ``group``, or
    against several: ``groups`` maps each group to its hosts by inventory name.

    ``secrets_`` go into a vault file encrypted with a password made for this run, the way
    the real inventory keeps them.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if groups is None:
        assert host is not None, "one host and its group, or groups"
        assert group, "one host and its group, or groups"
        groups = {group: {"testnode": host}}
    known_hosts = workdir / "known_hosts"
    members = {name: h for hosts in groups.values() for name, h in hosts.items()}
    known_hosts.write_text(
        "".join(f"[{h.address}]:{h.ssh_port} {h.host_key}\n" for h in members.values())
    )
    inventory = workdir / "inventory.json"
    inventory.write_text(
        json.dumps(
            {
                name: {"hosts": {n: _host_entry(h, key, known_hosts) for n, h in hosts.items()}}
                for name, hosts in groups.items()
            }
        )
    )
    command = [
        str(BIN / "ansible-playbook"),
        "-i",
        str(inventory),
        str(ANSIBLE / playbook),
        *extra_args,
    ]
    if extra_vars:
        vars_file = workdir / "vars.json"
        vars_file.write_text(json.dumps(extra_vars))
        command += ["--extra-vars", f"@{vars_file}"]
    if secrets_:
        password = workdir / "vault-password"
        password.write_text(secrets.token_urlsafe(24))
        password.chmod(0o600)
        vault = workdir / "vault.yml"
        vault.write_text(json.dumps(secrets_))
        subprocess.run(
            [
                str(BIN / "ansible-vault"),
                "encrypt",
                "--vault-password-file",
                str(password),
                str(vault),
            ],
            check=True,
            capture_output=True,
            env=ansible_env(),
        )
        assert vault.read_text().startswith("$ANSIBLE_VAULT;")
        command += ["--extra-vars", f"@{vault}", "--vault-password-file", str(password)]
    started = time.monotonic()
    done = subprocess.run(
        command,
        cwd=ANSIBLE,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    (workdir / f"{Path(playbook).stem}-{int(started)}.log").write_text(output)
    recap = {
        m.group("host"): {k: int(v) for k, v in m.groupdict().items() if k != "host"}
        for m in RECAP.finditer(output)
    }
    return PlaybookRun(done.returncode, output, recap, time.monotonic() - started)

"""The adapter to Ansible: run one of ansible/'s playbooks against one server.

Used to enroll a node from the browser. ansible-runner runs ansible-playbook in a process of
its own; every line of its output goes to ``on_line`` as it comes, so the page can show the
log live. Host key checking is on, against a known_hosts file holding exactly the key the
caller expects, so the run talks to the server the panel will pin and to no other. The only
exception raised is :class:`AnsibleError`, whose ``permanent`` says whether running it again
unchanged can help.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

PLAYBOOKS = {
    "hosting": "hosting_node.yml",
    "asterisk": "asterisk_node.yml",
    "mail": "mail_node.yml",
}
GROUPS = {"hosting": "hosting_nodes", "asterisk": "asterisk_nodes", "mail": "mail_nodes"}
_HOST = re.compile(r"[A-Za-z0-9.:-]{1,253}")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


class AnsibleError(Exception):
    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int
    user: str
    host_key: str  # "ssh-ed25519 AAAA...": the only key this run accepts
    kind: str  # hosting, asterisk, mail


@dataclass(frozen=True)
class Outcome:
    status: str  # successful, failed, timeout, canceled
    returncode: int
    changed: int
    failed: int
    unreachable: int


def ansible_dir() -> Path:
    return Path(settings.BASE_DIR) / "ansible"


# A playbook run longer than this is stopped (ansible-runner kills it).
RUN_TIMEOUT_S = 1800


def run(
    *,
    target: Target,
    extra_vars: dict[str, Any],
    on_line: Callable[[str], None],
    private_key_file: Path,
    timeout: int = RUN_TIMEOUT_S,
) -> Outcome:
    """Run the target's playbook; returns when it ends. Failures of the play are an Outcome.

    AnsibleError is for what stops it from running at all (Ansible missing, bad target).
    """
    try:
        import ansible_runner
    except ImportError:
        raise AnsibleError(
            "Ansible is not installed here: install the panel with its deploy extra "
            "(pip install 'commune-panel[deploy]')",
            permanent=True,
        ) from None
    if target.kind not in PLAYBOOKS:
        raise AnsibleError(f"no playbook for nodes of kind {target.kind!r}", permanent=True)
    if not _HOST.fullmatch(target.host) or not _USER.fullmatch(target.user):
        raise AnsibleError(f"bad SSH address {target.user}@{target.host}", permanent=True)
    if len(target.host_key.split()) != 2:
        raise AnsibleError("no host key to check the server against", permanent=True)
    with tempfile.TemporaryDirectory(prefix="panel-ansible-") as tmp:
        work = Path(tmp)
        known_hosts = work / "known_hosts"
        address = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
        known_hosts.write_text(f"{address} {target.host_key}\n")
        inventory = {
            GROUPS[target.kind]: {
                "hosts": {
                    target.name: {
                        "ansible_host": target.host,
                        "ansible_port": target.port,
                        "ansible_user": target.user,
                        "ansible_ssh_private_key_file": str(private_key_file),
                        "ansible_ssh_common_args": " ".join(
                            shlex.quote(a)
                            for a in (
                                "-o",
                                f"UserKnownHostsFile={known_hosts}",
                                "-o",
                                "StrictHostKeyChecking=yes",
                                "-o",
                                "IdentitiesOnly=yes",
                            )
                        ),
                    }
                }
            }
        }

        def event(data: dict[str, Any]) -> bool:
            for line in (data.get("stdout") or "").splitlines():
                on_line(line)
            return True

        # The panel's own Ansible (the deploy extra), also when the worker runs without its
        # virtualenv on PATH (a service started by the absolute path of its Python).
        venv_bin = Path(sys.executable).parent
        try:
            runner = ansible_runner.run(
                private_data_dir=str(work),
                project_dir=str(ansible_dir()),
                playbook=PLAYBOOKS[target.kind],
                inventory=inventory,
                extravars=extra_vars,
                envvars={
                    "PATH": os.pathsep.join([str(venv_bin), os.environ.get("PATH", os.defpath)]),
                    "ANSIBLE_CONFIG": str(ansible_dir() / "ansible.cfg"),
                    "ANSIBLE_NOCOLOR": "1",
                    "ANSIBLE_ROLES_PATH": str(ansible_dir() / "roles"),
                },
                event_handler=event,
                quiet=True,
                timeout=timeout,
            )
        except Exception as exc:  # ansible-runner raises plain exceptions for setup problems
            raise AnsibleError(f"could not start ansible-playbook: {exc}", permanent=False) from exc
        stats = runner.stats or {}
        return Outcome(
            status=str(runner.status),
            returncode=int(runner.rc or 0),
            changed=sum((stats.get("changed") or {}).values()),
            failed=sum((stats.get("failures") or {}).values()),
            unreachable=sum((stats.get("dark") or {}).values()),
        )

#!/usr/bin/env python3
"""Ansible dynamic inventory: the nodes registered in the panel.

    ansible-playbook -i inventory/panel_nodes.py hosting_node.yml

It runs `manage.py ansible_inventory --list` where the panel is:
- PANEL_INVENTORY_COMMAND, if set: the whole command, split like a shell would, for example
  "ssh admin@panel.example.coop sudo -u panel /srv/commune-panel/bin/manage ansible_inventory"
  (--list is appended);
- else PANEL_DIR (default: the checkout this file is in) with its .venv's python.
The panel's pinned host keys are written to a known_hosts file next to the cache, and every
host is told to use it with strict checking: Ansible trusts exactly the servers the panel does.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def panel_command() -> list[str]:
    custom = os.environ.get("PANEL_INVENTORY_COMMAND", "").strip()
    if custom:
        return [*shlex.split(custom), "--list"]
    panel_dir = Path(os.environ.get("PANEL_DIR") or HERE.parent.parent)
    python = panel_dir / ".venv" / "bin" / "python"
    return [
        str(python if python.exists() else sys.executable),
        str(panel_dir / "manage.py"),
        "ansible_inventory",
        "--list",
    ]


def main(argv: list[str]) -> int:
    if "--host" in argv:
        # Everything is in _meta.hostvars of --list; Ansible does not ask per host then.
        print("{}")
        return 0
    done = subprocess.run(panel_command(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(f"the panel's inventory command failed:\n{done.stderr}\n")
        return 1
    data = json.loads(done.stdout)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "commune-panel"
    cache.mkdir(parents=True, exist_ok=True)
    known_hosts = cache / "panel_known_hosts"
    known_hosts.write_text(
        "".join(f"{line}\n" for line in data["all"]["vars"]["panel_known_hosts"])
    )
    data["all"]["vars"]["ansible_ssh_common_args"] = (
        f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes"
    )
    print(json.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The nodes registered in the panel, as an Ansible dynamic inventory (JSON on stdout).

Admins keep one list: the panel's. `ansible/inventory/panel_nodes.py` runs this command (locally,
or on the panel host over SSH) and hands Ansible its output; the host keys the panel pinned
become Ansible's known hosts, so Ansible and the panel trust the same servers.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from provisioning import ansible, selectors, ssh
from provisioning.models import NodeStatus


def inventory() -> dict[str, Any]:
    groups: dict[str, Any] = {group: {"hosts": []} for group in ansible.GROUPS.values()}
    hostvars: dict[str, Any] = {}
    known_hosts: list[str] = []
    for node in selectors.nodes().exclude(status=NodeStatus.DOWN):
        group = ansible.GROUPS.get(node.kind)
        if group is None:
            continue
        groups[group]["hosts"].append(node.name)
        hostvars[node.name] = {
            **(node.ansible_vars or {}),
            "ansible_host": node.ssh_host,
            "ansible_port": node.ssh_port,
            "ansible_user": node.admin_user,
            "panel_node_id": node.pk,
            "panel_node_status": node.status,
            "panel_node_host_key": node.host_key,
            "hosting_node_name": node.name,
        }
        if node.host_key:
            address = node.ssh_host if node.ssh_port == 22 else f"[{node.ssh_host}]:{node.ssh_port}"
            known_hosts.append(f"{address} {node.host_key}")
    return {
        **groups,
        "all": {
            "children": sorted(groups),
            "vars": {
                "hosting_node_panel_public_key": ssh.panel_public_key(),
                # For inventory/panel_nodes.py, which writes them to the known_hosts file it uses.
                "panel_known_hosts": known_hosts,
            },
        },
        "_meta": {"hostvars": hostvars},
    }


class Command(BaseCommand):
    help = "Print the panel's nodes as an Ansible dynamic inventory."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--list", action="store_true", help="the whole inventory (default)")
        parser.add_argument("--host", help="one host's variables")

    def handle(self, *args: Any, **options: Any) -> None:
        data = inventory()
        if options["host"]:
            self.stdout.write(json.dumps(data["_meta"]["hostvars"].get(options["host"], {})))
            return
        self.stdout.write(json.dumps(data, indent=1, sort_keys=True))

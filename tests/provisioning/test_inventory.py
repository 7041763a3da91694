"""The nodes registered in the panel are Ansible's inventory: one list, and the panel's pinned
host keys are the known hosts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.core.management import call_command
from django.db import connection

from provisioning import ssh
from provisioning.models import Node, NodeKind, NodeStatus
from tests.ansible.fixtures import ANSIBLE, BIN, ansible_env
from tests.conftest import ROOT

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDJBsb0xyhl0LQq3hmu1nACcoJ2A5Ixu3PjFG6M2Pyzm"


@pytest.fixture
def nodes(db):
    return [
        Node.objects.create(
            name="web1",
            kind=NodeKind.HOSTING,
            ssh_host="192.0.2.10",
            status=NodeStatus.AVAILABLE,
            host_key=KEY,
            ansible_vars={"hosting_node_http_port": 8080},
        ),
        Node.objects.create(
            name="voice1", kind=NodeKind.ASTERISK, ssh_host="192.0.2.20", ssh_port=2222
        ),
        Node.objects.create(name="mail1", kind=NodeKind.MAIL, ssh_host="192.0.2.30"),
        Node.objects.create(
            name="old", kind=NodeKind.HOSTING, ssh_host="192.0.2.40", status=NodeStatus.DOWN
        ),
    ]


def test_the_command_groups_nodes_by_kind_with_their_variables(nodes, capsys):
    call_command("ansible_inventory", "--list")
    data = json.loads(capsys.readouterr().out)
    assert data["hosting_nodes"]["hosts"] == ["web1"]  # "old" is down: left out
    assert data["asterisk_nodes"]["hosts"] == ["voice1"]
    assert data["mail_nodes"]["hosts"] == ["mail1"]
    web1 = data["_meta"]["hostvars"]["web1"]
    assert web1["ansible_host"] == "192.0.2.10"
    assert web1["ansible_user"] == "root"
    assert web1["hosting_node_http_port"] == 8080
    assert data["_meta"]["hostvars"]["voice1"]["ansible_port"] == 2222
    assert data["all"]["vars"]["hosting_node_panel_public_key"] == ssh.panel_public_key()
    assert data["all"]["vars"]["panel_known_hosts"] == [f"192.0.2.10 {nodes[0].host_key}"]


def test_ansible_reads_the_script_and_trusts_the_pinned_keys(nodes, transactional_db, tmp_path):
    # The script runs manage.py as its own process, which must see this test's database.
    db = connection.settings_dict
    env = ansible_env(
        DATABASE_URL=f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        PANEL_INVENTORY_COMMAND=f"{sys.executable} {ROOT / 'manage.py'} ansible_inventory",
        XDG_CACHE_HOME=str(tmp_path),
    )
    done = subprocess.run(
        [
            str(BIN / "ansible-inventory"),
            "-i",
            str(ANSIBLE / "inventory" / "panel_nodes.py"),
            "--list",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=ANSIBLE,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["hosting_nodes"]["hosts"] == ["web1"]
    web1 = data["_meta"]["hostvars"]["web1"]
    known_hosts = tmp_path / "commune-panel" / "panel_known_hosts"
    assert f"UserKnownHostsFile={known_hosts}" in web1["ansible_ssh_common_args"]
    assert "StrictHostKeyChecking=yes" in web1["ansible_ssh_common_args"]
    assert known_hosts.read_text() == f"192.0.2.10 {nodes[0].host_key}\n"
    assert os.access(ANSIBLE / "inventory" / "panel_nodes.py", os.X_OK)

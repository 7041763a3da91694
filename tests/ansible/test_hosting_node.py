"""The hosting_node role for real: a bare Debian host becomes a hosting node the panel uses.

The playbook runs twice against a bare test host (sshd with the deploy key, nothing else of
ours); the second run must change nothing. Then the panel drives that node through its normal
path (jobs, the agent over SSH): sites, an alias, a certificate from the test CA, suspend,
resume, delete, SFTP. Last, what the role set up is compared with what
provisioning/agent/install.sh sets up on the `testhost` fixture's host, so the two cannot drift.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from provisioning import services, ssh
from provisioning.agent import panel_agent
from provisioning.models import JobState, Node, NodeStatus, SiteState
from tests.ansible.fixtures import DeployKey, PlaybookRun, run_playbook, start_bare_host
from tests.hosts import testhost as hosts
from tests.hosts.fixtures import run_jobs
from tests.provisioning.test_sftp_and_security import connect, new_key

pytestmark = [pytest.mark.ansible, pytest.mark.django_db(transaction=True)]

# Whether the agent's vhosts can listen on one address (its config key listen_address).
AGENT_LISTENS_ON_ONE_ADDRESS = "listen_address" in hosts.AGENT.read_text()
# Each run of the playbook against the test host should take well under this.
RUN_BUDGET_S = 120.0
SITES_IMAGE = "/var/lib/sites-btrfs.img"  # inside the test host


@dataclass
class Deployed:
    host: hosts.TestHost
    first: PlaybookRun
    second: PlaybookRun


def role_vars(host: hosts.TestHost) -> dict[str, Any]:
    """What an admin sets for this node; the test host shares the machine's network, so its
    own free high ports instead of 80/443."""
    return {
        "hosting_node_panel_public_key": ssh.panel_public_key(),
        "hosting_node_http_port": host.http_port,
        "hosting_node_https_port": host.https_port,
        # Only once the agent's vhosts can listen on one address too (config key
        # listen_address): nginx sends requests on a named address to the servers naming it
        # only, so catch-alls on 127.0.0.1 would hide every site. The role refuses it before.
        "hosting_node_listen_address": "127.0.0.1" if AGENT_LISTENS_ON_ONE_ADDRESS else "",
        "hosting_node_acme_ca_bundle": "/testhost/pebble-tls/ca.pem",
        "hosting_node_reload_settle_s": 0.05,
        "hosting_node_nginx_worker_processes": 2,
    }


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, deploy_key: DeployKey) -> Iterator[Deployed]:
    """A bare host (the `bare_host` fixture's kind, kept for the module), deployed twice."""
    workdir = tmp_path_factory.mktemp("hosting-node")
    host = start_bare_host(workdir / "host", deploy_key.public)
    loop = ""
    try:
        # The sites on a btrfs of their own (a loop-mounted image), as on a node whose admin
        # gave them one: the role must find it and switch quota groups on.
        host.run(["mkdir", "-p", "/srv/sites"])
        host.run(["truncate", "-s", "300M", SITES_IMAGE])
        host.run(["mkfs.btrfs", "-q", SITES_IMAGE])
        loop = host.run(["losetup", "--find", "--show", SITES_IMAGE]).strip()
        host.run(["mount", "-t", "btrfs", loop, "/srv/sites"])
        extra_vars = role_vars(host)

        def deploy(name: str) -> PlaybookRun:
            return run_playbook(
                "hosting_node.yml",
                host,
                deploy_key,
                group="hosting_nodes",
                workdir=workdir / name,
                extra_vars=extra_vars,
            )

        first = deploy("first")
        assert first.returncode == 0, first.output[-4000:]
        second = deploy("second")
        yield Deployed(host, first, second)
    finally:
        host.run(["sh", "-c", "umount /srv/sites || umount -l /srv/sites; true"])
        if loop:
            host.run(["losetup", "-d", loop], check=False)
        host.stop()


@pytest.fixture
def hosting_node(deployed: Deployed, held_jobs: None) -> Node:
    """The deployed host as the panel knows it: pinned host key, available for sites."""
    return Node.objects.create(
        name="ansible-node",
        ssh_host="127.0.0.1",
        ssh_port=deployed.host.ssh_port,
        host_key=deployed.host.host_key,
        status=NodeStatus.AVAILABLE,
        capacity=500,
    )


def https_get(host: hosts.TestHost, name: str, wait_s: float = 5.0) -> tuple[str, list[str]]:
    """GET / over TLS with SNI ``name``, verified against the ACME server's issuing root.

    The agent checks a reload over HTTP only; until nginx's new workers take over, the old
    ones may still hand the name to the catch-all, which refuses the handshake: ask again.
    """
    assert host.ca_path is not None
    pebble = ssl.create_default_context(cafile=str(host.ca_path))
    with urllib.request.urlopen(
        f"https://127.0.0.1:{host.pebble_mgmt_port}/roots/0", context=pebble, timeout=5
    ) as answer:
        root = answer.read().decode()
    context = ssl.create_default_context(cadata=root)
    deadline = time.monotonic() + wait_s
    while True:
        raw = socket.create_connection(("127.0.0.1", host.https_port), timeout=5)
        try:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
                status_line = tls.recv(200).decode().split("\r\n", 1)[0]
                cert = tls.getpeercert() or {}
            return status_line, [str(entry[1]) for entry in cert.get("subjectAltName", ())]
        except ssl.SSLError as exc:
            if "UNRECOGNIZED_NAME" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_bare_host_becomes_a_hosting_node_and_a_second_run_changes_nothing(
    deployed: Deployed, artifacts: Path
) -> None:
    first, second = deployed.first, deployed.second
    (artifacts / "ansible-hosting_node.txt").write_text(
        "hosting_node.yml against a bare Debian bookworm test host (chroot, no systemd)\n"
        f"first run:  {first.seconds:6.1f} s  {first.recap_line()}\n"
        f"second run: {second.seconds:6.1f} s  {second.recap_line()}\n"
    )
    assert second.returncode == 0, second.output[-4000:]
    changed = [line for line in second.output.splitlines() if line.startswith("changed:")]
    assert second.changed() == 0, (second.recap_line(), changed)
    assert first.seconds < RUN_BUDGET_S, first.recap_line()
    assert second.seconds < RUN_BUDGET_S, second.recap_line()
    host = deployed.host
    # The catch-alls: 404 for names no site has, and no TLS handshake (no site's certificate).
    assert host.http("unknown.example.org")[0] == 404
    raw = socket.create_connection(("127.0.0.1", host.https_port), timeout=5)
    with pytest.raises(ssl.SSLError):
        ssl.create_default_context().wrap_socket(raw, server_hostname="unknown.example.org")
    assert not host.exists("/etc/nginx/sites-enabled/default")
    # The services run: MariaDB on its socket only, PHP-FPM with its pool.
    processes = host.run(["ps", "-eo", "args"])
    assert "nginx: master process" in processes
    assert "php-fpm: master process" in processes
    assert "mariadbd" in processes
    assert host.run(["mariadb", "--batch", "-e", "SELECT @@skip_networking"]).split() == [
        "@@skip_networking",
        "1",
    ]
    # The sites' btrfs has quota groups on, switched on by the first run only.
    assert "TASK [hosting_node : Switch btrfs quotas on for the sites]" in first.output
    assert host.run(["btrfs", "qgroup", "show", "/srv/sites"]).startswith("Qgroupid")
    config = json.loads(host.run(["cat", "/etc/panel-agent/config.json"]))
    assert config["http_port"] == host.http_port
    assert config["https_port"] == host.https_port
    assert config["acme_ca_bundle"] == "/testhost/pebble-tls/ca.pem"


def test_the_panel_runs_a_sites_life_on_the_node(
    alice: Any, hosting_node: Node, deployed: Deployed, settings: Any
) -> None:
    host = deployed.host
    site = services.site_create(member=alice, domain="role.example.org")
    assert site.node == hosting_node
    jobs = run_jobs(site)
    assert [j.state for j in jobs] == [JobState.OK], [j.error for j in jobs]
    # The site is a subvolume with its quota as the limit.
    assert jobs[0].result["quota"] == {
        "enforced": True,
        "how": "btrfs",
        "limit_bytes": site.quota_mb * 1024 * 1024,
    }
    status, body = host.http("role.example.org")
    assert status == 200
    assert "role.example.org" in body  # the agent's placeholder page

    services.site_alias_add(site=site, domain="www.role.example.org", actor=alice)
    run_jobs(site)
    assert host.http("www.role.example.org")[0] == 200

    settings.ACME_DIRECTORY_URL = host.acme_directory
    services.cert_request(site=site, actor=alice)
    jobs = run_jobs(site)
    assert all(j.state == JobState.OK for j in jobs), [j.error for j in jobs]
    site.refresh_from_db()
    assert site.tls
    status_line, names = https_get(host, "role.example.org")
    assert status_line.startswith("HTTP/1.1 200"), status_line
    assert sorted(names) == ["role.example.org", "www.role.example.org"]

    services.site_suspend(site=site, actor=alice)
    run_jobs(site)
    status, body = host.http("role.example.org")
    assert status == 503
    assert "This site is suspended" in body
    services.site_resume(site=site, actor=alice)
    run_jobs(site)
    assert host.http("role.example.org")[0] == 200

    services.site_delete(site=site, actor=alice)
    run_jobs(site)
    site.refresh_from_db()
    assert site.state == SiteState.DELETED
    assert site.backup_path.startswith("/var/backups/panel/")
    assert host.exists(site.backup_path)
    assert host.http("role.example.org")[0] == 503


def test_a_members_key_opens_sftp_into_the_sites_files(
    alice: Any, hosting_node: Node, deployed: Deployed
) -> None:
    host = deployed.host
    key, line = new_key()
    services.ssh_key_add(member=alice, name="laptop", public_key=line)
    site = services.site_create(member=alice, domain="sftp-role.example.org")
    jobs = run_jobs(site)
    assert [j.state for j in jobs] == [JobState.OK], [j.error for j in jobs]
    client = connect(host, site.system_user, key)
    try:
        sftp = client.open_sftp()
        assert sftp.normalize(".") == "/htdocs"
        with sftp.open("/htdocs/hello.html", "w") as handle:
            handle.write("<p>hello over sftp</p>")
        with pytest.raises(PermissionError):
            sftp.open("/escape.txt", "w")
    finally:
        client.close()
    assert host.http("sftp-role.example.org", "/hello.html") == (200, "<p>hello over sftp</p>")


# What install.sh and the role both set up: (path, compare the content too).
AGENT_PATHS = [
    ("/usr/local/lib/panel-agent", False),
    ("/usr/local/lib/panel-agent/panel-agent", True),
    ("/etc/panel-agent", False),
    ("/etc/panel-agent/config.json", False),  # compared as the agent reads it, below
    ("/etc/ssh/panel-keys", False),
    ("/var/lib/panel-agent", False),
    ("/var/lib/panel-agent/.ssh", False),
    ("/var/lib/panel-agent/.ssh/authorized_keys", True),
    ("/var/lib/panel-agent/acme", False),
    ("/var/www/panel-pages", False),
    ("/var/lib/panel-acme", False),
    ("/var/www/panel-acme", False),
    ("/srv/sites", False),
    ("/etc/nginx/panel-sites", False),
    ("/var/log/nginx/panel", False),
    ("/var/backups/panel", False),
    ("/etc/sudoers.d/panel-agent", True),
    ("/etc/ssh/sshd_config.d/panel.conf", True),
]
# Settings that differ between the two hosts, and why: each host has its own free ports; the
# test host's init starts PHP-FPM without an init system, so install.sh's host signals the
# pid file, where the role uses Debian's `service` (systemctl or the init script); the settle
# time is each test's choice.
EXPLAINED = {"http_port", "https_port", "php_fpm_reload", "reload_settle_s"}


def agent_config(
    host: hosts.TestHost, tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """The node's config.json with the agent's defaults applied, as the agent sees it."""
    path = tmp / f"config-{host.ssh_port}.json"
    path.write_text(host.run(["cat", "/etc/panel-agent/config.json"]))
    monkeypatch.setattr(panel_agent, "CONFIG_PATH", path)
    return panel_agent.load_config()


def log_format(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("log_format")]


def test_the_role_sets_up_what_install_sh_sets_up(
    deployed: Deployed, testhost: hosts.TestHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    role, script = deployed.host, testhost
    for path, content in AGENT_PATHS:
        stat = ["stat", "--format", "%F %a %U %G", path]
        assert role.run(stat) == script.run(stat), path
        if content:
            assert role.run(["cat", path]) == script.run(["cat", path]), path
    for host in (role, script):
        assert host.run(["id", "-nG", "panel-agent"]).split() == ["panel-agent", "adm"]
        assert host.run(["getent", "passwd", "panel-agent"]).split(":")[5:] == [
            "/var/lib/panel-agent",
            "/bin/sh\n",
        ]
        assert host.run(["getent", "group", "panel-sftp"]).startswith("panel-sftp:")
        # lego's own user: no login, no other groups.
        assert host.run(["id", "-nG", "panel-acme"]).split() == ["panel-acme"]
        assert host.run(["getent", "passwd", "panel-acme"]).split(":")[5:] == [
            "/var/lib/panel-acme",
            "/usr/sbin/nologin\n",
        ]
    # The metering's log format: nginx.conf holds it (and the vhost include) on the role's
    # node, install.sh writes them to conf.d/panel.conf.
    role_nginx = role.run(["cat", "/etc/nginx/nginx.conf"])
    script_nginx = script.run(["cat", "/etc/nginx/conf.d/panel.conf"])
    assert log_format(role_nginx) == log_format(script_nginx)
    assert len(log_format(role_nginx)) == 1
    assert "include /etc/nginx/panel-sites/*.conf;" in role_nginx
    assert "include /etc/nginx/panel-sites/*.conf;" in script_nginx
    assert not role.exists("/etc/nginx/conf.d/panel.conf")
    # The agent's configuration, as the agent reads it.
    role_config = agent_config(role, tmp_path, monkeypatch)
    script_config = agent_config(script, tmp_path, monkeypatch)
    differing = {
        key
        for key in role_config.keys() | script_config.keys()
        if role_config.get(key) != script_config.get(key)
    }
    assert differing <= EXPLAINED, {
        k: (role_config.get(k), script_config.get(k)) for k in differing
    }
    assert role_config["http_port"] == role.http_port
    assert role_config["https_port"] == role.https_port
    assert role_config["php_fpm_reload"] == ["/usr/sbin/service", "php8.2-fpm", "reload"]

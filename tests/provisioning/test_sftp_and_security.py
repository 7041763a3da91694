"""What keys can do on a node: the panel's runs only the agent; a member's opens only SFTP."""

from __future__ import annotations

import io

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from provisioning import services, ssh
from provisioning.models import SiteKind
from tests.hosts.fixtures import run_jobs

pytestmark = pytest.mark.django_db(transaction=True)


def new_key() -> tuple[paramiko.Ed25519Key, str]:
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    key = paramiko.Ed25519Key.from_private_key(io.StringIO(pem))
    return key, f"{key.get_name()} {key.get_base64()} laptop"


def connect(testhost, user: str, key: paramiko.PKey) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507  (a test host)
    client.connect(
        "127.0.0.1",
        port=testhost.ssh_port,
        username=user,
        pkey=key,
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    return client


def test_member_key_opens_sftp_into_the_site_only(alice, node, testhost):
    key, line = new_key()
    services.ssh_key_add(member=alice, name="laptop", public_key=line)
    site = services.site_create(member=alice, domain="sftp.example.org")
    run_jobs(site)
    client = connect(testhost, site.system_user, key)
    try:
        sftp = client.open_sftp()
        assert sftp.normalize(".") == "/htdocs"
        with sftp.open("/htdocs/hello.html", "w") as handle:
            handle.write("<p>hello from sftp</p>")
        assert testhost.http("sftp.example.org", "/hello.html") == (200, "<p>hello from sftp</p>")
        # The chroot's root belongs to root: nothing can be written outside the site's files.
        with pytest.raises(PermissionError):
            sftp.open("/escape.txt", "w")
        with pytest.raises(FileNotFoundError):
            sftp.stat("/etc/passwd")
        # No shell, no command: the key is for SFTP.
        _stdin, stdout, _stderr = client.exec_command("id")
        assert b"uid=" not in stdout.read()
    finally:
        client.close()
    owner = testhost.run(
        ["stat", "-c", "%U", f"/srv/sites/{site.system_user}/htdocs/hello.html"]
    ).strip()
    assert owner == site.system_user


def test_another_members_key_does_not_open_the_site(alice, bob, node, testhost):
    key, line = new_key()
    services.ssh_key_add(member=bob, name="bobs", public_key=line)
    site = services.site_create(member=alice, domain="private.example.org")
    run_jobs(site)
    with pytest.raises(paramiko.AuthenticationException):
        connect(testhost, site.system_user, key)


def test_the_panels_key_runs_nothing_but_the_agent(node, testhost):
    key = paramiko.Ed25519Key.from_private_key_file(str(ssh.ensure_panel_key()))
    client = connect(testhost, "panel-agent", key)
    try:
        stdin, stdout, _stderr = client.exec_command("id; cat /etc/shadow")
        stdin.channel.shutdown_write()
        out = stdout.read().decode()
        assert "uid=" not in out
        assert '"ok": false' in out  # the agent answered, and refused the empty request
        assert "the request is not JSON" in out
        with pytest.raises(paramiko.SSHException):
            transport = client.get_transport()
            assert transport is not None
            transport.open_channel(
                "direct-tcpip", ("127.0.0.1", testhost.http_port), ("127.0.0.1", 0)
            )
    finally:
        client.close()
    # And root only through the one sudoers line.
    assert testhost.run(["cat", "/etc/sudoers.d/panel-agent"]).strip() == (
        "panel-agent ALL=(root) NOPASSWD: /usr/local/lib/panel-agent/panel-agent --root"
    )


def test_each_php_site_runs_as_its_own_user(alice, bob, node, testhost):
    sites = [
        services.site_create(member=alice, domain="php-a.example.org", kind=SiteKind.PHP),
        services.site_create(member=bob, domain="php-b.example.org", kind=SiteKind.PHP),
    ]
    for site in sites:
        run_jobs(site)
        php = '<?php echo getmyuid(), ":", posix_geteuid();'
        path = f"/srv/sites/{site.system_user}/htdocs/who.php"
        testhost.run(["sh", "-c", 'printf "%s" "$1" > "$2"', "sh", php, path])
    for site in sites:
        pool = testhost.run(["cat", f"/etc/php/8.2/fpm/pool.d/{site.system_user}.conf"])
        assert f"user = {site.system_user}" in pool
        uid = testhost.run(["id", "-u", site.system_user]).strip()
        status, body = testhost.http(site.domain, "/who.php")
        assert status == 200, body
        assert body.split(":")[1] == uid, body  # the PHP process's effective uid


def test_the_agent_refuses_bad_requests_even_from_the_panel(node, testhost):
    from provisioning.services import endpoint_for

    bad_requests = [
        {"verb": "shell.run", "spec": {"cmd": "id"}},
        {
            "verb": "site.ensure",
            "spec": {
                "user": "root",
                "domains": ["a.example.org"],
                "kind": "static",
                "quota_mb": 10,
            },
        },
        {
            "verb": "site.ensure",
            "spec": {"user": "s999999", "domains": ["../../etc"], "kind": "static", "quota_mb": 10},
        },
        {
            "verb": "site.ensure",
            "spec": {
                "user": "s999999",
                "domains": ["a.example.org;reboot"],
                "kind": "static",
                "quota_mb": 10,
            },
        },
        {
            "verb": "site.ensure",
            "spec": {
                "user": "s999999",
                "domains": ["a.example.org"],
                "kind": "static",
                "quota_mb": 10,
                "keys": ["ssh-ed25519 AAAA\ncommand=x"],
            },
        },
        {
            "verb": "site.ensure",
            "spec": {
                "user": "s999999",
                "domains": ["a.example.org"],
                "kind": "cgi",
                "quota_mb": 10,
            },
        },
        {
            "verb": "site.ensure",
            "spec": {
                "user": "s999999",
                "domains": ["a.example.org"],
                "kind": "static",
                "quota_mb": 10,
                "extra": 1,
            },
        },
        {
            "verb": "db.ensure",
            "spec": {
                "user": "s999999",
                "engine": "mariadb",
                "name": "x'; DROP",
                "db_user": "x",
                "password": "p" * 20,
            },
        },
    ]
    import uuid

    for request in bad_requests:
        with pytest.raises(ssh.AgentError) as refused:
            ssh.call_agent(endpoint_for(node), {"uuid": str(uuid.uuid4()), **request})
        assert refused.value.permanent, request
    assert not testhost.exists("/srv/sites/s999999")

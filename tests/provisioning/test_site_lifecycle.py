"""A site's whole life on a real node: create, alias, suspend, delete, undo, purge, TLS."""

from __future__ import annotations

import socket
import ssl
import time
import urllib.request

import pytest

from provisioning import services
from provisioning.models import JobState, Site, SiteState
from tests.hosts.fixtures import run_jobs

pytestmark = pytest.mark.django_db(transaction=True)


def test_create_alias_suspend_delete_undo_purge(alice, node, testhost):
    site = services.site_create(member=alice, domain="Alice-Choir.example.org")
    assert site.domain == "alice-choir.example.org"
    jobs = run_jobs(site)
    assert [j.state for j in jobs] == [JobState.OK]
    site.refresh_from_db()
    assert site.state == SiteState.ACTIVE
    status, body = testhost.http("alice-choir.example.org")
    assert status == 200
    assert "alice-choir.example.org" in body
    assert testhost.run(["id", "-un", site.system_user]).strip() == site.system_user

    services.site_alias_add(site=site, domain="www.alice-choir.example.org", actor=alice)
    run_jobs(site)
    assert testhost.http("www.alice-choir.example.org")[0] == 200

    services.site_suspend(site=site, actor=alice)
    run_jobs(site)
    status, body = testhost.http("alice-choir.example.org")
    assert status == 503
    assert "This site is suspended" in body
    services.site_resume(site=site, actor=alice)
    run_jobs(site)
    assert testhost.http("alice-choir.example.org")[0] == 200

    services.site_delete(site=site, actor=alice)
    run_jobs(site)
    site.refresh_from_db()
    assert site.state == SiteState.DELETED
    assert site.backup_path.startswith("/var/backups/panel/")
    assert testhost.exists(site.backup_path)
    assert testhost.http("alice-choir.example.org")[0] == 503

    services.site_undelete(site=site, actor=alice)
    run_jobs(site)
    assert testhost.http("alice-choir.example.org")[0] == 200

    services.site_delete(site=site, actor=alice)
    run_jobs(site)
    Site.objects.filter(pk=site.pk).update(purge_after=site.created_at)
    assert services.purge_due_sites() == 1
    run_jobs(site)
    site.refresh_from_db()
    assert site.state == SiteState.PURGED
    assert testhost.http("alice-choir.example.org")[0] == 404
    assert not testhost.exists(f"/srv/sites/{site.system_user}")
    assert testhost.exists(site.backup_path), "the final backup stays"
    assert testhost.run(["id", site.system_user], check=False) == ""


def test_certificate_from_the_acme_server_is_served(alice, node, testhost, settings):
    settings.ACME_DIRECTORY_URL = testhost.acme_directory
    site = services.site_create(member=alice, domain="tls.example.org")
    run_jobs(site)
    services.cert_request(site=site, actor=alice)
    jobs = run_jobs(site)
    assert [j.verb for j in jobs] == ["site.ensure", "cert.ensure", "site.ensure"]
    assert all(j.state == JobState.OK for j in jobs), [j.error for j in jobs]
    site.refresh_from_db()
    assert site.tls
    assert site.certificate.not_after
    # Pebble's issuing root, from its management interface, verifies what nginx serves.
    insecure = ssl.create_default_context(cafile=str(testhost.ca_path))
    root = (
        urllib.request.urlopen(
            f"https://127.0.0.1:{testhost.pebble_mgmt_port}/roots/0", context=insecure, timeout=5
        )
        .read()
        .decode()
    )
    context = ssl.create_default_context(cadata=root)
    raw = socket.create_connection(("127.0.0.1", testhost.https_port), timeout=5)
    with context.wrap_socket(raw, server_hostname="tls.example.org") as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: tls.example.org\r\nConnection: close\r\n\r\n")
        reply = tls.recv(200).decode()
        cert = tls.getpeercert() or {}
        names = [str(entry[1]) for entry in cert.get("subjectAltName", ())]
    assert reply.startswith("HTTP/1.1 200")
    assert names == ["tls.example.org"]


def test_database_with_generated_credentials_works_on_the_node(alice, node, testhost):
    site = services.site_create(member=alice, domain="db.example.org")
    run_jobs(site)
    database, password = services.database_create(site=site, engine="mariadb", actor=alice)
    jobs = run_jobs(site)
    assert jobs[-1].verb == "db.ensure"
    assert jobs[-1].state == JobState.OK, jobs[-1].error
    assert jobs[-1].spec["password"] == "(not stored)"
    # The credentials work, and only for this database.
    for _ in range(50):  # MariaDB may still be starting on a fresh host
        if testhost.run(
            ["sh", "-c", "test -S /run/mysqld/mysqld.sock && echo up"], check=False
        ).strip():
            break
        time.sleep(0.1)
    out = testhost.run(
        [
            "mariadb",
            "--batch",
            "-u",
            database.db_user,
            f"-p{password}",
            database.name,
            "-e",
            "SELECT DATABASE(), CURRENT_USER()",
        ]
    )
    assert database.name in out
    denied = testhost.run(
        ["mariadb", "--batch", "-u", database.db_user, f"-p{password}", "mysql", "-e", "SELECT 1"],
        check=False,
    )
    assert denied == ""

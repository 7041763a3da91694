"""Site databases on a real node, and the agent as the last line of defence.

A compromised panel holds the panel's key and can send the agent any request. A request
about one site may touch that site's own database names and users only (``sN_1``, ``sN_2``,
...): never ``postgres``, ``root``, the system schemas, or another site's.
"""

from __future__ import annotations

import uuid

import pytest

from provisioning import services, ssh
from provisioning.models import JobState, Site
from provisioning.services import endpoint_for
from tests.hosts.fixtures import run_jobs
from tests.hosts.testhost import TestHost

pytestmark = pytest.mark.django_db(transaction=True)

SYSTEM_NAMES = ["postgres", "root", "mysql", "information_schema", "performance_schema", "sys"]


def mariadb(host: TestHost, sql: str) -> str:
    return host.run(["mariadb", "--batch", "--raw", "--skip-column-names", "-e", sql])


def psql(host: TestHost, sql: str) -> str:
    return host.run(["runuser", "-u", "postgres", "--", "psql", "-tAc", sql])


def databases_on(host: TestHost) -> dict[str, str]:
    """Everything a db.ensure could change: accounts with their password hashes, grants,
    databases with their owners and access lists, on both engines."""
    return {
        "mariadb users": mariadb(
            host, "SELECT CONCAT(User, '@', Host, ' ', Priv) FROM mysql.global_priv ORDER BY 1"
        ),
        "mariadb grants": mariadb(host, "SELECT CONCAT(Db, ' ', User) FROM mysql.db ORDER BY 1"),
        "mariadb databases": mariadb(host, "SHOW DATABASES"),
        "postgresql roles": psql(
            host,
            "SELECT rolname || ' ' || coalesce(rolpassword, '-') || ' ' || rolsuper "
            "FROM pg_authid ORDER BY 1",
        ),
        "postgresql databases": psql(
            host,
            "SELECT datname || ' ' || pg_get_userbyid(datdba) || ' ' "
            "|| coalesce(datacl::text, '-') FROM pg_database ORDER BY 1",
        ),
    }


def site_with_databases(member, domain: str) -> tuple[Site, dict[str, str]]:
    site = services.site_create(member=member, domain=domain)
    names = {}
    for engine in ("mariadb", "postgresql"):
        database, _password = services.database_create(site=site, engine=engine, actor=member)
        names[engine] = database.name
    jobs = run_jobs(site)
    assert all(job.state == JobState.OK for job in jobs), [job.error for job in jobs]
    return site, names


def test_a_compromised_panel_cannot_reach_beyond_the_sites_own_databases(
    alice, bob, node, testhost
):
    testhost.wait_for_databases()
    site, own = site_with_databases(alice, "dba.example.org")
    _other, theirs = site_with_databases(bob, "dbb.example.org")
    user = site.system_user
    before = databases_on(testhost)
    foreign = [*SYSTEM_NAMES, *theirs.values(), user, f"{user}_", f"{user}_1x", f"{user}x_1"]
    accepted = []
    for engine in ("mariadb", "postgresql"):
        mine = own[engine]
        for name in foreign:
            for db_name, db_user in ((mine, name), (name, mine), (name, name)):
                request = {
                    "uuid": str(uuid.uuid4()),
                    "verb": "db.ensure",
                    "spec": {
                        "user": user,
                        "engine": engine,
                        "name": db_name,
                        "db_user": db_user,
                        "password": "Compromised_panel_0123",
                    },
                }
                try:
                    ssh.call_agent(endpoint_for(node), request)
                except ssh.AgentError as exc:
                    if exc.permanent:
                        continue
                accepted.append((engine, db_name, db_user))
    assert accepted == []
    assert databases_on(testhost) == before


def test_each_sites_databases_are_its_own(alice, bob, node, testhost):
    """MariaDB reads ``_`` in a granted database name as a wildcard, and PostgreSQL lets
    everyone connect to a new database: neither may open one site's data to another."""
    testhost.wait_for_databases()
    site, own = site_with_databases(alice, "dbc.example.org")
    _other, theirs = site_with_databases(bob, "dbd.example.org")
    grants = mariadb(testhost, f"SHOW GRANTS FOR '{own['mariadb']}'@'localhost'")
    escaped = own["mariadb"].replace("_", "\\_")
    assert f"ON `{escaped}`.*" in grants, grants
    may_connect = psql(
        testhost,
        f"SELECT has_database_privilege('{own['postgresql']}', '{theirs['postgresql']}', "
        "'CONNECT')",
    )
    assert may_connect.strip() == "f"
    assert (
        psql(
            testhost,
            f"SELECT has_database_privilege('{own['postgresql']}', '{own['postgresql']}', "
            "'CONNECT')",
        ).strip()
        == "t"
    )
    assert site.databases.count() == 2

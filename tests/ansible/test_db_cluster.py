"""The db role and db_failover.yml for real: two bare hosts on a bridge become a PostgreSQL
primary and its synchronous standby; the panel's multi-host connection string finds the
primary; the primary's PostgreSQL is killed while commits go on, db_failover.yml promotes the
standby and rebuilds the old primary as its standby, and no commit that returned is lost.

The hosts are in network namespaces on a bridge this test makes: they reach each other and
this machine (the "panel", at the bridge's gateway address), nothing else.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from tests.ansible.fixtures import DeployKey, PlaybookRun, run_playbook, start_bare_host
from tests.hosts.testhost import Bridge, TestHost

pytestmark = pytest.mark.ansible

APT_CACHE_VALID = 10 * 365 * 86400
NAMES = ("db1", "db2")


@dataclass
class Cluster:
    bridge: Bridge
    hosts: dict[str, TestHost]
    password: str
    workdir: Path
    secrets: dict[str, object]
    first: PlaybookRun
    runs: list[PlaybookRun] = field(default_factory=list)
    _key: DeployKey = field(default=None, repr=False)  # type: ignore[assignment]

    def url(self) -> str:
        """The panel's DATABASE_URL (panel/env.parse_database_url): every db host, and libpq
        picks the one that takes writes."""
        hosts = ",".join(f"{h.address}:5432" for h in self.hosts.values())
        return (
            f"postgresql://panel:{self.password}@{hosts}/panel"
            "?target_session_attrs=read-write&connect_timeout=3"
        )

    def play(self, playbook: str, tag: str, **extra: object) -> PlaybookRun:
        run = run_playbook(
            playbook,
            None,
            self._key,
            groups={"db": self.hosts},
            workdir=self.workdir / f"{tag}-{len(self.runs)}",
            extra_vars={
                "db_clients": [self.bridge.gateway],
                "db_apt_cache_valid_time": APT_CACHE_VALID,
                **extra,
            },
            secrets_=self.secrets,
        )
        self.runs.append(run)
        return run

    def psql(self, name: str, sql: str) -> str:
        return (
            self.hosts[name]
            .run(["runuser", "-u", "postgres", "--", "psql", "-tAc", sql, "panel"])
            .strip()
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, deploy_key: DeployKey) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("db-cluster")
    bridge = Bridge.create()
    hosts: dict[str, TestHost] = {}
    try:
        for name in NAMES:
            hosts[name] = start_bare_host(workdir / name, deploy_key.public, netns=bridge.attach())
        password = secrets.token_urlsafe(18)
        secrets_: dict[str, object] = {
            "db_password": password,
            "db_replication_password": secrets.token_urlsafe(18),
        }
        cluster = Cluster(bridge, hosts, password, workdir, secrets_, first=None)  # type: ignore[arg-type]
        cluster._key = deploy_key
        cluster.first = cluster.play("db.yml", "first")
        assert cluster.first.returncode == 0, cluster.first.output[-6000:]
        yield cluster
    finally:
        for host in hosts.values():
            host.stop()
        bridge.close()


def _write(url: str, value: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO commits (value) VALUES (%s)", (value,))


def test_the_first_host_is_the_primary_and_the_second_its_synchronous_standby(
    cluster: Cluster,
) -> None:
    assert cluster.psql("db1", "SELECT pg_is_in_recovery()") == "f"
    assert cluster.psql("db2", "SELECT pg_is_in_recovery()") == "t"
    assert cluster.psql("db1", "SHOW synchronous_standby_names") == 'ANY 1 ("db2")'
    assert cluster.psql(
        "db1", "SELECT application_name, state, sync_state FROM pg_stat_replication"
    ) == ("db2|streaming|quorum")


def test_a_second_run_changes_nothing(cluster: Cluster) -> None:
    run = cluster.play("db.yml", "second")
    assert run.returncode == 0, run.output[-6000:]
    assert {name: run.changed(name) for name in NAMES} == {"db1": 0, "db2": 0}, run.output[-6000:]


def test_the_panels_url_finds_the_primary_and_the_standby_has_each_commit(
    cluster: Cluster,
) -> None:
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS commits (value integer PRIMARY KEY)")
        assert conn.info.host == cluster.hosts["db1"].address
    _write(cluster.url(), 1)
    # Synchronous (remote flush): committed means on the standby's disk; replayed a moment on.
    deadline = time.monotonic() + 10
    while cluster.psql("db2", "SELECT count(*) FROM commits WHERE value = 1") != "1":
        assert time.monotonic() < deadline, "the standby never showed the commit"
        time.sleep(0.1)
    # Another address (db2's own, let in for replication only) is refused the panel's database.
    address = cluster.hosts["db1"].address
    with pytest.raises(RuntimeError, match=r"no pg_hba\.conf entry"):
        cluster.hosts["db2"].run(
            [
                "psql",
                f"host={address} user=panel dbname=panel password={cluster.password}"
                " connect_timeout=3 sslmode=disable",
                "-c",
                "SELECT 1",
            ]
        )


def test_failover_loses_no_commit_and_the_old_primary_becomes_the_standby(
    cluster: Cluster,
) -> None:
    acknowledged: list[int] = []
    failed_writes: list[float] = []
    stop = threading.Event()

    def writer() -> None:
        value = 1000
        while not stop.is_set():
            value += 1
            try:
                _write(cluster.url(), value)
            except psycopg.Error:
                failed_writes.append(time.monotonic())
                time.sleep(0.1)
                continue
            acknowledged.append(value)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        while len(acknowledged) < 50:
            time.sleep(0.05)
        # The primary crashes: every PostgreSQL process of db1 killed at once.
        crashed = time.monotonic()
        cluster.hosts["db1"].run(["pkill", "-KILL", "-x", "postgres"])
        before = len(acknowledged)
        run = cluster.play("db_failover.yml", "failover", db_new_primary="db2")
        assert run.returncode == 0, run.output[-6000:]
        while len(acknowledged) == before:
            assert time.monotonic() - crashed < 120, "no write succeeded after the failover"
            time.sleep(0.05)
        writes_back = time.monotonic() - crashed
        while len(acknowledged) < before + 20:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=30)
    (cluster.workdir / "db_failover_s").write_text(f"{writes_back:.1f}\n")
    assert failed_writes, "the writer never noticed the crash"
    assert "Promoted db2 in" in run.output
    # Every commit that returned is on the new primary.
    on_db2 = {int(v) for v in cluster.psql("db2", "SELECT value FROM commits").split() if v.strip()}
    assert set(acknowledged) <= on_db2, sorted(set(acknowledged) - on_db2)[:10]
    assert cluster.psql("db2", "SELECT pg_is_in_recovery()") == "f"
    assert cluster.psql("db1", "SELECT pg_is_in_recovery()") == "t"
    assert cluster.psql(
        "db2", "SELECT application_name, state, sync_state FROM pg_stat_replication"
    ) == ("db1|streaming|quorum")
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        assert conn.info.host == cluster.hosts["db2"].address
    # Writes to the failover's run on the old primary's copy too.
    last = max(acknowledged)
    deadline = time.monotonic() + 10
    while int(cluster.psql("db1", "SELECT max(value) FROM commits") or 0) < last:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert writes_back < 60, f"writes came back after {writes_back:.1f} s"


def test_after_the_failover_the_plays_change_nothing(cluster: Cluster) -> None:
    again = cluster.play("db_failover.yml", "failover-again", db_new_primary="db2")
    assert again.returncode == 0, again.output[-6000:]
    assert {name: again.changed(name) for name in NAMES} == {"db1": 0, "db2": 0}, again.output[
        -6000:
    ]
    site = cluster.play("db.yml", "after-failover")
    assert site.returncode == 0, site.output[-6000:]
    assert {name: site.changed(name) for name in NAMES} == {"db1": 0, "db2": 0}, site.output[-6000:]
    assert cluster.psql("db2", "SELECT pg_is_in_recovery()") == "f"

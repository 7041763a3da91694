"""The panel on a replicated database: it finds the primary itself, and says "come back"
while there is none (issue 16, item 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from django.db import connection
from django.test import Client

from panel.env import parse_database_url
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_a_url_with_several_hosts_goes_to_libpq_as_its_lists():
    config = parse_database_url(
        "postgres://panel:secret@db1:5432,db2:5433,[::1]/panel?target_session_attrs=read-write",
        conn_max_age=0,
    )
    assert (config["HOST"], config["PORT"]) == ("db1,db2,::1", "5432,5433,5432")
    assert config["OPTIONS"] == {"target_session_attrs": "read-write"}
    assert (config["NAME"], config["USER"], config["PASSWORD"]) == ("panel", "panel", "secret")
    with pytest.raises(ValueError, match="'db1:x' is not host or host:port"):
        parse_database_url("postgres://u:p@db1:x,db2/panel", conn_max_age=0)


@pytest.mark.django_db(transaction=True)
def test_the_panel_connects_to_the_host_that_answers_of_those_in_the_url():
    """The first host is down (nothing listens): libpq goes on to the next, as it would to a
    promoted standby, with the settings unchanged."""
    db = connection.settings_dict
    dead = free_port()
    url = (
        f"postgres://{db['USER']}:{db['PASSWORD']}@127.0.0.1:{dead},{db['HOST']}:{db['PORT']}"
        f"/{db['NAME']}?target_session_attrs=read-write&connect_timeout=3"
    )
    shown = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "-c",
            "from django.db import connection; connection.ensure_connection(); "
            "print(connection.connection.info.port, connection.settings_dict['PORT'])",
        ],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split()[-2:] == [str(db["PORT"]), f"{dead},{db['PORT']}"]


@pytest.mark.django_db(transaction=True)
def test_a_request_whose_database_went_away_gets_a_503_that_says_to_come_back():
    client = Client(raise_request_exception=False)
    assert client.get("/healthz").status_code == 200
    connection.ensure_connection()
    backend = connection.connection.info.backend_pid
    db = connection.settings_dict
    with psycopg.connect(
        host=db["HOST"],
        port=db["PORT"],
        user=db["USER"],
        password=db["PASSWORD"],
        dbname=db["NAME"],
        autocommit=True,
    ) as other:
        # What a failover does to the connections of the old primary.
        other.execute("SELECT pg_terminate_backend(%s)", [backend])
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response["Retry-After"] == "30"
    assert "switching over to another server" in response.content.decode()
    connection.close()
    # The next request, on a connection of its own, is answered again.
    assert client.get("/healthz").status_code == 200

"""The shared service role: a unit for systemd hosts, an init script for the others, started
with the same command, and idempotent."""

from __future__ import annotations

import urllib.request

import pytest

from tests.ansible.fixtures import run_playbook
from tests.conftest import free_port
from tests.hosts.testhost import wait_for_port

pytestmark = pytest.mark.ansible


def test_a_service_runs_from_the_init_script_and_a_second_run_changes_nothing(
    bare_host, deploy_key, tmp_path
):
    port = free_port()

    def run(name: str):
        return run_playbook(
            "../tests/ansible/playbooks/service_smoke.yml",
            bare_host,
            deploy_key,
            group="smoke",
            extra_vars={"smoke_port": port},
            workdir=tmp_path / name,
        )

    first = run("first")
    assert first.returncode == 0, first.output[-3000:]
    wait_for_port(port, timeout=15)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
        assert page.read() == b"served by smoke\n"
    unit = bare_host.run(["cat", "/etc/systemd/system/smoke-http.service"])
    assert "ExecStart=/usr/bin/python3 -m http.server" in unit
    assert "EnvironmentFile=/etc/smoke.env" in unit
    assert "User=smoke" in unit
    # The process runs as the service user with the environment file's variables.
    pid = bare_host.run(["cat", "/run/smoke-http.pid"]).strip()
    status = bare_host.run(["cat", f"/proc/{pid}/status"])
    uid = bare_host.run(["id", "-u", "smoke"]).strip()
    assert f"Uid:\t{uid}" in status
    environ = bare_host.run(["cat", f"/proc/{pid}/environ"])
    assert "SMOKE_GREETING=hello from the service role" in environ
    second = run("second")
    assert second.returncode == 0, second.output[-3000:]
    assert second.changed() == 0, second.recap_line()

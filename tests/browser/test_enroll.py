"""Carol adds a bare server in the admin and enrolls it from the browser; a real worker runs the
hosting_node playbook into it, the log follows live, and the panel then puts a site on it.

The bare host is what a freshly installed server offers: sshd, with the panel's public key
authorised for root (what cloud-init would do). Nothing of ours is on it before the click.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from panel.models import AuditEntry
from provisioning import services, ssh
from provisioning.models import (
    Enrollment,
    EnrollmentState,
    Job,
    JobState,
    Node,
    NodeKind,
    NodeStatus,
)
from tests.ansible.fixtures import ANSIBLE, start_bare_host
from tests.factories import PASSWORD
from tests.hosts import testhost as hosts

pytestmark = [
    pytest.mark.browser,
    pytest.mark.worker,
    pytest.mark.ansible,
    pytest.mark.django_db(transaction=True),
]

# From the click to a finished enrollment of a bare host (the first run of hosting_node.yml).
ENROLL_BUDGET_S = 180.0


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[hosts.TestHost]:
    """A bare host whose root accepts the panel's key."""
    ssh.ensure_panel_key()
    host = start_bare_host(tmp_path / "host", ssh.panel_public_key())
    try:
        yield host
    finally:
        host.stop()


def test_carol_enrolls_a_bare_server_from_the_browser_and_it_takes_sites(
    browser, live_server, celery_worker, carol, alice, fresh_server, artifacts
):
    assert ANSIBLE.is_dir()
    host = fresh_server
    # The test host shares the machine's network: its own free ports instead of 80/443, and
    # the test CA next to it.
    ansible_vars = {
        "hosting_node_http_port": host.http_port,
        "hosting_node_https_port": host.https_port,
        "hosting_node_acme_ca_bundle": "/testhost/pebble-tls/ca.pem",
        "hosting_node_reload_settle_s": 0.05,
        "hosting_node_nginx_worker_processes": 2,
    }
    context = browser.new_context(locale="en-GB")
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Email").fill(carol.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign In").click()
    page.wait_for_url(f"{live_server.url}/dashboard/")

    # The admin: a new node with the address, port and role variables of the server.
    page.goto(f"{live_server.url}/admin/provisioning/node/add/")
    page.locator("#id_name").fill("fresh1")
    page.locator("#id_kind").select_option(NodeKind.HOSTING.value)
    page.locator("#id_ssh_host").fill("127.0.0.1")
    page.locator("#id_ssh_port").fill(str(host.ssh_port))
    page.locator("#id_ansible_vars").fill(json.dumps(ansible_vars))
    page.locator("input[name=_save]").click()
    page.get_by_text("was added successfully").wait_for()
    node = Node.objects.get(name="fresh1")
    assert (node.status, node.host_key) == (NodeStatus.NEW, "")

    # The staff page of servers: the node, its (not yet pinned) key, the Enroll button.
    page.goto(f"{live_server.url}/dashboard/")
    page.get_by_role("link", name="Servers").first.click()
    page.get_by_role("link", name="fresh1").click()
    page.get_by_text("not pinned yet").wait_for()
    started = time.monotonic()
    page.get_by_role("button", name="Enroll").click()
    state = page.get_by_test_id("enrollment-state")
    log = page.get_by_test_id("enrollment-log")
    # The log grows in the page while the playbook runs (htmx), before the run is over.
    page.wait_for_function(
        """() => {
            const log = document.querySelector('[data-testid="enrollment-log"]');
            const state = document.querySelector('[data-testid="enrollment-state"]');
            return (log && log.textContent.includes('TASK [')) ||
                (state && state.textContent.includes('Failed'));
        }""",
        timeout=120_000,
    )
    assert state.inner_text() in {"Running", "Waiting"}, Enrollment.objects.get().log[-3000:]
    page.locator('[data-testid="enrollment-state"]', has_text="Done").or_(
        page.locator('[data-testid="enrollment-state"]', has_text="Failed")
    ).wait_for(timeout=ENROLL_BUDGET_S * 1000)
    seconds = time.monotonic() - started
    enrollment = Enrollment.objects.get(node=node)
    assert enrollment.state == EnrollmentState.OK, (enrollment.error, enrollment.log[-4000:])
    assert "PLAY RECAP" in log.inner_text()
    (artifacts / "enrollment.txt").write_text(
        f"enrollment of a bare host from the browser: {seconds:.1f} s, "
        f"{enrollment.changed} changes\n"
    )
    assert seconds < ENROLL_BUDGET_S

    # The panel pinned the key it saw, and the node takes sites.
    node.refresh_from_db()
    assert node.status == NodeStatus.AVAILABLE
    assert node.host_key == host.host_key
    # The page reloaded itself when the run ended: status and pinned key without a click.
    page.locator("h1 .badge", has_text="Available").wait_for()
    page.get_by_text(ssh.fingerprint(host.host_key), exact=True).wait_for()
    page.screenshot(path=str(artifacts / "node-enrolled.png"), full_page=True)
    # Carol started it; the worker's result is recorded with the node's before and after.
    assert AuditEntry.objects.filter(action="node.enroll_started", actor=carol).count() == 1
    enrolled = AuditEntry.objects.get(action="node.enrolled")
    assert enrolled.before is not None
    assert enrolled.after is not None
    assert (enrolled.before["status"], enrolled.after["status"]) == ("new", "available")
    context.close()

    # The worker sets the site up through the agent the playbook installed.
    site = services.site_create(member=alice, domain="enrolled.example.org")
    assert site.node == node
    deadline = time.monotonic() + 60
    while Job.objects.filter(site=site).exclude(state=JobState.OK).exists():
        assert time.monotonic() < deadline, list(Job.objects.values("state", "error"))
        time.sleep(0.2)
    status, body = host.http("enrolled.example.org")
    assert status == 200
    assert "enrolled.example.org" in body

"""Enrolling a node: first contact, the host key, one run at a time, failures that say why.

The full run (the hosting_node playbook into a fresh test host, started from the browser
with a real worker) is tests/browser/test_enroll.py.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core import mail
from django.utils import timezone

from panel.models import AuditEntry
from provisioning import services, ssh
from provisioning.models import Enrollment, EnrollmentState, Node, NodeKind, NodeStatus
from tests.conftest import free_port

pytestmark = pytest.mark.django_db


def new_node(**kwargs) -> Node:
    values = {"name": "fresh1", "kind": NodeKind.HOSTING, "ssh_host": "127.0.0.1"}
    values.update(kwargs)
    return Node.objects.create(**values)


def enroll(node: Node, carol, capture) -> Enrollment:
    with capture(execute=True):
        enrollment = services.node_enroll(node=node, actor=carol)
    enrollment.refresh_from_db()
    return enrollment


def test_an_unreachable_server_fails_the_enrollment_and_the_admins_hear_of_it(
    carol, settings, django_capture_on_commit_callbacks
):
    settings.ADMINS = [("Admins", "admins@example.org")]
    node = new_node(ssh_port=free_port())
    enrollment = enroll(node, carol, django_capture_on_commit_callbacks)
    assert enrollment.state == EnrollmentState.FAILED
    assert "cannot reach 127.0.0.1" in enrollment.error
    assert "ERROR: cannot reach" in enrollment.log
    node.refresh_from_db()
    assert (node.status, node.host_key) == (NodeStatus.NEW, "")
    assert mail.outbox[-1].subject.endswith("Enrolling fresh1 failed")
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {"node.enroll_started", "node.enroll_failed"} <= actions


def test_a_server_whose_key_is_not_the_one_entered_is_refused_before_anything_runs(
    carol, testhost, django_capture_on_commit_callbacks
):
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDJBsb0xyhl0LQq3hmu1nACcoJ2A5Ixu3PjFG6M2Pyzm"
    node = new_node(ssh_port=testhost.ssh_port, host_key=other)
    enrollment = enroll(node, carol, django_capture_on_commit_callbacks)
    assert enrollment.state == EnrollmentState.FAILED
    assert "not the one entered for this node" in enrollment.error
    assert ssh.fingerprint(testhost.host_key) in enrollment.log  # what it did see
    assert "Running" not in enrollment.log
    node.refresh_from_db()
    assert node.host_key == other


def test_one_enrollment_at_a_time(carol, django_capture_on_commit_callbacks):
    node = new_node(ssh_port=free_port())
    with django_capture_on_commit_callbacks(execute=False):
        services.node_enroll(node=node, actor=carol)
    with pytest.raises(services.HostingError, match="being enrolled already"):
        services.node_enroll(node=node, actor=carol)
    assert Enrollment.objects.filter(node=node).count() == 1


def test_a_run_whose_worker_died_long_ago_does_not_block_the_node(
    carol, django_capture_on_commit_callbacks
):
    node = new_node(ssh_port=free_port())
    with django_capture_on_commit_callbacks(execute=False):
        first = services.node_enroll(node=node, actor=carol)
    Enrollment.objects.filter(pk=first.pk).update(
        state=EnrollmentState.RUNNING,
        created_at=timezone.now() - services.ENROLLMENT_STALE_AFTER - timedelta(minutes=1),
    )
    with django_capture_on_commit_callbacks(execute=False):
        second = services.node_enroll(node=node, actor=carol)
    first.refresh_from_db()
    assert first.state == EnrollmentState.FAILED
    assert "no worker finished" in first.error
    assert second.state == EnrollmentState.PENDING
    assert AuditEntry.objects.filter(action="node.enroll_abandoned", actor=carol).count() == 1


def test_the_host_key_scan_reads_what_sshd_offers(testhost):
    assert ssh.scan_host_key("127.0.0.1", testhost.ssh_port) == testhost.host_key
    assert ssh.fingerprint(testhost.host_key).startswith("SHA256:")


def test_staff_pages_show_the_key_to_authorise_and_refuse_members(client, carol, alice):
    node = new_node(ssh_port=free_port())
    client.force_login(carol)
    page = client.get(f"/hosting/staff/nodes/{node.pk}/").content.decode()
    assert ssh.panel_public_key() in page
    assert "Not enrolled yet." in page
    assert "fresh1" in client.get("/hosting/staff/nodes/").content.decode()
    client.force_login(alice)
    assert client.get(f"/hosting/staff/nodes/{node.pk}/").status_code == 403
    assert client.post(f"/hosting/staff/nodes/{node.pk}/enroll/").status_code == 403
    assert not Enrollment.objects.exists()

import uuid

import pytest
from django.core.management import call_command
from django.db import transaction

from panel.celery import app
from panel.models import Heartbeat
from panel.tasking import enqueue_on_commit
from panel.tasks import ping_database


@pytest.mark.worker
def test_a_task_round_trips_through_the_broker_and_a_real_worker(celery_worker):
    marker = uuid.uuid4().hex
    result = ping_database.apply_async(args=(marker,))
    assert result.get(timeout=30) == marker
    # The worker wrote through its own database connection; we read it back here.
    assert Heartbeat.objects.filter(name=f"ping:{marker}").exists()


@pytest.mark.worker
def test_worker_status_command_sees_the_worker(celery_worker, capsys):
    call_command("worker_status", "--timeout", "2")
    assert f"worker: {celery_worker.hostname} answers" in capsys.readouterr().out


@pytest.mark.worker
def test_enqueue_on_commit_sends_only_committed_work(celery_worker):
    kept, dropped = uuid.uuid4().hex, uuid.uuid4().hex
    with transaction.atomic():
        enqueue_on_commit(ping_database, kept)

    def rolled_back() -> None:
        with transaction.atomic():
            enqueue_on_commit(ping_database, dropped)
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        rolled_back()
    # A later task proves the worker has had its chance at the queue.
    ping_database.apply_async(args=("fence",)).get(timeout=30)
    assert Heartbeat.objects.filter(name=f"ping:{kept}").exists()
    assert not Heartbeat.objects.filter(name=f"ping:{dropped}").exists()


def test_enqueue_waits_for_the_commit(db, django_capture_on_commit_callbacks):
    marker = uuid.uuid4().hex
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        enqueue_on_commit(ping_database, marker)
    assert len(callbacks) == 1
    assert not Heartbeat.objects.filter(name=f"ping:{marker}").exists()


def test_every_beat_entry_names_a_registered_task():
    app.loader.import_default_modules()
    for name, entry in app.conf.beat_schedule.items():
        assert entry["task"] in app.tasks, name


def test_tasks_ack_late_by_default():
    assert app.conf.task_acks_late is True
    assert app.conf.worker_prefetch_multiplier == 1

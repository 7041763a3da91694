"""Fixtures shared by the whole suite.

Named people: alice owns things, bob is another member, carol is an admin, dave applied.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pytest
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.utils import translation

from panel import services
from panel.celery import app as celery_app
from panel.models import Application, Statutes, User
from tests.factories import PASSWORD, make_statutes, make_user

# Fixtures of the service apps (a real test node, DNS, newsletters), for their tests and the
# browser tests.
pytest_plugins = [
    "tests.hosts.fixtures",
    "tests.newsletters.dnsserver",
    "tests.newsletters.fixtures",
    "tests.ansible.fixtures",
    "tests.asterisk.fixtures",
]

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"


def pytest_configure(config: pytest.Config) -> None:
    engine = settings.DATABASES["default"]["ENGINE"]
    if "postgresql" not in engine:
        raise pytest.UsageError(
            "the suite runs against PostgreSQL; set DATABASE_URL=postgres://... "
            f"(bin/test does it), not {engine}"
        )
    # The test client and the live server speak plain HTTP on loopback; production keeps the
    # secure defaults, which test_deploy_check checks in a separate process.
    settings.SECURE_SSL_REDIRECT = False
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    settings.SECURE_HSTS_SECONDS = 0
    settings.ACCOUNT_DEFAULT_HTTP_PROTOCOL = "http"
    settings.PANEL_BASE_URL = "http://testserver"
    # Password hashing is deliberately slow; the suite creates hundreds of users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # In-process tasks run eagerly; tests marked `worker` switch to a real worker and broker.
    celery_app.conf.task_always_eager = True


@pytest.fixture(autouse=True)
def _isolate() -> Iterator[None]:
    # allauth's rate limits live in the cache, and a request through the test client leaves
    # its language active in the thread: neither may leak into the next test.
    cache.clear()
    translation.activate(settings.LANGUAGE_CODE)
    yield
    cache.clear()
    translation.activate(settings.LANGUAGE_CODE)


@pytest.fixture
def statutes(db: None) -> Statutes:
    return make_statutes()


@pytest.fixture
def carol(db: None) -> User:
    return make_user(email="carol@example.org", is_staff=True, is_superuser=True)


@pytest.fixture
def alice(db: None, statutes: Statutes, carol: User) -> User:
    return make_member("alice@example.org", statutes=statutes, admin=carol)


@pytest.fixture
def bob(db: None, statutes: Statutes, carol: User) -> User:
    return make_member("bob@example.org", statutes=statutes, admin=carol)


@pytest.fixture
def dave(db: None, statutes: Statutes) -> User:
    """Signed up and applied; waiting for a decision."""
    user = make_user(email="dave@example.org")
    services.membership_apply(user=user, name="Dave Applicant", statement="Hi", statutes=statutes)
    return user


def make_member(email: str, *, statutes: Statutes, admin: User) -> User:
    user = make_user(email=email)
    application = services.membership_apply(
        user=user, name=email.split("@")[0].title(), statement="Count me in.", statutes=statutes
    )
    services.membership_approve(application=application, actor=admin)
    return user


def pending_application(user: User) -> Application:
    return Application.objects.get(user=user, state="pending")


@pytest.fixture
def login(client):
    def _login(user: User):
        client.force_login(user)
        return client

    return _login


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# SMTP ------------------------------------------------------------------------------------


class SmtpSink:
    """A real SMTP server on loopback (aiosmtpd) that keeps what it receives.

    ``replies`` maps a recipient address to the reply it gets instead of 250 (a 451 to test
    retries, a 550 to test suppression); ``envelopes`` keeps (sender, recipients, bytes).
    """

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[Message] = []
        self.envelopes: list[tuple[str, list[str], bytes]] = []
        self.replies: dict[str, str] = {}
        self._lock = threading.Lock()
        sink = self

        class Handler:
            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
                reply = sink.replies.get(address)
                if reply is not None:
                    return reply
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server, session, envelope):
                raw = bytes(envelope.original_content)
                with sink._lock:
                    sink.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos), raw))
                    sink.messages.append(message_from_bytes(raw))
                return "250 OK"

        # aiosmtpd cannot bind port 0 itself (it probes the port it was given).
        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    def wait_for(self, to: str, *, subject_has: str = "", timeout: float = 10.0) -> Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for msg in self.messages:
                    if to in msg["To"] and subject_has in msg["Subject"]:
                        return msg
            time.sleep(0.05)
        raise AssertionError(f"no email to {to} with {subject_has!r} within {timeout}s")


@pytest.fixture
def smtp(settings) -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = sink.port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    yield sink
    sink.stop()


def text_and_html(message: Message) -> tuple[str, str]:
    """The text and HTML parts of a message; fails unless it has both."""
    parts = {
        part.get_content_type(): part.get_payload(decode=True).decode()  # type: ignore[union-attr]
        for part in message.walk()
        if not part.is_multipart()
    }
    assert set(parts) == {"text/plain", "text/html"}, f"parts: {sorted(parts)}"
    return parts["text/plain"], parts["text/html"]


def first_link(text: str) -> str:
    match = re.search(r"https?://\S+", text)
    assert match, f"no link in {text!r}"
    return match.group(0)


# A real Celery worker --------------------------------------------------------------------


class WorkerProcess:
    def __init__(self, proc: subprocess.Popen[bytes], hostname: str, log: Path) -> None:
        self.proc, self.hostname, self.log = proc, hostname, log


def start_worker(
    tmp: Path, *, queue: str, extra_env: dict[str, str] | None = None, beat: bool = False
) -> WorkerProcess:
    """Start a real worker (and optionally beat) on the real broker, reading the test database.

    Its queue name is unique, so that nothing else on the broker is consumed and nothing of
    ours is left for another worker.
    """
    broker = settings.CELERY_BROKER_URL
    if not broker.startswith(("redis://", "amqp://")):
        pytest.fail(f"worker tests need a real broker; CELERY_BROKER_URL is {broker!r}")
    db = connection.settings_dict
    database_url = (
        f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    )
    hostname = f"{queue}@localhost"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        "PANEL_STATE_DIR": str(tmp / "state"),
        "SECRET_KEY": settings.SECRET_KEY,
        "EMAIL_URL": "locmem:",
        # The same SSH identity as the test process, which the test hosts trust.
        "PROVISIONING_SSH_KEY_FILE": str(settings.PROVISIONING_SSH_KEY_FILE),
        "PANEL_BASE_URL": settings.PANEL_BASE_URL,
        **(extra_env or {}),
    }
    log = tmp / f"worker-{queue}.log"
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "panel",
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        "2",
        "--hostname",
        hostname,
        "--queues",
        queue,
        "--without-gossip",
        "--without-mingle",
    ]
    if beat:
        command += ["--beat", "--schedule", str(tmp / f"beat-{queue}")]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = WorkerProcess(proc, hostname, log)
    deadline = time.monotonic() + 60
    while not celery_app.control.ping(destination=[hostname], timeout=0.5):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_worker(worker, kill=True)
            raise AssertionError(f"worker did not start:\n{log.read_text()[-4000:]}")
    return worker


def stop_worker(worker: WorkerProcess, *, kill: bool = False) -> None:
    """SIGTERM and wait (or SIGKILL the whole process group at once, as a crash would)."""
    if kill:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait()
        return
    worker.proc.send_signal(signal.SIGTERM)
    try:
        worker.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait()


def delete_queue(queue: str) -> None:
    """Remove a test's queue and what is left in it from the broker.

    On kombu's Redis transport, queue_delete of a name this connection never declared deletes
    nothing; declared first, the queue and its messages go.
    """
    from kombu import Exchange, Queue

    with celery_app.connection_for_write() as conn:
        bound = Queue(queue, Exchange(queue), routing_key=queue)(conn.default_channel)
        bound.declare()
        bound.delete()


@pytest.fixture(scope="session")
def celery_worker_process(
    django_db_setup: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """A real worker process on the real broker, reading the test database (one per session)."""
    queue = f"test-{uuid.uuid4().hex[:10]}"
    worker = start_worker(tmp_path_factory.mktemp("worker"), queue=queue)
    old_queue = celery_app.conf.task_default_queue
    celery_app.conf.task_default_queue = queue
    try:
        yield worker
    finally:
        celery_app.conf.task_default_queue = old_queue
        stop_worker(worker)
        delete_queue(queue)


@pytest.fixture
def celery_worker(
    celery_worker_process: WorkerProcess, transactional_db: None
) -> Iterator[WorkerProcess]:
    """The real worker, with tasks sent to it instead of run in-process; data is committed."""
    celery_app.conf.task_always_eager = False
    try:
        yield celery_worker_process
    finally:
        celery_app.conf.task_always_eager = True


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


__all__ = ["PASSWORD", "first_link", "pending_application", "text_and_html"]


@pytest.fixture
def worker_factory(
    transactional_db: None, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Starts real workers (with beat) with extra environment, for one test.

    For tests whose worker needs settings of its own (the newsletter relay's port, short
    leases); tasks go to this test's queue instead of running in-process.
    """
    queue = f"test-own-{uuid.uuid4().hex[:8]}"
    started: list[WorkerProcess] = []

    def start(**env: str) -> WorkerProcess:
        worker = start_worker(tmp_path, queue=queue, extra_env=env, beat=True)
        started.append(worker)
        return worker

    old_queue = celery_app.conf.task_default_queue
    celery_app.conf.task_default_queue = queue
    celery_app.conf.task_always_eager = False
    try:
        yield start
    finally:
        celery_app.conf.task_always_eager = True
        celery_app.conf.task_default_queue = old_queue
        for worker in started:
            if worker.proc.poll() is None:
                stop_worker(worker)
        delete_queue(queue)

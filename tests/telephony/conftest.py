from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from panel.models import Supplier
from panel.services import ledger
from telephony import services
from telephony.fastagi import Server
from telephony.models import AccessNumber, Carrier, Phone, Trunk
from tests.conftest import free_port

DECK = b"""prefix,destination,rate,increment,connect_fee
49,Germany fixed,0.010000,60/60,0
4915,Germany mobile,0.050000,30/6,0.01
4930,Berlin,0.008000,1/1,0
1,USA,0.012000,6/6,0
44,United Kingdom,0.015000,60/1,0
49900,Germany premium,1.990000,60/60,0
"""


@pytest.fixture
def carrier(db: None, carol) -> Carrier:
    supplier = Supplier.objects.create(name="Carrier One")
    carrier = Carrier.objects.create(name="Carrier One", supplier=supplier)
    Trunk.objects.create(
        carrier=carrier, name="carrier1", dial_template="PJSIP/{number}@carrier1", priority=1
    )
    Trunk.objects.create(
        carrier=carrier,
        name="carrier1-backup",
        dial_template="PJSIP/{number}@carrier1b",
        priority=2,
    )
    deck = services.deck_upload(
        carrier=carrier,
        actor=carol,
        filename="deck.csv",
        content=DECK,
        mapping=services.PRESETS["standard"],
        effective_from=timezone.now() - timedelta(days=1),
    )
    services.deck_import(deck_id=deck.pk)
    return carrier


@pytest.fixture
def access(db: None) -> AccessNumber:
    return AccessNumber.objects.create(number="+4930900900", city="Berlin", country="DE")


@pytest.fixture
def caller(alice) -> Phone:
    """alice's verified mobile, and 5.00 of credit."""
    phone = services.phone_add(member=alice, number="+49 151 23456789")
    Phone.objects.filter(pk=phone.pk).update(verified_at=timezone.now(), verification_code="")
    ledger.payment_record(
        actor=None,
        member=alice,
        amount=Decimal("5.00"),
        received_on=timezone.localdate(),
        reference="top-up",
        source_key="alice-calls",
    )
    phone.refresh_from_db()
    return phone


@pytest.fixture
def start_server(transactional_db: None) -> Iterator[Callable[..., Server]]:
    """Starts FastAGI servers in threads of this process (same database) with the options a
    test needs, on loopback ports; all are stopped after it."""
    started: list[Server] = []

    def start(**options: Any) -> Server:
        options.setdefault("read_timeout", 10)
        server = Server(("127.0.0.1", free_port()), **options)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        started.append(server)
        # Calls that start before it listens are served all the same, from the database;
        # tests that count statements want the usual state of a running server.
        assert server.callers.listening.wait(10), "the server does not listen for caller changes"
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fastagi_server(start_server: Callable[..., Server]) -> Server:
    """The FastAGI server with its default pools."""
    return start_server(max_sessions=64)


def where(server: Server) -> tuple[str, int]:
    """Where a server listens, as asterisk_sim.run takes it."""
    host, port = server.server_address[:2]
    return str(host), int(port)


@pytest.fixture
def agi_server(fastagi_server: Server) -> tuple[str, int]:
    """Where the FastAGI server listens."""
    return where(fastagi_server)

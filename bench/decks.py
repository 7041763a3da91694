"""Benchmark of the rate-deck issue: a million-row deck imported, its memory, its preview.

Creates a throw-away PostgreSQL database, generates an ASTPP deck from the phonenumbers
metadata (tests/telephony/deckgen.py: 1,000,000 rows, 52 MB, more than the 40 MB the issue
names; 100,000 rows with --quick) and:

- ``deck_copy_baseline_s``: the same rules written by a bare COPY (pre-formatted text, one
  statement) into a table with telephony_rate's columns and indexes, the floor of any import;
- ``deck_import_1m_s``: the deck stored and imported as the worker does (deck_upload, then
  deck_import in a process of its own), and ``deck_import_vs_copy_ratio`` against the COPY;
- ``deck_import_peak_rss_mb``: the importing process's peak resident memory (VmHWM), with
  ``deck_import_base_rss_mb`` the same process before the import (Django, settings, modules);
- ``deck_preview_ms``: the staff preview page of the same file as a draft (median of 5), and
  ``deck_upload_ms``: storing the draft (encoding check of the whole file, SHA-256, insert).

Each figure once per run; run it three times and take the medians.

    .venv/bin/python bench/decks.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)

from bench.agi import django_setup, scratch_database  # noqa: E402
from bench.common import cpu_model  # noqa: E402

CHILD = """
import os, sys, time
import django
django.setup()
from telephony import services
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
base = rss()
began = time.perf_counter()
deck = services.deck_import(deck_id=int(sys.argv[1]))
took = time.perf_counter() - began
print(deck.state, deck.rows_done, f"{took:.2f}", f"{base:.0f}", f"{rss():.0f}", deck.errors[:3])
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="100,000 rows instead of 1,000,000")
    args = parser.parse_args()
    with scratch_database() as database_url:
        run(database_url, 100_000 if args.quick else 1_000_000)


def run(database_url: str, rows: int) -> None:
    env = django_setup(database_url)
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.urls import reverse
    from django.utils import timezone

    from panel.models import Supplier, User
    from telephony import decks, services
    from telephony.models import Carrier, DeckState, Rate, RateDeck
    from tests.telephony import deckgen

    call_command("migrate", verbosity=0)
    settings.ALLOWED_HOSTS = ["testserver"]
    # A million ASTPP rows are 51 MB, past the upload page's 50: the import is measured here.
    settings.PANEL_UPLOAD_MAX_MB = 100
    carrier = Carrier.objects.create(name="Bench", supplier=Supplier.objects.create(name="Bench"))
    began = time.perf_counter()
    deck_file = deckgen.build("astpp", rows)
    generated = time.perf_counter() - began
    content = deck_file.content
    mapping = decks.preset_mapping("astpp", decks.sniff(content[: decks.HEAD_BYTES]))
    since = timezone.now() - timedelta(days=1)

    # The floor: the same rules as COPY text, in one statement, into a copy of the table.
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE bench_rate (LIKE telephony_rate INCLUDING ALL)")
    text = services._copy_lines(
        type("D", (), {"pk": 0, "effective_from": since})(),
        decks.read(content, mapping),
    )
    began = time.perf_counter()
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY bench_rate ({services._RATE_COLUMNS}) FROM STDIN") as copy,
    ):
        copy.write(text)
    copy_s = time.perf_counter() - began
    del text

    staff = User.objects.create_user(email="carol@bench.coop", password=None, is_staff=True)
    staff.is_superuser = True
    staff.save()
    began = time.perf_counter()
    draft = services.deck_draft(
        carrier=carrier,
        actor=staff,
        filename="astpp.csv",
        content=content,
        effective_from=since,
    )
    upload_ms = (time.perf_counter() - began) * 1000
    client = Client()
    client.force_login(staff)
    url = reverse("telephony:staff_deck_mapping", args=[draft.pk])
    times = []
    for _ in range(5):
        began = time.perf_counter()
        response = client.get(url, secure=True)
        times.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200, response.status_code
        assert b"first 30 s free" in response.content or b"/min" in response.content
    # What deck_confirm does, without handing the import to a worker: it runs in a process
    # of its own below, so that its memory is its own.
    RateDeck.objects.filter(pk=draft.pk).update(
        state=DeckState.IMPORTING, version=1, mapping=mapping.to_json()
    )
    connection.close()
    child = subprocess.run(  # noqa: S603  (this Python, a fixed script, a deck id)
        [sys.executable, "-c", CHILD, str(draft.pk)],
        env={**env, "DJANGO_SETTINGS_MODULE": "panel.settings"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    state, done, took, base, peak, _errors = child.stdout.split(" ", 5)
    assert state == "ready", child.stdout + child.stderr
    assert Rate.objects.filter(deck_id=draft.pk).count() == int(done)
    stored = upload_ms / 1000
    print(f"cpu: {cpu_model()}")
    print(f"deck_rows: {rows}")
    print(f"deck_rules: {done}")
    print(f"deck_file_mb: {len(content) / 1e6:.1f}")
    print(f"deck_generate_s: {generated:.1f}")
    print(f"deck_copy_baseline_s: {copy_s:.1f}")
    print(f"deck_store_s: {stored:.1f}")
    print(f"deck_import_1m_s: {float(took) + stored:.1f}")
    print(f"deck_import_vs_copy_ratio: {(float(took) + stored) / copy_s:.1f}")
    print(f"deck_import_base_rss_mb: {base}")
    print(f"deck_import_peak_rss_mb: {peak}")
    print(f"deck_upload_ms: {upload_ms:.0f}")
    print(f"deck_preview_ms: {statistics.median(times):.0f}")


if __name__ == "__main__":
    main()

"""Decks in the layouts other systems export, and what their rules mean when calls are rated."""

from __future__ import annotations

import datetime as dt
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from telephony import decks, rating, services
from telephony.models import CallRecord, DeckState, Rate, RateDeck
from telephony.ratecache import RateCache

UTC = timezone.get_default_timezone()


def detected(content: bytes, preset: str = "") -> decks.Mapping:
    """The mapping the upload page starts from: a preset's, or the best guess."""
    sniffed = decks.sniff(content[: decks.HEAD_BYTES], decks.detect_encoding(content))
    if preset:
        return decks.preset_mapping(preset, sniffed)
    return decks.guess_mapping(sniffed)[1]


def rules(content: bytes, preset: str = "") -> list[tuple[Any, ...]]:
    return [
        (r.line, r.prefix, r.description, r.per_minute, r.connect_fee, r.initial, r.increment,
         r.free)
        for r in decks.read(content, detected(content, preset))
    ]  # fmt: skip


def test_a2billing_export_has_no_header_quotes_everything_and_block_0_is_per_second():
    content = (
        b'"Afghanistan","93","0.2","60","60","0"\r\n'
        b'"Albania Mobile","35567","0.15","0","0","0.05"\r'  # a Mac browser: CR alone
        b'"Algeria","213","0.1","30","6","0"\r\n'
    )
    assert decks.guess_mapping(decks.sniff(content))[0] == "a2billing_export"
    assert rules(content) == [
        (1, "93", "Afghanistan", Decimal("0.2"), Decimal(0), 60, 60, 0),
        (2, "35567", "Albania Mobile", Decimal("0.15"), Decimal("0.05"), 0, 1, 0),
        (3, "213", "Algeria", Decimal("0.1"), Decimal(0), 30, 6, 0),
    ]


def test_a2billing_default_export_of_three_columns():
    content = b'"Afghanistan","93","0.2"\r\n"Albania","355","0.1"\r\n'
    assert rules(content, "a2billing_export") == [
        (1, "93", "Afghanistan", Decimal("0.2"), Decimal(0), 60, 60, 0),
        (2, "355", "Albania", Decimal("0.1"), Decimal(0), 60, 60, 0),
    ]


def test_a2billing_table_dump_takes_no_prefix_id_for_a_name():
    columns = (
        "id,idtariffplan,dialprefix,destination,buyrate,buyrateinitblock,buyrateincrement,"
        "rateinitial,initblock,billingblock,connectcharge,disconnectcharge,stepchargea,chargea,"
        "timechargea,billingblocka,stepchargeb,chargeb,timechargeb,billingblockb,stepchargec,"
        "chargec,timechargec,billingblockc,startdate,stopdate,starttime,endtime,id_trunk,"
        "musiconhold,id_outbound_cidgroup,rounding_calltime,rounding_threshold,"
        "additional_block_charge,additional_block_charge_time,tag,is_merged,additional_grace,"
        "minimal_cost,announce_time_correction"
    )
    row = [""] * 40
    row[:12] = ["7", "1", "4930", "1234", "0.004", "60", "60", "0.0075", "0", "0", "0.01", "0"]
    row[24] = "2025-01-01 00:00:00"
    content = f"{columns}\n{','.join(row)}\n".encode()
    assert decks.guess_mapping(decks.sniff(content))[0] == "a2billing_dump"
    [found] = decks.read(content, detected(content))
    assert (found.prefix, found.description, found.per_minute) == ("4930", "", Decimal("0.0075"))
    assert (found.initial, found.increment, found.connect_fee) == (0, 1, Decimal("0.01"))
    assert found.effective == datetime(2025, 1, 1, tzinfo=UTC)


def test_astpp_connect_cost_included_seconds_and_increment():
    content = (
        b"Code,Destination,Connect Cost,Included Seconds,Per Minute Cost,Increment,Precedence,"
        b"Strip,Prepend\n"
        b"4930,Berlin,0.05,30,0.01,1,0,,\n"
        b"44,UK,0,0,0.02,0,0,,\n"
    )
    assert decks.guess_mapping(decks.sniff(content))[0] == "astpp"
    assert rules(content) == [
        (2, "4930", "Berlin", Decimal("0.01"), Decimal("0.05"), 1, 1, 30),
        (3, "44", "UK", Decimal("0.02"), Decimal(0), 0, 1, 0),
    ]


def test_nanp_pipes_us_dates_and_a_later_price_of_the_same_code():
    content = (
        b"code|duration|increment|interrate|intrarate|ijrate|effective_date\n"
        b"1201555|6|6|0.012|0.01|0.011|01/15/2025\n"
        b"1201555|6|6|0.02|0.01|0.011|03/01/2099\n"
    )
    mapping = detected(content)
    assert (mapping.delimiter, mapping.date_format) == ("|", "%m/%d/%Y")
    first, later = decks.read(content, mapping)
    assert first.effective == datetime(2025, 1, 15, tzinfo=UTC)
    assert (later.per_minute, later.effective) == (
        Decimal("0.02"),
        datetime(2099, 3, 1, tzinfo=UTC),
    )
    # Another of the three rates is another column of the same form.
    mapping.columns["per_minute"] = 4
    assert decks.read(content, mapping)[0].per_minute == Decimal("0.01")


def test_several_prefixes_in_one_field_are_expanded_up_to_the_limit():
    content = (
        b'Destination,Prefixes,Rate\nAustralia Melbourne,"61 38,39",0.02\n'
        b'Canada,"1 204,226",0.01\nAnguilla,1 264,0.1\nRange,"49 30-32",0.01\n'
    )
    assert [(r[0], r[1], r[2]) for r in rules(content, "multi")] == [
        (2, "6138", "Australia Melbourne"),
        (2, "6139", "Australia Melbourne"),
        (3, "1204", "Canada"),
        (3, "1226", "Canada"),
        (4, "1264", "Anguilla"),
        (5, "4930", "Range"),
        (5, "4931", "Range"),
        (5, "4932", "Range"),
    ]
    mapping = detected(content, "multi")
    mapping.max_prefixes = 2
    with pytest.raises(decks.DeckError) as refused:
        decks.read(content, mapping)
    assert refused.value.errors == ["line 5: prefix field '49 30-32' lists more than 2 prefixes"]


def test_european_byte_order_mark_semicolons_decimal_commas_and_german_headers():
    content = (
        "\ufeffPräfix;Zielnetz;Preis/Min;Taktung;Verbindungsentgelt\r\n"
        "4930;Berlin;0,0123;60/60;0,00\r\n"
        "4915;Mobilfunk;0,045;1/1;0,0125\r\n"
    ).encode()
    assert rules(content) == [
        (2, "4930", "Berlin", Decimal("0.0123"), Decimal("0.00"), 60, 60, 0),
        (3, "4915", "Mobilfunk", Decimal("0.045"), Decimal("0.0125"), 1, 1, 0),
    ]


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b'prefix,name,price\n49,"Germany,0.02\n33,France,0.01\n', "line 2:"),
        (b"prefix;name;price\n49;Germany;0.02\n", "missing column"),
        (b"prefix,name,price\r49,Germany,0.0x\r", "line 2: rate '0.0x' is not a number"),
    ],
)
def test_bad_files_name_their_line(content, error):
    mapping = decks.Mapping.from_json(services.PRESETS["simple"], decks.Mapping(delimiter=","))
    with pytest.raises(decks.DeckError) as refused:
        decks.read(content, mapping)
    assert error in " ".join(refused.value.errors)


def test_a_mapping_from_outside_is_checked_against_its_allowlists():
    with pytest.raises(decks.DeckError) as refused:
        decks.Mapping.from_json(
            {
                "delimiter": "x",
                "encoding": "rot13",
                "prepend": "1; DROP",
                "columns": {"prefix": -1, "oops": 1},
            }
        )
    assert len(refused.value.errors) == 5


# Semantics ----------------------------------------------------------------------------------


@given(
    rule=st.sampled_from([(60, 60), (30, 6), (1, 1), (0, 1), (6, 6)]),
    free=st.integers(min_value=0, max_value=120),
    connected=st.decimals(min_value=0, max_value=5000, places=3),
)
def test_free_seconds_cost_nothing_and_the_rest_is_billed_as_before(rule, free, connected):
    initial, increment = rule
    billed = rating.billed_seconds(
        answered=True, connected=connected, initial=initial, increment=increment, free=free
    )
    if free and connected <= free:
        assert billed == 0
    else:
        assert billed == rating.billed_seconds(
            answered=True, connected=connected - free, initial=initial, increment=increment
        )
    limit = rating.affordable_seconds(
        hold=Decimal("1.00"),
        per_minute=Decimal("0.1"),
        connect_fee=Decimal(0),
        initial=initial,
        increment=increment,
        free=free,
    )
    spent = rating.billed_seconds(
        answered=True, connected=Decimal(limit), initial=initial, increment=increment, free=free
    )
    assert rating.cost(billed=spent, per_minute=Decimal("0.1"), connect_fee=Decimal(0)) <= 1


def import_deck(carrier, carol, content: bytes, preset: str, since: datetime) -> RateDeck:
    deck = services.deck_upload(
        carrier=carrier,
        actor=carol,
        filename="deck.csv",
        content=content,
        mapping=services.PRESETS[preset],
        effective_from=since,
    )
    deck = services.deck_import(deck_id=deck.pk)
    assert deck.state == DeckState.READY, deck.errors
    return deck


@pytest.mark.django_db(transaction=True)
def test_a_rate_dated_later_is_not_used_before_its_moment(carrier, carol):
    now = timezone.now()
    later = (now + timedelta(days=30)).strftime("%m/%d/%Y")
    content = (
        b"code|duration|increment|interrate|intrarate|ijrate|effective_date\n"
        b"1201|60|60|0.010|0|0|01/01/2025\n"
        b"1201555|6|6|0.020|0|0|01/01/2025\n"
        + f"1201555|6|6|0.030|0|0|{later}\n1201777|6|6|0.040|0|0|{later}\n".encode()
    )
    deck = import_deck(carrier, carol, content, "nanp", now - timedelta(days=1))
    # A row dated before the deck is in force with the deck; only later ones keep a date.
    assert Rate.objects.filter(deck=deck, effective_from__isnull=False).count() == 2
    cache = RateCache(lambda f, *a: f(*a))
    for thread in cache.load_later([deck.pk]):
        thread.join(30)
    moment = timezone.now() + timedelta(days=31)

    def price(number: str, at: datetime | None = None) -> Decimal:
        rate = services.rate_for(deck, number, at)
        assert rate is not None
        return rate.per_minute

    assert price("+12015550000") == Decimal("0.020")  # the undated one, until then
    assert price("+12017770000") == Decimal("0.010")  # a shorter prefix, until then
    assert price("+12015550000", moment) == Decimal("0.030")
    assert price("+12017770000", moment) == Decimal("0.040")
    memory = cache.lookup(deck, "+12017770000")
    assert memory is not None
    assert memory.prefix == "1201"
    assert cache.lookup(deck, "+12015550000").per_minute == Decimal("0.020")  # type: ignore[union-attr]
    connection.close()


@pytest.mark.django_db
def test_a_call_within_its_free_seconds_costs_nothing_and_keeps_its_rule(
    carrier, carol, alice, access, caller
):
    import_deck(
        carrier,
        carol,
        b"Code,Destination,Connect Cost,Included Seconds,Per Minute Cost,Increment,Precedence,"
        b"Strip,Prepend\n4930,Berlin,0.05,30,0.60,6,0,,\n",
        "astpp",
        timezone.now() - timedelta(seconds=1),
    )
    services.forget_routes()
    for uniqueid, seconds, cost in [("short", 25, "0"), ("long", 41, "0.170000")]:
        decision = services.call_authorize(
            uniqueid=uniqueid,
            member=alice,
            caller=caller.number,
            access_number=access,
            digits="030123456",
        )
        assert decision.ok, decision
        call = services.call_settle(
            uniqueid=uniqueid,
            dial_status="ANSWER",
            answered_at=Decimal(100),
            ended_at=Decimal(100 + seconds),
        )
        # 41 s: 30 free, then 11 s in 6 s blocks (12 s) at 0.60/min, and the connect cost.
        assert call.cost == Decimal(cost), uniqueid
        record = CallRecord.objects.get(uniqueid=uniqueid)
        assert (record.free_seconds, record.increment_seconds) == (30, 6)
    quote = services.quote(digits="030123456", region="DE")
    assert quote.rate is not None
    assert quote.rate.free_seconds == 30


@pytest.mark.django_db(transaction=True)
def test_the_staff_page_sees_an_import_progress_and_a_second_import_waits(carrier, carol):
    """The lines read so far reach the deck while its rates are still uncommitted."""
    lines = [b"prefix,destination,rate,increment,connect_fee"]
    lines += [b"%d,Berlin %d,0.01,60/60,0" % (4930000 + n, n) for n in range(400_000)]
    deck = services.deck_draft(
        carrier=carrier,
        actor=carol,
        filename="big.csv",
        content=b"\n".join(lines) + b"\n",
        effective_from=timezone.now(),
    )
    # As deck_confirm leaves it, without the import it hands to a worker (here: two threads).
    RateDeck.objects.filter(pk=deck.pk).update(state=DeckState.IMPORTING, version=2)
    results: list[Any] = []

    def run() -> None:
        try:
            results.append(services.deck_import(deck_id=deck.pk).state)
        finally:
            connection.close()

    import threading

    workers = [threading.Thread(target=run) for _ in range(2)]
    for worker in workers:
        worker.start()
    seen = set()
    while any(w.is_alive() for w in workers):
        seen.add(RateDeck.objects.values_list("rows_done", flat=True).get(pk=deck.pk))
    for worker in workers:
        worker.join()
    assert sorted(results) == [DeckState.READY, DeckState.READY]
    assert any(0 < n < 400_000 for n in seen), seen
    assert Rate.objects.filter(deck=deck).count() == 400_000
    connection.close()


def test_what_carriers_spreadsheets_leave_in_a_file_is_read():
    """Excel's Unicode text (UTF-16, tabs), trailing delimiters on some lines, empty trailing
    fields dropped on others, 0049 for +49, currency signs on prices."""
    content = (
        "Prefix\tDestination\tRate\tIncrement\tConnect_fee\r\n"
        "0049\tGermany\t$0.010\t60/60\t0\t\r\n"
        "4930\tBerlin\t0,008 €\t1/1\r\n"
    ).encode("utf-16")
    sniffed = decks.sniff(content, decks.detect_encoding(content))
    assert (sniffed.encoding, sniffed.delimiter, sniffed.line_ending) == ("utf-16", "\t", "CRLF")
    assert rules(content, "standard") == [
        (2, "49", "Germany", Decimal("0.010"), Decimal(0), 60, 60, 0),
        (3, "4930", "Berlin", Decimal("0.008"), Decimal(0), 1, 1, 0),
    ]
    # A field too many with something in it is a line out of shape, as is one without a rate.
    bad = b"prefix,name,price\n49,Germany,0.01,oops\n33,France\n"
    with pytest.raises(decks.DeckError) as refused:
        decks.read(bad, detected(bad, "simple"))
    assert refused.value.errors == [
        "line 2: 4 fields, expected 3",
        "line 3: 2 fields, expected 3",
    ]


def test_excels_sep_line_dashed_country_codes_and_iso_dates():
    content = (
        b"sep=;\r\nprefix;name;price;valid from\r\n"
        b"1-264;Anguilla;0,10;2025-01-01T00:00:00Z\r\n"
        b"49 30-31;Berlin;0,01;2025-01-01 00:00:00+00\r\n"
    )
    sniffed = decks.sniff(content)
    assert (sniffed.delimiter, sniffed.header) == (";", True)
    mapping = detected(content)
    assert mapping.columns == {"prefix": 0, "description": 1, "per_minute": 2, "effective": 3}
    found = decks.read(content, mapping)
    new_year = datetime(2025, 1, 1, tzinfo=dt.UTC)  # as written, not the co-op's midnight
    assert [(r.line, r.prefix, r.effective) for r in found] == [
        (3, "1264", new_year),
        (4, "4930", new_year),
        (4, "4931", new_year),
    ]
    # A range runs upwards between codes of one length; anything else is named.
    with pytest.raises(ValueError, match="'41-38' is not like 38-41"):
        decks.prefixes("49 41-38")

"""Carrier rate decks in the layouts other billing systems export, built from real numbering data.

Tests and the import benchmark need price lists that look like the files carriers and other
switches actually hand over (ASTPP, A2Billing, NANP NPA-NXX decks, multi-prefix sheets,
European semicolon files), large and deterministic, and each with an independent statement of
what it means (`Deck.rules`) so an importer can be checked against it. Prefixes come from the
`phonenumbers` metadata (country codes, geocoding prefixes, mobile carrier prefixes), so they nest
the way real numbering plans do and longest-prefix matching is really exercised.
"""

from __future__ import annotations

import functools
import gc
import random
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import accumulate, compress, repeat
from pathlib import Path
from typing import TypeVar

import phonenumbers
from phonenumbers.carrierdata import CARRIER_DATA
from phonenumbers.geodata import GEOCODE_DATA
from phonenumbers.geodata.locale import LOCALE_DATA


@dataclass(frozen=True, slots=True)
class Expected:
    """One rule of a deck, as the importer must understand it.

    The generator states the meaning of every file line independently of the file's own
    syntax, so a test compares the importer's result with this and not with a second parser.
    """

    prefix: str  # E.164 digits without '+', 1-15 of them, never starting with 0
    description: str  # "" where the layout has no destination name
    per_minute: Decimal  # at most 6 decimals, 0 <= x < 5
    connect_fee: Decimal
    initial: int  # seconds of the first block (0..3600)
    increment: int  # seconds per later block, >= 1 (1 = per second)
    free: int  # included seconds, 0 if the layout has none
    effective: datetime | None  # aware UTC; None = from the deck's own date


_SET_FIELDS = tuple(Expected.__dict__[field.name].__set__ for field in fields(Expected))


def _rule(
    prefix: str,
    description: str,
    per_minute: Decimal,
    connect_fee: Decimal,
    initial: int,
    increment: int,
    free: int,
    effective: datetime | None,
) -> Expected:
    """Make an Expected by setting its slots directly.

    The frozen dataclass's __init__ sends every field through object.__setattr__; a deck of
    two million rules is built in half the time this way, with an identical result.
    """
    rule = object.__new__(Expected)
    (
        set_prefix,
        set_description,
        set_per_minute,
        set_connect_fee,
        set_initial,
        set_increment,
        set_free,
        set_effective,
    ) = _SET_FIELDS
    set_prefix(rule, prefix)
    set_description(rule, description)
    set_per_minute(rule, per_minute)
    set_connect_fee(rule, connect_fee)
    set_initial(rule, initial)
    set_increment(rule, increment)
    set_free(rule, free)
    set_effective(rule, effective)
    return rule


@dataclass
class Deck:
    """A generated deck: the file's bytes, what they mean, and a plausible file name.

    Keeping content and meaning together lets a test upload the bytes and check every rule.
    """

    layout: str
    content: bytes
    rules: list[Expected]
    filename: str


LAYOUTS: tuple[str, ...] = (
    "astpp",
    "a2billing_export",
    "a2billing_dump",
    "nanp",
    "multi",
    "european",
)

A2BILLING_COLUMNS: tuple[str, ...] = (
    "id",
    "idtariffplan",
    "dialprefix",
    "destination",
    "buyrate",
    "buyrateinitblock",
    "buyrateincrement",
    "rateinitial",
    "initblock",
    "billingblock",
    "connectcharge",
    "disconnectcharge",
    "stepchargea",
    "chargea",
    "timechargea",
    "billingblocka",
    "stepchargeb",
    "chargeb",
    "timechargeb",
    "billingblockb",
    "stepchargec",
    "chargec",
    "timechargec",
    "billingblockc",
    "startdate",
    "stopdate",
    "starttime",
    "endtime",
    "id_trunk",
    "musiconhold",
    "id_outbound_cidgroup",
    "rounding_calltime",
    "rounding_threshold",
    "additional_block_charge",
    "additional_block_charge_time",
    "tag",
    "is_merged",
    "additional_grace",
    "minimal_cost",
    "announce_time_correction",
)

_FILENAMES = {
    "astpp": "astpp_termination_rates.csv",
    "a2billing_export": "a2billing_ratecard_export.csv",
    "a2billing_dump": "cc_ratecard.csv",
    "nanp": "nanp_npanxx_deck.txt",
    "multi": "multi_prefix_rates.csv",
    "european": "Preisliste.csv",
}

# Names for regions the locale table lacks (non-geographic codes use the pseudo-region 001).
_EXTRA_NAMES: dict[str, tuple[str, str]] = {
    "AC": ("Ascension Island", "Ascension"),
    "XK": ("Kosovo", "Kosovo"),
    "800": ("International Freephone", "Internationale Freephone-Nummern"),
    "808": ("International Shared Cost", "Internationale Shared-Cost-Nummern"),
    "870": ("Inmarsat", "Inmarsat"),
    "878": ("Universal Personal Telecommunications", "Universelle persönliche Rufnummern"),
    "881": ("Global Mobile Satellite System", "Globales Satellitenmobilfunksystem"),
    "882": ("International Networks", "Internationale Netze"),
    "883": ("International Networks", "Internationale Netze"),
    "888": ("OCHA Disaster Relief", "OCHA Katastrophenhilfe"),
    "979": ("International Premium Rate", "Internationale Premium-Dienste"),
}

_Tiers = tuple[tuple[int, float, float], ...]

# Price tiers (weight, lowest, highest) per minute: most destinations are cheap, mobile dearer,
# a thin tail of satellite and premium ranges close to the 5.00 ceiling.
_FIXED_TIERS: _Tiers = (
    (5, 0.0, 0.0),
    (550, 0.001, 0.03),
    (250, 0.03, 0.15),
    (140, 0.15, 0.6),
    (50, 0.6, 2.0),
    (5, 2.0, 4.99),
)
_MOBILE_TIERS: _Tiers = (
    (0, 0.0, 0.0),
    (150, 0.005, 0.03),
    (450, 0.03, 0.15),
    (300, 0.15, 0.6),
    (90, 0.6, 2.0),
    (10, 2.0, 4.99),
)
_NANP_TIERS: _Tiers = (
    (0, 0.0, 0.0),
    (700, 0.0005, 0.01),
    (250, 0.01, 0.05),
    (45, 0.05, 0.3),
    (5, 0.3, 1.5),
    (0, 1.5, 1.5),
)

_DIGITS = "0123456789"

_T = TypeVar("_T")


# --------------------------------------------------------------------------- metadata


@dataclass
class _Meta:
    """The numbering metadata the generator draws from, loaded once per process.

    Loading and sorting the geocoding tables costs a noticeable fraction of a second, so every
    deck shares one copy.
    """

    ccs: list[str]  # country calling codes, sorted
    cc_of: dict[str, str]  # every prefix of the metadata → its country code
    by_length: list[list[str]]  # geographic and mobile prefixes below them, by length, sorted
    mobile: frozenset[str]
    npa_region: dict[str, str]  # NANP area code → region code
    npas: list[str]  # NANP area codes in the geocoding data, sorted
    names: dict[str, dict[str, str]]  # lang → origin prefix → description
    countries: dict[tuple[str, str], str]  # (country code or NANP NPA, lang) → country name


@functools.cache
def _meta() -> _Meta:
    """Gather the prefix tables of `phonenumbers` into one sorted view.

    Country codes, geocoding prefixes and mobile carrier prefixes together give about 316,000
    distinct, realistically nested prefixes to choose from.
    """
    ccs = sorted(str(cc) for cc in phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
    cc_set = frozenset(ccs)
    geo = [p for p in GEOCODE_DATA if p not in cc_set]
    geo_set = set(geo)
    mobile = [p for p in CARRIER_DATA if p not in geo_set and p not in cc_set]
    by_length: list[list[str]] = [[] for _ in range(16)]
    cc_of = {cc: cc for cc in ccs}
    for prefix in geo + mobile:
        by_length[len(prefix)].append(prefix)
        cc_of[prefix] = _cc_of(prefix, cc_set)
    npas = sorted({p[1:4] for p in GEOCODE_DATA if p[0] == "1" and len(p) >= 4})
    npa_region = {}
    for npa in npas:
        region = None
        for tail in ("2345678", "5550100", "4567890", "9876543"):
            number = phonenumbers.PhoneNumber(country_code=1, national_number=int(npa + tail))
            region = phonenumbers.region_code_for_number(number)
            if region:
                break
        npa_region[npa] = region or "US"
    return _Meta(
        ccs=ccs,
        cc_of=cc_of,
        by_length=[sorted(group) for group in by_length if group],
        mobile=frozenset(mobile),
        npa_region=npa_region,
        npas=npas,
        names={},
        countries={},
    )


def _cc_of(prefix: str, ccs: frozenset[str]) -> str:
    """Return the country calling code a prefix starts with.

    Country codes form a prefix-free set, so at most one of the first three digit strings is one.
    """
    for n in (1, 2, 3):
        if prefix[:n] in ccs:
            return prefix[:n]
    raise ValueError(f"{prefix} starts with no country code")


def _locale_name(region: str, lang: str) -> str:
    """Return a region's name in a language from the locale table, following its references.

    The table stores most names as '*xx', a pointer to another language's entry.
    """
    if region in _EXTRA_NAMES:
        en, de = _EXTRA_NAMES[region]
        return de if lang == "de" else en
    entry = LOCALE_DATA.get(region)
    if not entry:
        return region
    name = entry.get(lang) or entry.get("en") or entry.get("aa") or region
    for _ in range(5):
        if not name.startswith("*"):
            break
        name = entry.get(name[1:], region)
    return name


def _country(cc: str, prefix: str, lang: str) -> str:
    """Name the country a prefix belongs to.

    NANP area codes are told apart by their region (Canada, Jamaica, ...), other shared codes
    take their main region, non-geographic codes a service name.
    """
    meta = _meta()
    area = prefix[1:4] if cc == "1" and len(prefix) >= 4 else ""
    key = (cc + area, lang)
    name = meta.countries.get(key)
    if name is None:
        if cc in _EXTRA_NAMES:
            name = _locale_name(cc, lang)
        else:
            region = meta.npa_region.get(area, "US") if area else None
            region = region or phonenumbers.COUNTRY_CODE_TO_REGION_CODE[int(cc)][0]
            name = _locale_name(region, lang)
        meta.countries[key] = name
    return name


def _describe(origins: Iterable[str], lang: str) -> dict[str, str]:
    """Describe metadata prefixes as a carrier deck would, e.g. 'Germany Berlin'.

    Generated sub-prefixes inherit the description of the metadata prefix they extend, like the
    number blocks of one town in a real deck. Names are kept per process: a benchmark builds
    several decks from the same prefixes.
    """
    meta = _meta()
    cache = meta.names.setdefault(lang, {})
    cc_of = meta.cc_of
    mobile = meta.mobile
    word = "Mobil" if lang == "de" else "Mobile"
    countries: dict[str, str] = {}
    out = {}
    for origin in origins:
        name = cache.get(origin)
        if name is None:
            cc = cc_of[origin]
            key = origin[:4] if cc == "1" else cc
            country = countries.get(key)
            if country is None:
                country = countries[key] = _country(cc, origin, lang)
            if origin == cc:
                name = country
            elif origin in mobile:
                entry = CARRIER_DATA[origin]
                carrier = entry.get(lang) or entry.get("en") or next(iter(entry.values()), "")
                name = f"{country} {word} {carrier}".rstrip()
            else:
                entry = GEOCODE_DATA.get(origin, {})
                place = entry.get(lang) or entry.get("en") or next(iter(entry.values()), "")
                name = country if not place or place == country else f"{country} {place}"
            cache[origin] = name
        out[origin] = name
    return out


def _names(origins: list[str], lang: str, delimiter: str) -> tuple[list[str], list[str]]:
    """Return each row's description, plain and as the file shows it (quoted if needed).

    Rows share far fewer origins than there are rows, so each is described and quoted once;
    an empty delimiter means the layout quotes every field, so only quotes are doubled.
    """
    plain = _describe(dict.fromkeys(origins), lang)
    if delimiter:
        shown = {o: _quote(name, delimiter) for o, name in plain.items()}
    else:
        shown = {o: name.replace('"', '""') for o, name in plain.items()}
    return [plain[o] for o in origins], [shown[o] for o in origins]


# --------------------------------------------------------------------------- drawing values


def _pool(rng: random.Random, n: int, *, with_cc: bool = True) -> tuple[list[str], list[str]]:
    """Choose n distinct prefixes, sorted, with the metadata prefix each one derives from.

    Country codes come first (they are the fallback every real deck has), then the metadata
    prefixes shortest first (area codes before exchanges, as small decks have them; the last
    length taken is sampled); when more are needed, runs of sibling blocks are appended under
    random existing prefixes (rarely beyond 12 digits, at most 15), so they nest like number blocks.
    """
    meta = _meta()
    ccs = meta.ccs if with_cc else []
    if n <= len(ccs):
        chosen = rng.sample(ccs, n)
    else:
        chosen = list(ccs)
        for group in meta.by_length:
            room = n - len(chosen)
            if room >= len(group):
                chosen.extend(group)
            else:
                chosen.extend(rng.sample(group, room))
                break
    prefixes = chosen
    origins = list(chosen)
    seen = set(chosen)
    used: set[int] = set()  # parents already given children
    rand = rng.random
    while len(prefixes) < n:
        # A round gives random unused prefixes a run of 2-10 sibling children each (like
        # 4930 → 49301-49305). Children of different parents never coincide, so only the
        # existing prefixes need checking. Real decks seldom go past 12 digits, so longer
        # parents are mostly passed over.
        count = len(prefixes)
        need = n - count
        drawn = dict.fromkeys([int(count * rand()) for _ in range(need // 4 + 16)])
        picks = [i for i in drawn if i not in used]
        used.update(picks)
        picks = [
            i for i in picks if len(prefixes[i]) < 12 or (len(prefixes[i]) < 15 and rand() < 0.05)
        ]
        picks.sort(key=prefixes.__getitem__)  # children come out nearly sorted: a cheap sort
        starts = [int(rand() * 8) for _ in picks]
        ends = [lo + 2 + int(rand() * (9 - lo)) for lo in starts]
        runs = list(zip(picks, starts, ends, strict=True))
        children = [prefixes[i] + digit for i, lo, hi in runs for digit in _DIGITS[lo:hi]]
        parents = [o for i, lo, hi in runs for o in repeat(origins[i], hi - lo)]
        fresh = [child not in seen for child in children]
        new = list(compress(children, fresh))[:need]
        if not new and len(used) >= count:
            raise ValueError(f"cannot make {n} distinct prefixes of at most 15 digits")
        prefixes += new
        origins += list(compress(parents, fresh))[: len(new)]
        seen.update(new)
    order = sorted(range(len(prefixes)), key=prefixes.__getitem__)
    return [prefixes[i] for i in order], [origins[i] for i in order]


def _draw(rng: random.Random, values: tuple[_T, ...], weights: tuple[int, ...], n: int) -> list[_T]:
    """Draw n values with integer weights, one random() per value.

    A lookup table of sum(weights) entries is several times faster than random.choices for a
    million draws.
    """
    table = [value for value, weight in zip(values, weights, strict=True) for _ in range(weight)]
    size = len(table)
    rand = rng.random
    return [table[int(rand() * size)] for _ in range(n)]


def _prices(
    rng: random.Random,
    mobile: list[bool],
    scale: int,
    tiers_fixed: _Tiers = _FIXED_TIERS,
    tiers_mobile: _Tiers = _MOBILE_TIERS,
) -> list[int]:
    """Draw per-minute prices in units of 10**-scale, below 5.00.

    One random() picks the tier (by table) and, with its fraction, the amount in the tier;
    mobile prefixes use a dearer distribution, as they do in real decks.
    """
    unit = 10**scale
    tables = []
    for tiers in (tiers_fixed, tiers_mobile):
        table = []
        for weight, lo, hi in tiers:
            if not 0 <= lo <= hi < 5:
                raise ValueError(f"tier {lo}-{hi} is not within 0 to 5")
            low = round(lo * unit)
            table.extend([(low, round(hi * unit) - low + 1)] * weight)
        tables.append(table)
    fixed, dear = tables
    size = len(fixed)
    if len(dear) != size:
        raise ValueError("tier weights must have the same sum")
    rand = rng.random
    # x's whole part picks the tier's (lowest, count) pair, its fraction the amount within.
    return [
        (tier := (dear if is_mobile else fixed)[k := int(x := rand() * size)])[0]
        + int((x - k) * tier[1])
        for is_mobile in mobile
    ]


def _money(
    amounts: list[int], scale: int, *, trim: bool, comma: bool = False
) -> tuple[list[str], list[Decimal]]:
    """Format integer amounts of 10**-scale as the file writes them, and as Decimals.

    Both come from one string, so the Decimal is exactly what the file says; each distinct
    amount (a deck repeats a few thousand) is formatted once.
    """
    unit = 10**scale
    texts: dict[int, str] = {}
    values: dict[int, Decimal] = {}
    for amount in set(amounts):
        text = f"{amount // unit}.{amount % unit:0{scale}d}"
        if trim:
            text = text.rstrip("0").rstrip(".")
        values[amount] = Decimal(text)
        texts[amount] = text.replace(".", ",") if comma else text
    return [texts[a] for a in amounts], [values[a] for a in amounts]


def _quote(value: str, delimiter: str) -> str:
    """Quote a field the way the csv module's minimal quoting would.

    Place names such as 'Jersey City, NJ' contain the delimiter; everything else stays bare.
    """
    if delimiter in value or '"' in value or "\n" in value or "\r" in value:
        return '"' + value.replace('"', '""') + '"'
    return value


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a block.

    Millions of new objects would trigger it over and over (a third of the time at 1M rows);
    none of them forms a cycle, so nothing is lost by collecting afterwards.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _deck_date(now: datetime) -> datetime:
    """Return the 'current' date a deck states for its rows: 1 January, some weeks back.

    A fixed calendar date looks like a real deck, and being at least 30 days before `now`
    keeps it in the past for whatever `now` a test passes.
    """
    return datetime((now - timedelta(days=30)).year, 1, 1, tzinfo=UTC)


def _a2billing_meaning(init: list[int], block: list[int]) -> tuple[list[int], list[int]]:
    """Translate A2Billing's initblock/billingblock columns to initial and increment seconds.

    Billingblock 0 means per second; initblock 0 means the first block is an ordinary one.
    """
    increments = [b or 1 for b in block]
    return [i or inc for i, inc in zip(init, increments, strict=True)], increments


# --------------------------------------------------------------------------- layouts

_Built = tuple[list[str], list[Expected]]


def _astpp(rng: random.Random, rows: int) -> _Built:
    """Build an ASTPP termination-rate export.

    ASTPP bills 'Included Seconds' free and uses one increment for the first and later blocks.
    """
    meta = _meta()
    prefixes, origins = _pool(rng, rows)
    names, shown = _names(origins, "en", ",")
    price_text, prices = _money(_prices(rng, [o in meta.mobile for o in origins], 5), 5, trim=True)
    connect_units = _draw(rng, (0, 1000, 1250, 2500, 5000, 10000), (85, 4, 3, 3, 3, 2), rows)
    connect_text, connects = _money(connect_units, 5, trim=True)
    included = _draw(rng, (0, 30, 60), (88, 7, 5), rows)
    increments = _draw(rng, (1, 6, 30, 60), (30, 15, 15, 40), rows)
    lines = [
        "Code,Destination,Connect Cost,Included Seconds,Per Minute Cost,Increment,"
        "Precedence,Strip,Prepend\n"
    ]
    lines += [
        f"{p},{d},{c},{f},{r},{i},0,,\n"
        for p, d, c, f, r, i in zip(
            prefixes, shown, connect_text, included, price_text, increments, strict=True
        )
    ]
    rules = list(
        map(
            _rule,
            prefixes,
            names,
            prices,
            connects,
            increments,
            increments,
            included,
            repeat(None),
        )
    )
    return lines, rules


def _a2billing_export(rng: random.Random, rows: int) -> _Built:
    """Build A2Billing's rate-card export: no header, all fields quoted, CRLF.

    This is what its 'export ratecard' screen writes and what people mail around; about 12% of
    rows have billingblock 0, A2Billing's per-second billing.
    """
    meta = _meta()
    prefixes, origins = _pool(rng, rows)
    names, shown = _names(origins, "en", "")
    price_text, prices = _money(_prices(rng, [o in meta.mobile for o in origins], 5), 5, trim=False)
    init = _draw(rng, (0, 30, 60), (50, 20, 30), rows)
    block = _draw(rng, (0, 1, 6, 30, 60), (12, 18, 20, 15, 35), rows)
    connect_units = _draw(rng, (0, 1000, 2000, 5000, 10000), (85, 5, 4, 4, 2), rows)
    connect_text, connects = _money(connect_units, 5, trim=False)
    initials, increments = _a2billing_meaning(init, block)
    lines = [
        f'"{d}","{p}","{r}","{i}","{b}","{c}"\r\n'
        for d, p, r, i, b, c in zip(
            shown, prefixes, price_text, init, block, connect_text, strict=True
        )
    ]
    rules = list(
        map(
            _rule,
            prefixes,
            names,
            prices,
            connects,
            initials,
            increments,
            repeat(0),
            repeat(None),
        )
    )
    return lines, rules


def _a2billing_dump(rng: random.Random, rows: int, now: datetime) -> _Built:
    """Build a CSV dump of A2Billing's cc_ratecard table with all its columns.

    The buy side, progressive charges and other columns carry numbers an importer must ignore;
    `destination` is a numeric cc_prefix id, so the rules have no description.
    """
    meta = _meta()
    prefixes, origins = _pool(rng, rows)
    units = _prices(rng, [o in meta.mobile for o in origins], 5)
    price_text, prices = _money(units, 5, trim=False)
    rand = rng.random
    buy_text = _money([int(u * (0.5 + 0.45 * rand())) for u in units], 5, trim=False)[0]
    init = _draw(rng, (0, 30, 60), (50, 20, 30), rows)
    block = _draw(rng, (0, 1, 6, 30, 60), (12, 18, 20, 15, 35), rows)
    connect_units = _draw(rng, (0, 1000, 2000, 5000, 10000), (85, 5, 4, 4, 2), rows)
    connect_text, connects = _money(connect_units, 5, trim=False)
    disconnect_units = _draw(rng, (0, 500, 1000, 3000), (90, 4, 4, 2), rows)
    disconnect_text = _money(disconnect_units, 5, trim=False)[0]
    buy_init = _draw(rng, (0, 30, 60), (60, 10, 30), rows)
    buy_inc = _draw(rng, (1, 6, 60), (30, 30, 40), rows)
    step_text = _money(_draw(rng, (0, 100, 2500), (80, 10, 10), rows), 5, trim=False)[0]
    ccs = meta.cc_of
    initials, increments = _a2billing_meaning(init, block)
    start = _deck_date(now).strftime("%Y-%m-%d %H:%M:%S")
    # stepchargeb .. billingblockc, startdate .. announce_time_correction: the same on every row.
    tail = (
        f"0.00000,0.00000,0,0,0.00000,0.00000,0,0,"
        f"{start},,0,10079,-1,,-1,0,0,0.00000,0,,0,0,0.00000,1.000\n"
    )
    lines = [",".join(A2BILLING_COLUMNS) + "\n"]
    lines += [
        f"{n},1,{p},{ccs[o]},{bt},{bi},{bn},{r},{i},{b},{c},{dc},{s},{s},0,{b},{tail}"
        for n, p, o, bt, bi, bn, r, i, b, c, dc, s in zip(
            range(1, rows + 1),
            prefixes,
            origins,
            buy_text,
            buy_init,
            buy_inc,
            price_text,
            init,
            block,
            connect_text,
            disconnect_text,
            step_text,
            strict=True,
        )
    ]
    rules = list(
        map(
            _rule,
            prefixes,
            repeat(""),
            prices,
            connects,
            initials,
            increments,
            repeat(0),
            repeat(None),
        )
    )
    return lines, rules


def _nanp(rng: random.Random, rows: int, now: datetime) -> _Built:
    """Build a US-style NPA-NXX deck: pipe-separated, US dates, some codes re-priced ahead.

    About 2% of the codes appear a second time with a later (future) date and a new price, the
    way carriers announce price changes; both lines are rules. When more codes are asked for
    than real area codes times NXX 200-999 give, thousands blocks (8 digits) are added.
    """
    meta = _meta()
    repeats = rows // 51
    unique = rows - repeats
    codes7 = [f"1{npa}{nxx}" for npa in meta.npas for nxx in range(200, 1000)]
    if unique <= len(codes7):
        codes = [codes7[i] for i in rng.sample(range(len(codes7)), unique)]
    else:
        extra = rng.sample(range(len(codes7) * 10), unique - len(codes7))
        codes = codes7 + [codes7[i // 10] + _DIGITS[i % 10] for i in extra]
    codes.sort()
    again = sorted(rng.sample(range(unique), repeats))
    base = _prices(rng, [False] * unique, 6, _NANP_TIERS, _NANP_TIERS)
    durations = _draw(rng, (6, 30, 60), (40, 20, 40), unique)
    steps = _draw(rng, (6, 60), (60, 40), unique)
    rand = rng.random
    # Expand to one entry per line: the code's line, then (for ~2%) its future re-pricing.
    order: list[int] = []
    later: list[bool] = []
    pos = 0
    for i in again:
        order.extend(range(pos, i + 1))
        later.extend([False] * (i + 1 - pos))
        order.append(i)
        later.append(True)
        pos = i + 1
    order.extend(range(pos, unique))
    later.extend([False] * (unique - pos))
    inter = []
    for i, is_later in zip(order, later, strict=True):
        units = base[i]
        if is_later:
            delta = 1 + int(rand() * (units // 4 + 500))
            units = units + delta if units + delta < 4_999_999 else max(0, units - delta)
        inter.append(units)
    inter_text, prices = _money(inter, 6, trim=False)
    intra_text = _money([int(u * (0.6 + 0.4 * rand())) for u in inter], 6, trim=False)[0]
    ij_text = _money([min(4_999_999, int(u * 1.1)) for u in inter], 6, trim=False)[0]
    past = _deck_date(now)
    future = datetime.combine((now + timedelta(days=30)).date(), datetime.min.time(), UTC)
    dates = {False: (past.strftime("%m/%d/%Y"), past), True: (future.strftime("%m/%d/%Y"), future)}
    lines = ["code|duration|increment|interrate|intrarate|ijrate|effective_date\n"]
    lines += [
        f"{codes[i]}|{durations[i]}|{steps[i]}|{a}|{b}|{c}|{dates[x][0]}\n"
        for i, x, a, b, c in zip(order, later, inter_text, intra_text, ij_text, strict=True)
    ]
    zero = Decimal(0)
    rules = [
        _rule(codes[i], "", price, zero, durations[i], steps[i], 0, dates[x][1])
        for i, x, price in zip(order, later, prices, strict=True)
    ]
    return lines, rules


def _multi(rng: random.Random, rows: int) -> _Built:
    """Build a sheet with several prefixes per line: 'Australia Melbourne,"61 38,39",0.02'.

    Each line names a country code and sibling sub-prefixes under it; lines hold 1 to 8 of
    them (about 2 on average), and never cross a country code.
    """
    meta = _meta()
    sizes = _draw(rng, tuple(range(1, 9)), (55, 20, 9, 6, 4, 3, 2, 1), rows)
    prefixes, origins = _pool(rng, sum(sizes), with_cc=False)
    # Lines are consecutive runs of the sorted prefixes. A country's prefixes are contiguous, so
    # cutting also where each country starts keeps lines within one; those few extra cuts only
    # push the pool's last prefixes out of the deck.
    cuts = set(accumulate(sizes))
    cuts.update(bisect_left(prefixes, cc) for cc in _meta().ccs)
    cuts.discard(0)
    edges = sorted(cuts)
    cc_of = _meta().cc_of
    spans = [
        (a, b, cc_of[origins[a]]) for a, b in zip([0, *edges[:-1]], edges[:rows], strict=False)
    ]
    firsts = [origins[a] for a, _, _ in spans]
    names, shown = _names(firsts, "en", ",")
    units = _prices(rng, [o in meta.mobile for o in firsts], 5)
    rand = rng.random
    # Sheets often quote whole tenths of a cent.
    units = [u - u % 100 if u > 100 and rand() < 0.3 else u for u in units]
    price_text, prices = _money(units, 5, trim=True)
    lines = ["Destination,Prefixes,Rate\n"]
    lines += [
        # Every joined prefix starts with cc, so dropping cc after each comma leaves the subs.
        f'{d},"{cc} {",".join(prefixes[a:b])[len(cc) :].replace("," + cc, ",")}",{r}\n'
        for (a, b, cc), d, r in zip(spans, shown, price_text, strict=True)
    ]
    zero = Decimal(0)
    rules = [
        _rule(p, name, price, zero, 60, 60, 0, None)
        for (a, b, _), name, price in zip(spans, names, prices, strict=True)
        for p in prefixes[a:b]
    ]
    return lines, rules


def _european(rng: random.Random, rows: int) -> _Built:
    """Build a German-style price list: BOM, semicolons, decimal commas, 'Taktung' 60/60.

    Names are German (umlauts included), and Taktung gives first and later block seconds.
    """
    meta = _meta()
    prefixes, origins = _pool(rng, rows)
    names, shown = _names(origins, "de", ";")
    units = _prices(rng, [o in meta.mobile for o in origins], 4)
    price_text, prices = _money(units, 4, trim=False, comma=True)
    taktung = _draw(
        rng,
        ((60, 60), (1, 1), (30, 6), (60, 1), (60, 10), (30, 30), (180, 60)),
        (35, 20, 15, 10, 8, 10, 2),
        rows,
    )
    fees = (
        ("0,00", Decimal(0)),
        ("0,05", Decimal("0.05")),
        ("0,10", Decimal("0.10")),
        ("0,0125", Decimal("0.0125")),
        ("0,15", Decimal("0.15")),
    )
    connects = _draw(rng, fees, (80, 7, 5, 5, 3), rows)
    lines = ["\ufeffPräfix;Zielnetz;Preis/Min;Taktung;Verbindungsentgelt\r\n"]
    lines += [
        f"{p};{d};{r};{t[0]}/{t[1]};{c[0]}\r\n"
        for p, d, r, t, c in zip(prefixes, shown, price_text, taktung, connects, strict=True)
    ]
    rules = [
        _rule(p, name, price, c[1], t[0], t[1], 0, None)
        for p, name, price, t, c in zip(prefixes, names, prices, taktung, connects, strict=True)
    ]
    return lines, rules


def build(layout: str, rows: int = 200_000, *, seed: int = 1, now: datetime | None = None) -> Deck:
    """Generate a deck of `rows` file data lines in one of LAYOUTS.

    The same layout, rows, seed and `now` always give the same bytes; `now` (default: the
    current time) only places the dates of the layouts that carry dates.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if rows < 0:
        raise ValueError("rows must not be negative")
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    rng = random.Random(f"{layout}:{seed}")
    with _collector_paused():
        if layout == "astpp":
            lines, rules = _astpp(rng, rows)
        elif layout == "a2billing_export":
            lines, rules = _a2billing_export(rng, rows)
        elif layout == "a2billing_dump":
            lines, rules = _a2billing_dump(rng, rows, now)
        elif layout == "nanp":
            lines, rules = _nanp(rng, rows, now)
        elif layout == "multi":
            lines, rules = _multi(rng, rows)
        else:
            lines, rules = _european(rng, rows)
        text = "".join(lines)
        del lines  # peak memory: the lines or the bytes, next to the text, never all three
        content = text.encode("utf-8")
        del text
    return Deck(layout=layout, content=content, rules=rules, filename=_FILENAMES[layout])


def write(deck: Deck, path: Path) -> None:
    """Write a deck's bytes to a file.

    Benchmarks and manual trials upload from disk; the bytes go out unchanged.
    """
    path.write_bytes(deck.content)


# --------------------------------------------------------------------------- oracle

_INDEX: tuple[list[Expected], int, dict[str, list[Expected]]] | None = None


def _index(rules: list[Expected]) -> dict[str, list[Expected]]:
    """Map each prefix to its rules, remembering the last list indexed.

    Tests ask for many numbers against one big deck; building the map once per list keeps that
    fast. A list whose length changed is indexed again; the last list stays referenced until
    another one is indexed.
    """
    global _INDEX
    if _INDEX is not None and _INDEX[0] is rules and _INDEX[1] == len(rules):
        return _INDEX[2]
    index: dict[str, list[Expected]] = {}
    with _collector_paused():
        for rule in rules:
            found = index.get(rule.prefix)
            if found is None:
                index[rule.prefix] = [rule]
            else:
                found.append(rule)
    _INDEX = (rules, len(rules), index)
    return index


def longest(
    rules: list[Expected], e164_digits: str, at: datetime, deck_from: datetime
) -> Expected | None:
    """Find the rule that prices a number at a time, by plain longest-prefix matching.

    Independent longest-prefix computation: among rules whose effective (None → deck_from) ≤ at,
    the one with the longest prefix of the number; for equal prefix the latest effective wins.
    """
    index = _index(rules)
    for length in range(min(len(e164_digits), 15), 0, -1):
        candidates = index.get(e164_digits[:length])
        if not candidates:
            continue
        best: Expected | None = None
        best_from = deck_from
        for rule in candidates:
            starts = deck_from if rule.effective is None else rule.effective
            if starts <= at and (best is None or starts > best_from):
                best, best_from = rule, starts
        if best is not None:
            return best
    return None


def sample_numbers(rules: list[Expected], k: int, *, seed: int = 2) -> list[str]:
    """Pick k numbers (E.164 digits, 8-15 long) to price against a deck.

    k digit strings (E.164 digits, 8-15 long) that mostly start with some rule's prefix plus
    random digits, and a few that match none (e.g. start with 99999 not in the deck).
    """
    if k <= 0:
        return []
    rng = random.Random(seed)
    index = _index(rules)
    misses = k if not rules else k // 50 if k >= 50 else 1 if k >= 10 else 0
    numbers: list[str] = []
    # Numbers nobody prices: 999 is no country code, so these are free unless a deck was
    # stretched that far; each start is tried a while before the next.
    starts = ("99999", "99990", "99988", "9999", "999")
    tries = 0
    while len(numbers) < misses and (not rules or tries < 50 * len(starts)):
        start = starts[min(tries // 50, len(starts) - 1)]
        tries += 1
        length = rng.randint(8, 15)
        number = start + _random_digits(rng, length - len(start))
        if not any(number[:n] in index for n in range(1, len(number) + 1)):
            numbers.append(number)
    while len(numbers) < k:
        prefix = rules[rng.randrange(len(rules))].prefix
        length = rng.randint(max(8, len(prefix)), 15)
        numbers.append(prefix + _random_digits(rng, length - len(prefix)))
    rng.shuffle(numbers)
    return numbers


def _random_digits(rng: random.Random, n: int) -> str:
    """Return n random decimal digits (possibly starting with 0).

    Subscriber numbers after a prefix may start with any digit.
    """
    return f"{rng.randrange(10**n):0{n}d}" if n > 0 else ""

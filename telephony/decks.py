"""Rate decks as carriers write them: how a file is written, how its columns map, its rows.

Pure: bytes in, rules or line-numbered errors out. ``services`` stores and imports decks and
the staff pages preview them with this same code, so that the preview shows what the import
will do. Files are read as a stream of chunks, so that a deck of a million lines never has to
be in memory as text or as rows.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from telephony import rating

# What a column can mean; only prefix and rate are required.
FIELDS: dict[str, Any] = {
    "prefix": _("Prefix"),
    "description": _("Destination"),
    "per_minute": _("Rate per minute"),
    "connect_fee": _("Connect fee"),
    "initial": _("Initial block (seconds)"),
    "increment": _("Increment (seconds)"),
    "interval": _("Initial/increment in one column (60/60)"),
    "free": _("Free seconds"),
    "effective": _("Effective date"),
}
REQUIRED = ("prefix", "per_minute")
DELIMITERS: dict[str, Any] = {",": _("comma"), ";": _("semicolon"), "|": _("pipe"), "\t": _("tab")}
ENCODINGS: dict[str, Any] = {
    "utf-8": _("UTF-8"),
    "utf-8-sig": _("UTF-8 with byte order mark"),
    "utf-16": _("UTF-16 (Excel's Unicode text)"),
    "cp1252": _("Windows-1252"),
    "latin-1": _("Latin-1"),
}
DATE_FORMATS: dict[str, str] = {
    "%Y-%m-%d": "2026-12-31",
    "%m/%d/%Y": "12/31/2026 (US)",
    "%d.%m.%Y": "31.12.2026",
    "%d/%m/%Y": "31/12/2026",
}
MAX_PREFIXES = 100  # per field, when a field lists several
DIGITS = re.compile(r"^[0-9]{0,6}$")
HEAD_BYTES = 256 * 1024  # what detection and the preview read of a file
PREVIEW_ROWS = 20


class DeckError(Exception):
    """A deck that cannot be imported as it is; ``errors`` name their lines."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors[:10]))


@dataclass(slots=True)
class DeckRow:
    line: int
    prefix: str
    description: str
    per_minute: Decimal
    connect_fee: Decimal
    initial: int
    increment: int
    free: int = 0
    effective: datetime | None = None


@dataclass
class Mapping:
    """How a file is written and which of its columns mean what.

    ``columns`` maps a field to a column: a position (0 is the first column) or, as older
    decks and the presets have it, a header's name (any case), found in the file's header.
    """

    delimiter: str = ","
    encoding: str = "utf-8"
    header: bool = True
    columns: dict[str, int | str] = field(default_factory=dict)
    zero_is_per_second: bool = False
    date_format: str = "%Y-%m-%d"
    prepend: str = ""
    max_prefixes: int = MAX_PREFIXES

    def to_json(self) -> dict[str, Any]:
        return {
            "delimiter": self.delimiter,
            "encoding": self.encoding,
            "header": self.header,
            "columns": dict(self.columns),
            "zero_is_per_second": self.zero_is_per_second,
            "date_format": self.date_format,
            "prepend": self.prepend,
            "max_prefixes": self.max_prefixes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], defaults: Mapping | None = None) -> Mapping:
        """A mapping from what was stored or sent; every value checked against what it may be.

        A mapping of the first decks (field -> header name, nothing else) is one with a
        header; what a mapping leaves out comes from ``defaults`` (what detection found).
        """
        if not isinstance(data, dict):
            raise DeckError(["the mapping is not a JSON object"])
        base = defaults or cls()
        if "columns" not in data:
            data = {"header": True, "columns": data}
        problems = []
        columns = data.get("columns")
        if not isinstance(columns, dict):
            raise DeckError(["the mapping's columns are not a JSON object"])
        unknown = set(columns) - set(FIELDS)
        if unknown:
            problems.append(f"unknown mapping fields {sorted(unknown)}")
        for name, column in columns.items():
            if isinstance(column, bool) or not isinstance(column, int | str):
                problems.append(f"the column of {name} is {column!r}")
            elif isinstance(column, int) and not 0 <= column < 1000:
                problems.append(f"the column of {name} is {column}")
        mapping = cls(
            delimiter=data.get("delimiter", base.delimiter),
            encoding=data.get("encoding", base.encoding),
            header=data.get("header", base.header),
            columns={k: v for k, v in columns.items() if k in FIELDS},
            zero_is_per_second=data.get("zero_is_per_second", base.zero_is_per_second),
            date_format=data.get("date_format", base.date_format),
            prepend=data.get("prepend", base.prepend),
            max_prefixes=data.get("max_prefixes", base.max_prefixes),
        )
        if mapping.delimiter not in DELIMITERS:
            problems.append(f"the delimiter {mapping.delimiter!r} is not one of , ; | tab")
        if mapping.encoding not in ENCODINGS:
            problems.append(f"the encoding {mapping.encoding!r} is not one of {list(ENCODINGS)}")
        if mapping.date_format not in DATE_FORMATS:
            problems.append(f"the date format {mapping.date_format!r} is not one offered")
        if not isinstance(mapping.prepend, str) or not DIGITS.match(mapping.prepend):
            problems.append(f"the digits to prepend {mapping.prepend!r} are not 0 to 6 digits")
        if not isinstance(mapping.max_prefixes, int) or not 1 <= mapping.max_prefixes <= 1000:
            problems.append(
                f"the limit of prefixes per field {mapping.max_prefixes!r} is not 1-1000"
            )
        for flag in ("header", "zero_is_per_second"):
            if not isinstance(getattr(mapping, flag), bool):
                problems.append(f"{flag} is not true or false")
        if problems:
            raise DeckError(problems)
        return mapping


@dataclass(frozen=True)
class Preset:
    """The layout another system exports: its columns by header name and by position."""

    label: str
    columns: dict[str, tuple[str | None, int | None]]
    options: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "standard": Preset(
        "prefix, destination, rate, increment (60/60), connect_fee",
        {
            "prefix": ("prefix", 0),
            "description": ("destination", 1),
            "per_minute": ("rate", 2),
            "interval": ("increment", 3),
            "connect_fee": ("connect_fee", 4),
        },
    ),
    "simple": Preset(
        "prefix, name, price",
        {"prefix": ("prefix", 0), "description": ("name", 1), "per_minute": ("price", 2)},
    ),
    "a2billing": Preset(
        "A2Billing import (dialprefix, destination, rateinitial, …)",
        {
            "prefix": ("dialprefix", 0),
            "description": ("destination", 1),
            "per_minute": ("rateinitial", 2),
            "initial": ("initblock", 3),
            "increment": ("billingblock", 4),
            "connect_fee": ("connectcharge", 5),
        },
        {"zero_is_per_second": True},
    ),
    # A2Billing's "export ratecard": no header, every value quoted, CRLF; the columns are
    # its rate_export_field_list (destination, dialprefix, rateinitial by default), blocks
    # and connect charge when the admin added them. Billing block 0 is per second there.
    "a2billing_export": Preset(
        "A2Billing ratecard export (no header: destination, dialprefix, rateinitial, "
        "initblock, billingblock, connectcharge)",
        {
            "description": (None, 0),
            "prefix": (None, 1),
            "per_minute": (None, 2),
            "initial": (None, 3),
            "increment": (None, 4),
            "connect_fee": (None, 5),
        },
        {"header": False, "zero_is_per_second": True},
    ),
    # A dump of the cc_ratecard table: its destination is the id of a cc_prefix row, not a
    # name, so it is not taken for one.
    "a2billing_dump": Preset(
        "A2Billing cc_ratecard table dump",
        {
            "prefix": ("dialprefix", 2),
            "per_minute": ("rateinitial", 7),
            "initial": ("initblock", 8),
            "increment": ("billingblock", 9),
            "connect_fee": ("connectcharge", 10),
            "effective": ("startdate", 24),
        },
        {"zero_is_per_second": True, "date_format": "%Y-%m-%d"},
    ),
    "astpp": Preset(
        "ASTPP (Code, Destination, Connect Cost, Included Seconds, Per Minute Cost, Increment, …)",
        {
            "prefix": ("code", 0),
            "description": ("destination", 1),
            "connect_fee": ("connect cost", 2),
            "free": ("included seconds", 3),
            "per_minute": ("per minute cost", 4),
            # ASTPP bills in blocks of its increment from the first second.
            "initial": ("increment", 5),
            "increment": ("increment", 5),
        },
        {"zero_is_per_second": True},
    ),
    "nanp": Preset(
        "NANP prefix deck (code|duration|increment|interrate|intrarate|ijrate|effective_date)",
        {
            "prefix": ("code", 0),
            "initial": ("duration", 1),
            "increment": ("increment", 2),
            "per_minute": ("interrate", 3),
            "effective": ("effective_date", 6),
        },
        {"delimiter": "|", "date_format": "%m/%d/%Y"},
    ),
    "multi": Preset(
        'Several prefixes per field (Destination, "61 38,39", rate)',
        {
            "description": ("destination", 0),
            "prefix": ("prefixes", 1),
            "per_minute": ("rate", 2),
        },
    ),
    "german": Preset(
        "German (Präfix;Zielnetz;Preis/Min;Taktung;Verbindungsentgelt)",
        {
            "prefix": ("präfix", 0),
            "description": ("zielnetz", 1),
            "per_minute": ("preis/min", 2),
            "interval": ("taktung", 3),
            "connect_fee": ("verbindungsentgelt", 4),
        },
        {"delimiter": ";"},
    ),
}

# Header names seen in carriers' decks, for a file no preset fits.
SYNONYMS: dict[str, set[str]] = {
    "prefix": {"prefix", "prefixes", "code", "dialprefix", "dial code", "präfix", "vorwahl"},
    "description": {"destination", "name", "dest_name", "zielnetz", "country", "description"},
    "per_minute": {"rate", "price", "per minute cost", "rateinitial", "preis/min", "interrate"},
    "connect_fee": {"connect_fee", "connect cost", "connectcharge", "verbindungsentgelt"},
    "initial": {"initblock", "duration", "initial", "initial increment"},
    "increment": {"billingblock", "increment"},
    "interval": {"taktung", "interval"},
    "free": {"included seconds", "free seconds", "free"},
    "effective": {
        "effective_date",
        "effective date",
        "effective",
        "startdate",
        "valid from",
        "gültig ab",
    },
}


# Reading ---------------------------------------------------------------------------------------


class _Chunks(io.RawIOBase):
    """A readable stream over an iterable of byte chunks (a deck read from the database)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._view = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._view:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._view = memoryview(chunk)
        n = min(len(buffer), len(self._view))
        buffer[:n] = self._view[:n]
        self._view = self._view[n:]
        return n


def _text(chunks: Iterable[bytes], encoding: str) -> io.TextIOWrapper:
    # newline="": lines end at CRLF, LF or CR alone (exports from old Macs and from browsers
    # on them), and line breaks inside quoted fields stay as they were written.
    raw = io.BufferedReader(_Chunks(chunks), buffer_size=1 << 16)
    return io.TextIOWrapper(raw, encoding=encoding, newline="")


def _records(reader: Any) -> Iterator[tuple[int, list[str]]]:
    """(the line it begins on, its fields) for each record of a CSV reader.

    A record is a line unless a quoted field runs over several; the csv module's own errors
    (a field beyond its size limit after a stray quote, a NUL) and text that is not in the
    encoding become DeckErrors naming the line the record began on, instead of escaping the
    import and leaving it running.
    """
    while True:
        start = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DeckError(
                [f"line {start}: {exc} (is a quote opened here and never closed?)"]
            ) from None
        except UnicodeDecodeError as exc:
            raise DeckError(
                [
                    f"line {start} or soon after: the file is not {exc.encoding} text; choose its "
                    "encoding"
                ]
            ) from None
        yield start, values


def detect_encoding(content: bytes) -> str:
    """UTF-8 (with or without its byte order mark) if the bytes are that, else Windows-1252.

    Windows-1252 leaves five bytes undefined; a file with them is read as Latin-1.
    """
    if content.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if content.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        content.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Only the head was given, cut inside a character: still UTF-8.
        if exc.start < len(content) - 3 or exc.reason != "unexpected end of data":
            try:
                content.decode("cp1252")
            except UnicodeDecodeError:
                return "latin-1"
            return "cp1252"
    return "utf-8"


def line_ending(text: str) -> str:
    if "\r\n" in text:
        return "CRLF"
    if "\n" in text:
        return "LF"
    return "CR" if "\r" in text else ""


def _head_records(head: bytes, encoding: str, delimiter: str, limit: int) -> list[list[str]]:
    text = head.decode(encoding if encoding != "utf-8-sig" else "utf-8-sig", errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: list[list[str]] = []
    try:
        for values in reader:
            if "".join(values).strip():
                rows.append(values)
            if len(rows) > limit:
                break
    except csv.Error:
        pass
    if len(head) >= HEAD_BYTES and rows and len(rows) <= limit:
        rows.pop()  # cut where the head ends
    return rows


def detect_delimiter(head: bytes, encoding: str) -> str:
    """The delimiter that splits the first lines into the same number of fields, the most."""
    best, score = ",", (-1.0, 0)
    for delimiter in (",", ";", "|", "\t"):
        rows = _head_records(head, encoding, delimiter, 50)
        counts = [len(r) for r in rows]
        if not counts:
            continue
        modal = max(set(counts), key=counts.count)
        candidate = (counts.count(modal) / len(counts) if modal > 1 else 0.0, modal)
        if candidate > score:
            best, score = delimiter, candidate
    return best


_NUMBER = re.compile(r"^\s*[+]?[0-9][0-9 ,.]*\s*$")


def _numbers(values: list[str]) -> int:
    return sum(1 for v in values if _NUMBER.match(v))


def detect_header(rows: list[list[str]]) -> bool:
    """A first line with fewer numbers than the next is a header (``"93","0.2"`` is not)."""
    if not rows:
        return True
    if len(rows) == 1:
        return _numbers(rows[0]) == 0
    return _numbers(rows[0]) < _numbers(rows[1])


@dataclass
class Sniffed:
    """What was found of how a file is written."""

    encoding: str
    delimiter: str
    header: bool
    line_ending: str
    rows: list[list[str]]  # the first lines, split

    @property
    def width(self) -> int:
        return max((len(r) for r in self.rows[:5]), default=0)

    @property
    def header_names(self) -> list[str]:
        return [h.strip().lower() for h in self.rows[0]] if self.header and self.rows else []


SEP_LINE = re.compile(rb"^(?:\xef\xbb\xbf)?sep=([,;|\t])\r?\n?")


def sniff(head: bytes, encoding: str | None = None) -> Sniffed:
    encoding = encoding or detect_encoding(head)
    said = SEP_LINE.match(head)
    if said:
        # Excel's "sep=;" first line names the delimiter; the header comes after it.
        head = head[said.end() :]
        delimiter = said.group(1).decode()
    else:
        delimiter = detect_delimiter(head, encoding)
    rows = _head_records(head, encoding, delimiter, PREVIEW_ROWS + 1)
    ending = line_ending(head[:65536].decode(encoding, errors="replace"))
    return Sniffed(encoding, delimiter, detect_header(rows), ending, rows)


def preset_mapping(name: str, sniffed: Sniffed) -> Mapping:
    """A preset's columns for this file: by header name if it has a header, else by position.

    Columns the file does not have are left out (A2Billing's export has as many as its
    admin chose); a required one left out shows as missing in the preview.
    """
    preset = PRESETS[name]
    options = {"delimiter": sniffed.delimiter, "encoding": sniffed.encoding} | preset.options
    header = options.get("header", sniffed.header)
    names = sniffed.header_names if header else []
    columns: dict[str, int | str] = {}
    for key, (title, position) in preset.columns.items():
        if header and title is not None and title in names:
            columns[key] = names.index(title)
        elif not header and position is not None and position < sniffed.width:
            columns[key] = position
    return Mapping.from_json({**options, "header": header, "columns": columns})


def _reads(mapping: Mapping, sniffed: Sniffed) -> int:
    """How many of the first lines ``mapping`` reads without an error."""
    reader = Reader(mapping)
    try:
        index = reader.index(sniffed.rows[0] if mapping.header and sniffed.rows else [])
    except DeckError:
        return 0
    good = 0
    for number, values in enumerate(sniffed.rows[1 if mapping.header else 0 : 11]):
        try:
            if max(index.values()) < len(values):
                found = reader.row(number, values, index)
                # A destination that is a number is an id (cc_ratecard's), not a name.
                if not (found and found[0].description.isdigit()):
                    good += 1
        except ValueError:
            continue
    return good


def _with_synonyms(mapping: Mapping, sniffed: Sniffed) -> Mapping:
    """A preset's mapping, with the file's other columns whose names say what they are.

    A "simple" deck with a "valid from" column keeps its dates; a column that is neither is
    left for the admin (and named on the page as unused).
    """
    if not mapping.header:
        return mapping
    used = set(mapping.columns.values())
    blocks = {"initial", "increment", "interval"}
    for index, title in enumerate(sniffed.header_names):
        if index in used:
            continue
        for key, names in SYNONYMS.items():
            if title not in names or key in mapping.columns:
                continue
            if key in blocks and blocks & set(mapping.columns):
                continue  # the preset reads the blocks its own way
            values = [r[index].strip() for r in sniffed.rows[1:6] if index < len(r)]
            if key == "description" and values and all(v.isdigit() for v in values):
                continue  # a number is an id (cc_ratecard's destination), not a name
            mapping.columns[key] = index
            break
    return mapping


def guess_mapping(sniffed: Sniffed) -> tuple[str, Mapping]:
    """The preset that reads the first lines best, else columns guessed from names or values.

    Presets are tried on the file's own lines: a header's names decide only when the values
    under them read too (A2Billing's export has no header; its first rate is not one).
    """
    best: tuple[int, bool, int, str, Mapping | None] = (0, False, 0, "", None)
    for name in PRESETS:
        mapping = preset_mapping(name, sniffed)
        if not all(k in mapping.columns for k in REQUIRED):
            continue
        fits = mapping.header == sniffed.header
        score = (_reads(mapping, sniffed), fits, len(mapping.columns), name, mapping)
        if score[:3] > best[:3]:
            best = score
    if best[4] is not None:
        return best[3], _with_synonyms(best[4], sniffed)
    columns: dict[str, int | str] = {}
    if sniffed.header:
        for index, title in enumerate(sniffed.header_names):
            for key, names in SYNONYMS.items():
                if title in names and key not in columns:
                    columns[key] = index
                    break
    else:
        sample = sniffed.rows[:5]
        for index in range(sniffed.width):
            values = [r[index].strip() for r in sample if index < len(r)]
            digits = all(v.replace(" ", "").replace(",", "").isdigit() for v in values if v)
            if digits and "prefix" not in columns:
                columns["prefix"] = index
            elif not digits and all(_NUMBER.match(v) for v in values if v):
                columns.setdefault("per_minute", index)
            elif not any(_NUMBER.match(v) for v in values):
                columns.setdefault("description", index)
    mapping = Mapping(
        delimiter=sniffed.delimiter,
        encoding=sniffed.encoding,
        header=sniffed.header,
        columns=columns,
    )
    return "", mapping


# Values -----------------------------------------------------------------------------------------


def _decimal(text: str, what: str) -> Decimal:
    # A currency sign is how some carriers' spreadsheets write every price ($0.012, 0,01 €).
    cleaned = text.strip().strip("$€£ \u00a0").replace(",", ".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        raise ValueError(f"{what} {text!r} is not a number") from None
    if not value.is_finite() or value < 0 or value > 1000:
        raise ValueError(f"{what} {text!r} is not between 0 and 1000")
    # Up to six digits after the point settles it; quantize (slow) only for the rest, which
    # may still be exact ("0.0100000").
    point = cleaned.find(".")
    long = (point >= 0 and len(cleaned) - point - 1 > 6) or "e" in cleaned.lower()
    if long and value != value.quantize(rating.EXACT):
        raise ValueError(f"{what} {text!r} has more than 6 decimal places")
    return value


def _seconds(text: str, what: str) -> int:
    text = text.strip()
    if not text.isdigit():
        raise ValueError(f"{what} {text!r} is not a whole number of seconds")
    value = int(text)
    if value > 3600:
        raise ValueError(f"{what} {value} is out of range")
    return value


def _prefix(text: str) -> str:
    if not text.isdigit() or not 1 <= len(text) <= 15 or text.startswith("0"):
        raise ValueError(f"prefix {text!r} is not 1 to 15 digits of an international number")
    return text


def prefixes(text: str, *, prepend: str = "", limit: int = MAX_PREFIXES) -> list[str]:
    """The prefixes a field lists: ``4930``, ``+49 30``, ``61 38,39`` (6138 and 6139), ranges.

    A country code, a space and several codes after it separated by commas is how many
    carriers write all the area codes of one price; ``38-41`` is the codes from 38 to 41.
    """
    cleaned = text.strip().lstrip("+")
    if cleaned.startswith("00"):  # 0049: written with the international call prefix
        cleaned = cleaned[2:]
    if cleaned.isdigit():
        return [_prefix(prepend + cleaned)]
    head, space, rest = cleaned.partition(" ")
    if not space or "," in head:
        head, rest = "", cleaned
    found: list[str] = []
    for part in rest.replace(" ", "").split(","):
        if not part:
            continue
        low, dash, high = part.partition("-")
        if dash and low.isdigit() and high.isdigit() and len(low) < len(high) and "," not in rest:
            codes = [low + high]  # 1-264: a country code and its area code, as NANP decks write
        elif dash:
            if not (low.isdigit() and high.isdigit() and len(low) == len(high) and low <= high):
                raise ValueError(f"prefix range {part!r} is not like 38-41")
            codes = [str(n).zfill(len(low)) for n in range(int(low), int(high) + 1)]
        else:
            codes = [part]
        if len(found) + len(codes) > limit:
            raise ValueError(f"prefix field {text!r} lists more than {limit} prefixes")
        found.extend(_prefix(prepend + head + code) for code in codes)
    if not found:
        raise ValueError(f"prefix {text!r} is not 1 to 15 digits of an international number")
    return found


class _Dates:
    """Dates of one format parsed once each (a deck has a handful of different ones)."""

    def __init__(self, date_format: str) -> None:
        self.formats = [date_format, date_format + " %H:%M:%S", date_format + " %H:%M"]
        self.formats.append(date_format + "T%H:%M:%S")
        self.known: dict[str, datetime | None] = {}
        self.zone = timezone.get_default_timezone()

    def __call__(self, text: str) -> datetime | None:
        if text in self.known:
            return self.known[text]
        value = text.strip()
        parsed = None
        if value:
            for fmt in self.formats:
                try:
                    parsed = datetime.strptime(value, fmt).replace(tzinfo=self.zone)
                    break
                except ValueError:
                    continue
            else:
                parsed = self._iso(value)
            if parsed is None:
                example = DATE_FORMATS.get(self.formats[0], self.formats[0])
                raise ValueError(f"effective date {text!r} is not like {example}")
            if not 2000 <= parsed.year <= 2100:
                raise ValueError(f"effective date {text!r} is out of range")
        self.known[text] = parsed
        return parsed

    def _iso(self, value: str) -> datetime | None:
        """An ISO 8601 time with its offset (2026-12-31T00:00:00Z, a database's +00), for
        decks dated like that."""
        if not self.formats[0].startswith("%Y-%m-%d"):
            return None
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=self.zone)


def _shaped(values: list[str], width: int, index: dict[str, int]) -> list[str]:
    """A line's fields, ``width`` of them, give or take what carriers' tools leave.

    Spreadsheets add empty fields at the end of some lines (a trailing delimiter) and drop
    empty trailing ones on others; both are fine while the prefix and the rate are there (the
    fields left out are empty). A field too many with a value in it is a line out of shape:
    ValueError.
    """
    if len(values) == width:
        return values
    if len(values) > width:
        if not "".join(values[width:]).strip():
            return values
    elif len(values) > max(index[k] for k in REQUIRED):
        return values + [""] * (width - len(values))
    raise ValueError(f"{len(values)} fields, expected {width}")


class Reader:
    """The rules of a deck's lines, one file pass; errors are collected, not raised.

    ``rows`` yields a DeckRow for every prefix of every good line and records the bad lines
    in ``errors`` (their count in ``error_count``); the caller decides what a bad line means
    (the import: none of the deck; the preview: a red row).
    """

    MAX_ERRORS = 100

    def __init__(self, mapping: Mapping) -> None:
        self.mapping = mapping
        self.errors: list[str] = []
        self.error_count = 0
        self.lines = 0
        self.header: list[str] = []
        self._intervals: dict[str, tuple[int, int]] = {}
        self._dates = _Dates(mapping.date_format)

    def error(self, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < self.MAX_ERRORS:
            self.errors.append(message)

    def summary(self) -> list[str]:
        more = self.error_count - len(self.errors)
        return self.errors + ([f"… and {more} more"] if more > 0 else [])

    def index(self, header: list[str]) -> dict[str, int]:
        """The mapping's columns as positions; names are looked up in the header."""
        names = [h.strip().lower() for h in header]
        found: dict[str, int] = {}
        missing = []
        for key, column in self.mapping.columns.items():
            if isinstance(column, int):
                found[key] = column
            elif column.lower() in names:
                found[key] = names.index(column.lower())
            else:
                missing.append(column)
        if missing or any(k not in self.mapping.columns for k in REQUIRED):
            absent = [FIELDS[k] for k in REQUIRED if k not in self.mapping.columns]
            raise DeckError(
                [
                    f"line 1: missing column(s) {', '.join(missing + [str(a) for a in absent])}"
                    f"; found {names}"
                ]
            )
        return found

    def lines_of(self, chunks: Iterable[bytes]) -> Iterator[tuple[int, list[str]]]:
        """The records after the header (which is kept in ``header``)."""
        reader = csv.reader(_text(chunks, self.mapping.encoding), delimiter=self.mapping.delimiter)
        self._reader = reader
        records = _records(reader)
        first = True
        for line, values in records:
            if not "".join(values).strip():
                continue
            if first and "".join(values).strip().lower().startswith("sep="):
                first = False
                continue  # Excel's line that names the delimiter
            first = False
            if self.mapping.header and not self.header:
                self.header = values
                continue
            yield line, values
        return

    def rows(self, chunks: Iterable[bytes]) -> Iterator[DeckRow]:
        width = 0
        index: dict[str, int] | None = None
        try:
            for line, values in self.lines_of(chunks):
                if not "".join(values).strip():
                    continue
                if index is None:
                    index = self.index(self.header)
                    width = len(self.header) if self.mapping.header else len(values)
                    if width < max(index.values()) + 1:
                        raise DeckError(
                            [
                                f"line {line}: {width} columns, the mapping uses column"
                                f" {max(index.values()) + 1}"
                            ]
                        )
                self.lines += 1
                try:
                    shaped = _shaped(values, width, index)
                except ValueError as exc:
                    spans = (
                        f" (a quoted field runs from line {line} to line"
                        f" {self._reader.line_num}: is a quote opened and never closed?)"
                        if self._reader.line_num > line
                        else ""
                    )
                    self.error(f"line {line}: {exc}{spans}")
                    continue
                try:
                    yield from self.row(line, shaped, index)
                except ValueError as exc:
                    self.error(f"line {line}: {exc}")
        except DeckError as exc:
            for message in exc.errors:  # the reader cannot go on past it
                self.error(message)
        if index is None and not self.error_count:
            self.error("the deck has no rates")

    def row(self, line: int, values: list[str], index: dict[str, int]) -> list[DeckRow]:
        """The rules of one line (several when its prefix field lists several)."""
        m = self.mapping
        per_minute = _decimal(values[index["per_minute"]], "rate")
        connect_fee = (
            _decimal(values[index["connect_fee"]] or "0", "connect fee")
            if "connect_fee" in index
            else Decimal(0)
        )
        if "interval" in index and values[index["interval"]].strip():
            text = values[index["interval"]]
            known = self._intervals.get(text)
            if known is None:
                parts = text.strip().split("/")
                if len(parts) != 2:
                    raise ValueError(f"increment {text!r} is not like 60/60")
                known = self._intervals[text] = (
                    _seconds(parts[0], "initial block"),
                    _seconds(parts[1], "increment"),
                )
            initial, increment = known
        else:
            initial = (
                _seconds(values[index["initial"]] or "0", "initial block")
                if "initial" in index
                else 60
            )
            increment = (
                _seconds(values[index["increment"]], "increment")
                if "increment" in index and values[index["increment"]].strip()
                else 60
            )
        if increment == 0:
            if not m.zero_is_per_second:
                raise ValueError(
                    "increment 0: choose 'increment 0 means per second' if the carrier means that"
                )
            increment = 1
        free = _seconds(values[index["free"]] or "0", "free seconds") if "free" in index else 0
        effective = self._dates(values[index["effective"]]) if "effective" in index else None
        description = values[index["description"]].strip()[:200] if "description" in index else ""
        return [
            DeckRow(
                line, p, description, per_minute, connect_fee, initial, increment, free, effective
            )
            for p in prefixes(values[index["prefix"]], prepend=m.prepend, limit=m.max_prefixes)
        ]


def read(content: bytes | Iterable[bytes], mapping: Mapping) -> list[DeckRow]:
    """Every rule of a deck in memory, or DeckError listing the bad lines (first 100).

    For tests and small decks; the import streams with Reader instead. Duplicates are the
    database's to find (services.find_duplicates names their lines).
    """
    reader = Reader(mapping)
    rows = list(reader.rows([content] if isinstance(content, bytes) else content))
    if reader.error_count:
        raise DeckError(reader.summary())
    return rows


def _line_of(message: str) -> int:
    number = message.removeprefix("line ").split(" ", 1)[0].rstrip(":")
    return int(number) if number.isdigit() else 1 << 62


def with_duplicates(errors: list[str], found: list[str]) -> list[str]:
    """A failed deck's errors and its repeated prefixes, in the order of their lines."""
    merged = sorted(errors + found, key=_line_of)
    return merged[: Reader.MAX_ERRORS] + (
        [f"… and {len(merged) - Reader.MAX_ERRORS} more"] if len(merged) > Reader.MAX_ERRORS else []
    )


def duplicates(chunks: Iterable[bytes], mapping: Mapping) -> list[str]:
    """The lines whose prefix (and effective date) came before, each with where it was first.

    A second pass, run only when the database refused the deck for a repeated prefix: the
    import itself keeps no table of prefixes (a million of them is 100 MB of Python).
    """
    reader = Reader(mapping)
    seen: dict[tuple[str, datetime | None], int] = {}
    found: list[str] = []
    for row in reader.rows(chunks):
        key = (row.prefix, row.effective)
        first = seen.setdefault(key, row.line)
        if first != row.line:
            when = f" from {row.effective:%Y-%m-%d %H:%M}" if row.effective else ""
            found.append(
                f"line {row.line}: prefix {row.prefix}{when} appears again (first on line {first})"
            )
            if len(found) >= Reader.MAX_ERRORS:
                break
    return found


@dataclass
class Preview:
    """What the preview page shows: how the file is written, its columns, the first rows."""

    sniffed: Sniffed
    mapping: Mapping
    columns: list[tuple[int, str, str]]  # position, title, first value
    rows: list[tuple[int, list[str], list[DeckRow], str]]  # line, values, rules, error
    unmapped: list[str]
    errors: list[str]
    index: dict[str, int]


def preview(head: bytes, mapping: Mapping) -> Preview:
    """The first rows of a file read with ``mapping``, as the import will read them."""
    sniffed = sniff(head, mapping.encoding)
    reader = Reader(mapping)
    errors: list[str] = []
    records: list[tuple[int, list[str]]] = []
    try:
        for line, values in reader.lines_of([head]):
            if "".join(values).strip():
                records.append((line, values))
            if len(records) >= PREVIEW_ROWS:
                break
    except DeckError as exc:
        errors.extend(exc.errors)
    if len(head) >= HEAD_BYTES and len(records) < PREVIEW_ROWS and records:
        records.pop()  # cut where the head ends
    titles = [t.strip() for t in reader.header] if mapping.header else []
    first = records[0][1] if records else []
    width = len(titles) if mapping.header else len(first)
    columns = [
        (
            i,
            titles[i] if i < len(titles) else f"column {i + 1}",
            first[i] if i < len(first) else "",
        )
        for i in range(max(len(titles), len(first)))
    ]
    index: dict[str, int] = {}
    rows: list[tuple[int, list[str], list[DeckRow], str]] = []
    try:
        index = reader.index(reader.header)
    except DeckError as exc:
        errors.extend(exc.errors)
        rows = [(line, values, [], "") for line, values in records]
    else:
        beyond = [k for k, v in index.items() if v >= width]
        if beyond:
            errors.append(
                f"the file has {width} columns; {', '.join(str(FIELDS[k]) for k in beyond)}"
                " is mapped beyond them"
            )
        for line, values in records:
            try:
                if beyond:
                    raise ValueError("a mapped column is missing")
                rows.append(
                    (line, values, reader.row(line, _shaped(values, width, index), index), "")
                )
            except ValueError as exc:
                rows.append((line, values, [], str(exc)))
    used = set(index.values())
    unmapped = [title for i, title, _v in columns if i not in used]
    return Preview(sniffed, mapping, columns, rows, unmapped, errors, index)

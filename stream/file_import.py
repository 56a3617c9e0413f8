"""Files to behaviour-event records: what `profiler produce FILE` sends to Kafka.

Three ways in:

* **JSON lines, no mapping**: each non-blank line is already an event and goes
  out byte for byte (less a UTF-8 BOM at the start of the file). Its key is the
  line's `user_id` when the line parses as an object with a non-empty string
  `user_id`; otherwise the line is still produced, with a null key, so the
  worker dead-letters it with a reason code (the DLQ is where bad events are
  explained; the importer does not judge them). Only a line over the
  contract's size (64 KiB) is skipped here, as `too_large`: a line over the
  producer's limit (1 MiB) would otherwise stop the import.
* **A mapping** (`--map field=COLUMN`, for CSV, or for JSON lines whose keys are
  not ours, `a.b` naming key `b` of object `a`): cells become typed event fields
  (`CsvOptions` says how: time format, type value map, constants, default amount).
* **A preset** for a public data set: `taobao`, `online-retail`, `amazon-reviews`.

Converted rows are checked with `decode_event` before they leave: a row that
does not make a valid event is skipped and counted by reason in the
`ImportReport` (and never crashes the import), because a conversion problem
belongs in the import summary, not in the DLQ. Strings longer than the
contract allows are cut to the limit rather than rejected.

Event ids are deterministic so that producing the same file twice is a no-op
for the worker's dedupe: a preset with a natural key hashes it (an Amazon
review is reviewer + day + rating + text: the data set repeats a review
under every variant's product, and those copies collapse to one event, while
two reviews a reviewer wrote on one day stay two unless their rating and
text are the same too, which the data set cannot tell from a variant's copy);
everything else hashes the line number and the raw line (identical rows on
different lines stay distinct events).

Files compressed with gzip, bzip2 or xz are read decompressed, told by their first
bytes rather than their name (standard input has none); a zip archive, zstd or
Parquet is refused, saying what it is (`_REFUSED`).

A preset's user ids carry its tag (`tb:1`, `or:17850`, `az:A3UMNRR89DIZRM`):
the data sets number their users independently, and Taobao's ids cover UCI's,
so two data sets imported into one deployment would otherwise share profiles.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import csv
import gzip
import hashlib
import io
import lzma
import math
import os
import stat
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from statistics import NormalDist
from typing import IO, Any, Final, Literal, cast
from zoneinfo import ZoneInfo

import msgspec
import orjson

from profiling.events import EVENT_TYPES, MAX_EVENT_BYTES, Event, Rejection, decode_event

Record = tuple[bytes | None, bytes]
Format = Literal["csv", "jsonl"]

EVENT_FIELDS: Final = frozenset(Event.__struct_fields__)
_INT_FIELDS: Final = frozenset({"ts", "quantity", "rating"})
_FLOAT_FIELDS: Final = frozenset({"price", "amount"})
_MAX_LENGTH: Final = {
    "event_id": 64,
    "user_id": 128,
    "title": 512,
    "query": 512,
    "category": 256,
    "text": 4096,
    "ip": 64,
}
_DEFAULT_MAX_LENGTH: Final = 128
# Slashed dates in either order (3/4/2011: March 4th month first, April 3rd day first),
# then a form without that question.
_MONTH_FIRST: Final = ("%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S")
_DAY_FIRST: Final = ("%d/%m/%Y %H:%M", "%d/%m/%Y %H:%M:%S")
_YEAR_FIRST: Final = ("%Y/%m/%d %H:%M:%S",)


class FileImportError(ValueError):
    """The import cannot start (bad preset, mapping, file); nothing was produced. Not retriable."""


class UnknownPresetError(FileImportError):
    """The preset name is not one of `PRESETS`."""


class MissingColumnError(FileImportError):
    """A mapped or preset column is not in the file's header."""


class UnreadableFileError(FileImportError):
    """The file cannot be opened or decompressed; raised part way through a file that
    breaks off (a gzip file cut short), after the records before the break."""


class SkipRow(Exception):
    """Raised while converting one row; the row is counted under `reason` and skipped."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


class DayOrder:
    """Which order a file's slashed dates are in, once one of them shows it.

    A file keeps one order. Until a date tells (a first number over 12: day
    first; a second one: month first), dates that could be either read month
    first, and are counted (`guessed`). Once told, the file's dates read in its
    order only: one in the other order is no time (the row is skipped with that
    reason), never a date read the other way round.
    """

    def __init__(self) -> None:
        self.day_first: bool | None = None  # None: not told yet
        self.told_by = ""  # the date that told
        self.guessed = 0  # dates read month first before the order was told

    def read(self, text: str) -> datetime | None:
        """`text` as a slashed date in the file's order, or None when it is none."""
        if self.day_first is not None:  # told: the file's order, the other only to refuse
            mine, other = (
                (_DAY_FIRST, _MONTH_FIRST) if self.day_first else (_MONTH_FIRST, _DAY_FIRST)
            )
            if (moment := _strptime(text, mine)) is not None:
                return moment
            if _strptime(text, other) is not None:
                order = "day" if self.day_first else "month"
                raise SkipRow(
                    "bad_value:ts",
                    f"{text!r} is not {order} first, as the file's dates are from "
                    f"{self.told_by!r} on (give the format: --ts-format)",
                )
            return _strptime(text, _YEAR_FIRST)
        month, day = _strptime(text, _MONTH_FIRST), _strptime(text, _DAY_FIRST)
        if month is None and day is None:
            return _strptime(text, _YEAR_FIRST)
        if month is not None and day is not None:  # either order reads it
            self.guessed += month != day
            return month
        self.day_first, self.told_by = day is not None, text  # one order only: it tells
        return day or month

    def warning(self) -> str:
        """What the report says of dates that may have been read the wrong way round."""
        if not (self.day_first and self.guessed):
            return ""
        return (
            f"; {self.guessed} dates read month first before {self.told_by!r} showed the "
            "file's dates are day first: give the format (--ts-format '%d/%m/%Y %H:%M')"
        )


def _strptime(text: str, formats: tuple[str, ...]) -> datetime | None:
    for candidate in formats:
        with contextlib.suppress(ValueError):
            return datetime.strptime(text, candidate)
    return None


@dataclass
class ImportReport:
    """What an import did: `rows == produced + sum(skipped.values())` once it has finished."""

    rows: int = 0
    produced: int = 0
    unkeyed: int = 0  # produced with a null key (JSON lines the worker will dead-letter)
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # first occurrence of each reason
    dates: DayOrder = field(default_factory=DayOrder)  # the file's slashed dates' order

    def skip(self, line: int, reason: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, f"line {line}: {detail}"[:200])

    def summary(self) -> str:
        reasons = ", ".join(f"{r} {n}" for r, n in self.skipped.most_common())
        return (
            f"{self.rows} rows read, {self.produced} produced"
            f"{f' ({self.unkeyed} without key)' if self.unkeyed else ''}, "
            f"{sum(self.skipped.values())} skipped{f': {reasons}' if reasons else ''}"
            f"{self.dates.warning()}"
        )


@dataclass(frozen=True)
class CsvOptions:
    """How cells become event fields. Naive date-times are taken as UTC."""

    ts_unit: Literal["auto", "s", "ms"] = "auto"  # auto: numbers below 1e11 are seconds
    ts_format: str | None = None  # strptime format; default ISO 8601, then slashed (`DayOrder`)
    type_map: Mapping[str, str] = field(default_factory=dict)  # e.g. {"pv": "view"}
    constants: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"currency": "GBP"}
    default_amount: float | None = None  # purchases with neither amount nor price
    delimiter: str | None = None  # default: a tab for .tsv files, else a comma
    header: bool | None = None  # default: yes, or the preset's layout (another is refused)
    columns: tuple[str, ...] = ()  # names of a header-less file's columns, in order
    encoding: str = "utf-8"  # UTF-8: other bytes read as Windows-1252; else: U+FFFD
    format: Format | None = None  # default: from the file suffix
    dates: DayOrder | None = None  # the file's slashed dates' order (`ImportReport.dates`)


def parse_pairs(pairs: Iterable[str], flag: str = "--map") -> dict[str, str]:
    """`["user_id=CustomerID", ...]` to a dict; the CLI's `--map`, `--type-map`, `--set`."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise FileImportError(f"{flag} expects name=value, got {pair!r}")
        out[name.strip()] = value.strip()
    return out


# -- typed cells ------------------------------------------------------------------------------


def parse_ts(
    value: Any,
    unit: str = "auto",
    fmt: str | None = None,
    zone: tzinfo = UTC,
    dates: DayOrder | None = None,
) -> int:
    """Epoch milliseconds from epoch seconds/ms (number or digits) or a date-time string
    (one without a time zone read in `zone`; slashed ones in the order `dates` has
    seen in the file, if given)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            return _parse_datetime(text, fmt, zone, dates or DayOrder())
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        raise SkipRow("bad_value:ts", repr(value))
    if not math.isfinite(number):
        raise SkipRow("bad_value:ts", repr(value))
    seconds = unit == "s" or (unit == "auto" and abs(number) < 1e11)
    return round(number * 1000) if seconds else round(number)


def _parse_datetime(text: str, fmt: str | None, zone: tzinfo, dates: DayOrder) -> int:
    """`fmt` if given; else ISO 8601, then a slashed date in the file's order (`dates`)."""
    moment = None
    if fmt is not None:
        with contextlib.suppress(ValueError):
            moment = datetime.strptime(text, fmt)
    else:
        with contextlib.suppress(ValueError):
            moment = datetime.fromisoformat(text)
        if moment is None:
            moment = dates.read(text)
    if moment is None:
        raise SkipRow("bad_value:ts", f"{text!r} is not a time{f' in {fmt!r}' if fmt else ''}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return round(moment.timestamp() * 1000)


def _cast(name: str, value: Any) -> Any:
    """One event field from a cell (a string) or a JSON value; raises SkipRow when it cannot."""
    try:
        if isinstance(value, bool) and name in _INT_FIELDS | _FLOAT_FIELDS:
            raise ValueError(value)  # JSON's true is no 1
        if name in _INT_FIELDS:
            number = float(value)
            if not number.is_integer():
                raise ValueError(value)
            return int(number)
        if name in _FLOAT_FIELDS:
            number = float(value)
            if not math.isfinite(number):  # "NaN", "inf": msgspec would write them as null
                raise ValueError(value)
            return number
        if name == "success":
            return _truth(value)
    except (TypeError, ValueError, OverflowError):
        raise SkipRow(f"bad_value:{name}", repr(value)[:80]) from None
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text.strip()[: _MAX_LENGTH.get(name, _DEFAULT_MAX_LENGTH)]


def _truth(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "y", "t", "success", "ok"):
        return True
    if text in ("0", "false", "no", "n", "f", "failure", "failed", "fail"):
        return False
    raise ValueError(value)


# -- the generic mapping ----------------------------------------------------------------------


# The fields every event needs, whatever its type: a mapping must give them.
_REQUIRED: Final = ("user_id", "type", "ts")


def check_mapping(mapping: Mapping[str, str], options: CsvOptions) -> None:
    """Fail early on a mapping that cannot make events (typos, no user or type)."""
    unknown = sorted(set(mapping) - EVENT_FIELDS)
    if unknown:
        raise FileImportError(
            f"not event fields: {', '.join(unknown)}; choose from {', '.join(sorted(EVENT_FIELDS))}"
        )
    for needed in _REQUIRED:
        if needed not in mapping and needed not in options.constants:
            raise FileImportError(f"map a column to `{needed}` (--map {needed}=COLUMN)")


def check_event_types(options: CsvOptions) -> None:
    """Fail early on a type the options give that is no event type (`--type-map pv=vue`,
    `--set type=vue`): every row it touched would be skipped, one by one."""
    given = [(f"--type-map {value}={kind}", kind) for value, kind in options.type_map.items()]
    if "type" in options.constants:
        given.append((f"--set type={options.constants['type']}", options.constants["type"]))
    wrong = [flag for flag, kind in given if kind not in EVENT_TYPES]
    if wrong:
        raise FileImportError(
            f"{', '.join(wrong)}: not {'an event type' if len(wrong) == 1 else 'event types'}; "
            f"the event types are {', '.join(EVENT_TYPES)}"
        )


def typed_constants(options: CsvOptions) -> CsvOptions:
    """Options whose constants (strings from `--set quantity=2`) have their fields' types.

    An empty value (`--set success=`) sets nothing, as an empty cell is an absent field.
    """
    typed: dict[str, Any] = {}
    for name, value in options.constants.items():
        if name not in EVENT_FIELDS:
            raise FileImportError(f"cannot set {name!r}: not an event field")
        if isinstance(value, str) and not value.strip():
            continue
        try:
            typed[name] = parse_ts(value) if name == "ts" else _cast(name, value)
        except SkipRow as exc:
            raise FileImportError(f"cannot set {name}={value!r}: {exc.reason}") from None
    return replace(options, constants=typed)


def convert_mapped(
    row: Mapping[str, Any], mapping: Mapping[str, str], options: CsvOptions
) -> dict[str, Any]:
    """One row through a `{event_field: column}` mapping and the options' conversions.

    A JSON line's column may be a path into its objects (`user.id`). A column the
    line lacks is an absent field, as a blank cell is; for a field every event needs,
    the row is skipped as `missing:<field>`, naming the column the mapping gave.
    """
    event: dict[str, Any] = dict(options.constants)
    for name, column in mapping.items():
        value = _column(row, column)
        if isinstance(value, _NotThere):
            if name in _REQUIRED and name not in options.constants:
                raise SkipRow(f"missing:{name}", f"{value.why} (--map {name}={column})")
            continue
        if value is None or (isinstance(value, str) and not value.strip()):
            continue  # an empty cell, or one of spaces only (`a, b, `), is an absent field
        if name == "ts":
            event["ts"] = parse_ts(value, options.ts_unit, options.ts_format, dates=options.dates)
        else:
            event[name] = _cast(name, value)
    if "type" in event:
        event["type"] = options.type_map.get(event["type"], event["type"])
    if event.get("type") == "purchase" and "amount" not in event:
        if "price" in event:
            event["amount"] = round(event["price"] * event.get("quantity", 1), 2)
        elif options.default_amount is not None:
            event["amount"] = options.default_amount
    return event


@dataclass(frozen=True)
class _NotThere:
    """A column a row lacks, and why (the part of its path that is not there)."""

    why: str


def _column(row: Mapping[str, Any], column: str) -> Any:
    """The row's `column`: a key of it, else a dotted path through a JSON line's objects."""
    if column in row:
        return row[column]
    if "." not in column:
        return _NotThere(f"no {column!r} in the line")
    value: Any = row
    parts = column.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(value, Mapping):
            at = ".".join(parts[:depth])
            return _NotThere(f"{at!r} is {_json_type(value)}, not an object: no {column!r}")
        if part not in value:
            return _NotThere(f"no {column!r} in the line")
        value = value[part]
    return value


def _json_type(value: Any) -> str:
    """What JSON calls the type of a value it decoded to."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "a string" if isinstance(value, str) else "an array"


def natural_event_id(source: str, key: str) -> str:
    """A deterministic id from a natural key (or a line number and its raw text)."""
    digest = hashlib.blake2b(f"{source}\x1f{key}".encode(), digest_size=12)
    return f"{source}-{digest.hexdigest()}"


# -- presets for public data sets -------------------------------------------------------------

Converter = Callable[[Mapping[str, Any], CsvOptions], dict[str, Any]]


@dataclass(frozen=True)
class Preset:
    """A public data set's layout and how one of its rows becomes an event."""

    name: str
    tag: str  # event id prefix
    format: Format
    columns: tuple[tuple[str, ...], ...]  # needed; canonical name first, then header aliases
    header: bool
    convert: Converter
    natural_key: Callable[[Mapping[str, Any]], str] | None
    about: str
    own_users: bool = True  # user ids prefixed with the tag (a public data set's numbering)
    # Options the data set's layout leaves no use for, and why: given, they are refused.
    unread: Mapping[str, str] = field(default_factory=dict)


_TAOBAO_TYPES: Final = {"pv": "view", "cart": "add_to_cart", "fav": "click", "buy": "purchase"}
_TAOBAO_MEDIAN_CNY: Final = 59.0
_STANDARD_NORMAL: Final = NormalDist()


def estimated_taobao_price(item_id: str) -> float:
    """A stable stand-in price in CNY for an item the data set does not price.

    Taobao's UserBehavior has no prices, yet the contract needs a purchase
    `amount`. A log-normal draw (median 59 CNY, like a typical Taobao order)
    seeded by the item id keeps one price per item across users and runs, so
    spend and basket features stay consistent; such events carry
    `amount_estimated: true` (an extra field, ignored by validation).
    """
    digest = int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "big")
    z = _STANDARD_NORMAL.inv_cdf((digest + 0.5) / 2**64)
    return round(min(max(_TAOBAO_MEDIAN_CNY * math.exp(0.9 * z), 1.0), 5000.0), 2)


def _taobao(row: Mapping[str, Any], options: CsvOptions) -> dict[str, Any]:
    behavior = row["behavior"].strip()
    kind = options.type_map.get(behavior) or _TAOBAO_TYPES.get(behavior)
    if kind is None:
        raise SkipRow("unknown_behavior", row["behavior"])
    event = {
        **options.constants,
        "user_id": _cast("user_id", row["user_id"]),
        "type": kind,
        "ts": parse_ts(row["ts"], "s"),
        "item_id": _cast("item_id", row["item_id"]),
        "category": f"taobao.{row['category_id'].strip()}",
    }
    if kind == "purchase":
        if options.default_amount is not None:
            event["amount"] = options.default_amount
        else:
            event["amount"] = estimated_taobao_price(event["item_id"])
            event["amount_estimated"] = True
        event.setdefault("currency", "CNY")
        # No order ids in the data: a user's buys in one second are one checkout.
        event["order_id"] = f"{event['user_id']}-{event['ts'] // 1000}"
    return event


_COUNTRY_ISO2: Final = {
    "United Kingdom": "GB", "EIRE": "IE", "Ireland": "IE", "France": "FR", "Germany": "DE",
    "Netherlands": "NL", "Belgium": "BE", "Switzerland": "CH", "Spain": "ES", "Portugal": "PT",
    "Italy": "IT", "Norway": "NO", "Australia": "AU", "Lithuania": "LT", "Poland": "PL",
    "Japan": "JP", "Sweden": "SE", "Finland": "FI", "Denmark": "DK", "Austria": "AT",
    "Cyprus": "CY", "Iceland": "IS", "Singapore": "SG", "Israel": "IL", "Greece": "GR",
    "Canada": "CA", "USA": "US", "United States": "US", "Czech Republic": "CZ", "Malta": "MT",
    "Hong Kong": "HK", "Bahrain": "BH", "Lebanon": "LB", "United Arab Emirates": "AE",
    "Saudi Arabia": "SA", "Brazil": "BR", "RSA": "ZA", "South Africa": "ZA", "Korea": "KR",
    "Thailand": "TH", "Nigeria": "NG", "West Indies": "", "Channel Islands": "",
    "European Community": "", "Unspecified": "",
}  # fmt: skip
"""UCI Online Retail country names (I and II) to ISO 3166 alpha-2; "" = no single country."""


# UCI Online Retail's stock codes of invoice lines that are no product: postage,
# carriage, manual entries, fees, discounts, samples, commission, bad-debt adjustments.
_NOT_PRODUCTS: Final = frozenset(
    {"POST", "DOT", "C2", "M", "BANK CHARGES", "AMAZONFEE", "D", "S", "CRUK", "B", "ADJUST",
     "ADJUST2", "TEST001", "TEST002"}
)  # fmt: skip


# The retailer's invoice times are the UK's wall-clock times (GMT, BST in summer).
_UK: Final = ZoneInfo("Europe/London")


def _online_retail(row: Mapping[str, Any], options: CsvOptions) -> dict[str, Any]:
    customer = str(row["CustomerID"]).strip()
    if not customer:
        raise SkipRow("no_customer", "CustomerID is empty")
    code = str(row["StockCode"]).strip()
    if code.upper() in _NOT_PRODUCTS or code.startswith("gift_"):
        raise SkipRow("not_a_product", f"stock code {code} ({row['Description']})")
    quantity = _cast("quantity", row["Quantity"])
    if quantity <= 0:
        raise SkipRow("return", f"quantity {quantity} (invoice {row['InvoiceNo']})")
    price = _cast("price", row["UnitPrice"])
    if price < 0:
        raise SkipRow("negative_price", str(price))
    event = {
        **options.constants,
        "type": "purchase",
        "user_id": customer.removesuffix(".0"),  # pandas wrote the ids as floats
        "ts": parse_ts(row["InvoiceDate"], "auto", options.ts_format, _UK, options.dates),
        "order_id": _cast("order_id", row["InvoiceNo"]),
        "item_id": _cast("item_id", row["StockCode"]),
        "quantity": quantity,
        "price": price,
        "amount": round(quantity * price, 2),
    }
    event.setdefault("currency", "GBP")  # a UK retailer, prices in sterling
    title = _cast("title", row["Description"])
    if title:
        event["title"] = title
    country = _COUNTRY_ISO2.get(str(row["Country"]).strip())
    if country:
        event["country"] = country
    return event


def _amazon_review(row: Mapping[str, Any], options: CsvOptions) -> dict[str, Any]:
    for name in ("reviewerID", "asin", "unixReviewTime"):
        if row.get(name) in (None, ""):
            raise SkipRow(f"missing_value:{name}")
    event = {
        **options.constants,
        "type": "review",
        "user_id": _cast("user_id", row["reviewerID"]),
        "item_id": _cast("item_id", row["asin"]),
        "ts": parse_ts(row["unixReviewTime"], "s"),
    }
    if row.get("overall") not in (None, ""):
        # A rating is optional: one the contract cannot hold (4.5, true) leaves the review.
        with contextlib.suppress(SkipRow):
            event["rating"] = _cast("rating", row["overall"])
    parts = [str(row[k]).strip() for k in ("summary", "reviewText") if row.get(k)]
    if len(parts) == 2 and parts[0][-1:] not in ".!?":
        parts[0] += "."
    if parts:
        event["text"] = _cast("text", " ".join(parts))
    return event


def _amazon_review_key(row: Mapping[str, Any]) -> str:
    """One review, whichever variant's product it is listed under: who, when (a day), and
    what they wrote."""
    written = orjson.dumps([row.get("overall"), row.get("summary"), row.get("reviewText")])
    return f"{row['reviewerID']}|{row['unixReviewTime']}|{hashlib.blake2b(written).hexdigest()}"


_EPOCH_SECONDS: Final = "reads its times as epoch seconds"
_JSON_LINES: Final = "reads JSON lines, which have no cells and no header line"

PRESETS: Final = {
    p.name: p
    for p in (
        Preset(
            name="taobao",
            tag="tb",
            format="csv",
            columns=(("user_id",), ("item_id",), ("category_id",), ("behavior",), ("ts",)),
            header=False,
            convert=_taobao,
            natural_key=None,
            about="Taobao UserBehavior.csv (no header): pv/cart/fav/buy become "
            "view/add_to_cart/click/purchase (--type-map adds or renames values); purchases "
            "get an estimated CNY amount, and a user's buys in the same second one order "
            "id (one checkout)",
            unread={"--ts-format": _EPOCH_SECONDS},
        ),
        Preset(
            name="online-retail",
            tag="or",
            format="csv",
            columns=(
                ("InvoiceNo", "Invoice"),
                ("StockCode",),
                ("Description",),
                ("Quantity",),
                ("InvoiceDate",),
                ("UnitPrice", "Price"),
                ("CustomerID", "Customer ID"),
                ("Country",),
            ),
            header=True,
            convert=_online_retail,
            natural_key=None,
            about="UCI Online Retail (I or II): one purchase per line, in GBP, at UK times; "
            "rows without a customer, returns (quantity <= 0) and lines that are no product "
            "(postage, fees, discounts, vouchers) are skipped",
            unread={"--type-map": "makes every row a purchase"},
        ),
        Preset(
            name="amazon-reviews",
            tag="az",
            format="jsonl",
            columns=(("reviewerID",), ("asin",), ("unixReviewTime",)),
            header=False,
            convert=_amazon_review,
            natural_key=_amazon_review_key,
            about="Amazon Reviews 2018 (Ni & McAuley) JSON lines: review events, text = summary "
            "+ reviewText; per-variant copies of one review share an event id",
            unread={
                "--type-map": "makes every line a review",
                "--ts-format": _EPOCH_SECONDS,
                "--delimiter": _JSON_LINES,
                "--header": _JSON_LINES,
                "--no-header": _JSON_LINES,
            },
        ),
    )
}


def check_preset_options(preset: Preset, options: CsvOptions) -> None:
    """Fail early on an option the preset would ignore or contradict (`--format` aside):
    it was silently read the preset's way, whatever the option said."""
    given = {
        "--type-map": bool(options.type_map),
        "--ts-format": options.ts_format is not None,
        "--delimiter": options.delimiter is not None,
        "--header": options.header is True,
        "--no-header": options.header is False,
    }
    for flag in (flag for flag, on in given.items() if on):
        if flag in preset.unread:
            raise FileImportError(
                f"--preset {preset.name} {preset.unread[flag]}: {flag} does not apply "
                "(leave it out)"
            )
        if flag.endswith("header") and options.header != preset.header:
            layout = "a header line" if preset.header else "no header line"
            raise FileImportError(
                f"--preset {preset.name} reads files with {layout}: {flag} contradicts it "
                f"(leave {flag} out)"
            )


def check_json_lines_options(path: Path, options: CsvOptions) -> None:
    """Fail early on a CSV option given for JSON lines read without a preset (a preset
    of JSON lines refuses them in `check_preset_options`): it was silently ignored."""
    given = {
        "--delimiter": options.delimiter is not None,
        "--header": options.header is True,
        "--no-header": options.header is False,
    }
    flags = [flag for flag, on in given.items() if on]
    if flags:
        raise FileImportError(
            f"{_named(path)} is read as JSON lines, which have no cells and no header "
            f"line: {flags[0]} does not apply (leave it out)"
        )


def preset_named(name: str) -> Preset:
    """The preset called `name`, or an error that lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownPresetError(
            f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}"
        ) from None


# -- reading ----------------------------------------------------------------------------------

# The line numbers a row is reported at and named by (its first and last: a CSV cell
# may hold line breaks), its cells by column name, and its raw text (for its id).
Row = tuple[int, int, Mapping[str, Any], str]


def read_events(
    path: Path,
    preset: str | None = None,
    mapping: dict[str, str] | None = None,
    *,
    options: CsvOptions | None = None,
    report: ImportReport | None = None,
    now_ms: int | None = None,
) -> Iterator[Record]:
    """Records `(key, value)` for `path`; fills `report` as they are consumed.

    Raises `FileImportError` at once (before any record) for an unknown
    preset, a bad mapping, a missing column or an unreadable file; errors in
    single rows are counted in `report`, never raised. `now_ms` bounds event
    times like the worker does (default: the wall clock).
    """
    path = Path(path)
    report = report if report is not None else ImportReport()
    options = replace(typed_constants(options or CsvOptions()), dates=report.dates)
    check_event_types(options)
    chosen = preset_named(preset) if preset is not None else None
    if chosen is not None and mapping is not None:
        raise FileImportError("give a preset or a mapping, not both")
    if chosen is not None and options.format not in (None, chosen.format):
        raise FileImportError(
            f"--preset {chosen.name} reads {chosen.format} files: --format "
            f"{options.format} contradicts it (leave --format out)"
        )
    if chosen is not None:
        check_preset_options(chosen, options)
    if chosen is None and options.format is None and path != STDIN:
        # A folder, a missing file, or a zip (an .xlsx workbook), zstd or Parquet file
        # whose name tells no format is said so by `_open`, not taken for a name without
        # a format: --format, the way out of that, would only lead there.
        try:  # a named pipe whose name tells its format is not opened here: read once
            named = path.exists() and not path.is_dir() and format_of(path)
        except FileImportError:
            named = None
        if not named:
            _open(path, "rb").close()
    fmt = chosen.format if chosen else options.format or format_of(path)
    if chosen is None and fmt == "jsonl":
        check_json_lines_options(path, options)
    if chosen is None and mapping is None:
        if fmt == "csv":
            raise FileImportError(
                f"{_named(path)}: a CSV file needs --preset or --map field=COLUMN"
            )
        return _passthrough(_lines(path), report)
    if mapping is not None:
        check_mapping(mapping, options)
    rows = (
        _csv_rows(path, chosen, mapping, options, report)
        if fmt == "csv"
        else _json_rows(_lines(path), report)
    )
    if chosen is None:
        assert mapping is not None
        chosen = Preset("mapping", "f", fmt, (), True, _mapped(mapping), None, "", own_users=False)
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    return _produce(rows, chosen, options, report, now)


def format_of(path: Path) -> Format:
    """`csv` for .csv/.tsv/.txt, `jsonl` for .json/.jsonl/.ndjson (optionally .gz, .bz2, .xz)."""
    if path == STDIN:
        raise FileImportError(
            "standard input (-) has no file name to tell its format by; give it "
            "(--format csv|jsonl, or a --preset)"
        )
    suffixes = [s.lower() for s in path.suffixes if s.lower() not in _COMPRESSED_SUFFIXES]
    last = suffixes[-1] if suffixes else ""
    if last in (".csv", ".tsv", ".txt"):
        return "csv"
    if last in (".json", ".jsonl", ".ndjson"):
        return "jsonl"
    raise FileImportError(
        f"{path}: cannot tell the format from the name; give it (--format csv|jsonl)"
    )


_COMPRESSED_SUFFIXES: Final = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz"}

# `profiler produce -`: standard input, as files are named on a command line. A file
# called `-` is `./-`, which a Path shortens to `-`: give its full path.
STDIN: Final = Path("-")


def _named(path: Path) -> str:
    """`path` as messages name it."""
    return "standard input" if path == STDIN else str(path)


def _mapped(mapping: Mapping[str, str]) -> Converter:
    return lambda row, options: convert_mapped(row, mapping, options)


def _windows_1252(error: UnicodeError) -> tuple[str, int]:
    """A codec error handler: bytes that are not UTF-8 read as Windows-1252, the encoding
    of CSV files saved by Excel on Windows (its `£` is byte 0xA3)."""
    assert isinstance(error, UnicodeDecodeError)
    return error.object[error.start : error.end].decode("cp1252", "replace"), error.end


codecs.register_error("profiler.windows-1252", _windows_1252)


def _open(path: Path, mode: Literal["rb", "rt"], encoding: str = "utf-8") -> IO[Any]:
    """Open a file or standard input, decompressed when its first bytes are gzip's, bzip2's
    or xz's (whatever its name says); a missing or unreadable file, or one in a format
    this cannot read (`_REFUSED`), is a clear error. A UTF-8 text file's bytes that are
    not UTF-8 read as Windows-1252; other encodings' as U+FFFD."""
    utf8 = encoding.lower().replace("_", "-") in ("utf-8", "utf8", "utf-8-sig")
    errors = "profiler.windows-1252" if utf8 else "replace"
    try:
        binary = _decompressed(path, _open_bytes(path))
    except OSError as exc:
        raise UnreadableFileError(f"cannot read {_named(path)}: {exc.strerror or exc}") from exc
    if mode == "rb":
        return binary
    return io.TextIOWrapper(binary, encoding=encoding, errors=errors, newline="")


def _open_bytes(path: Path) -> io.BufferedReader:
    if path == STDIN:  # a handle of its own: closing it leaves sys.stdin as it is
        _check_stdin()
        return open(0, "rb", closefd=False)
    return path.open("rb")


# How compressed files start: gzip, bzip2 (at any level), xz.
_GZIP: Final = b"\x1f\x8b"
_BZIP2: Final = tuple(b"BZh%d" % level for level in range(1, 10))
_XZ: Final = b"\xfd7zXZ\x00"
# Files this does not read, how they start, and what to do instead.
_REFUSED: Final = (
    (b"PK\x03\x04", "a zip archive (as an .xlsx workbook is): extract the CSV or JSON "
     "lines file from it, or save the sheet as CSV"),
    (b"PK\x05\x06", "an empty zip archive"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed: decompress it (zstd -d), or pipe it in "
     "(zstdcat FILE | profiler produce - --format csv|jsonl ...)"),
    (b"PAR1", "a Parquet file: convert it to JSON lines or CSV first"),
)  # fmt: skip
_MAGIC_BYTES: Final = 6


def _decompressed(path: Path, handle: io.BufferedReader) -> IO[bytes]:
    """`handle`, or its content decompressed: by its first bytes, since a name may not
    tell (`cat x.gz | profiler produce -`, a file renamed) and compressed bytes read as
    lines went out as events. A regular file's decompressor owns its own handle."""
    try:
        head = handle.peek(_MAGIC_BYTES)[:_MAGIC_BYTES]
        for magic, why in _REFUSED:
            if head.startswith(magic):
                raise UnreadableFileError(f"{_named(path)} is {why}")
        if not head.startswith((_GZIP, *_BZIP2, _XZ)):
            named = _COMPRESSED_SUFFIXES.get(path.suffix.lower())
            if named and head:  # a name that says compressed: its bytes are no text
                raise UnreadableFileError(
                    f"cannot read {_named(path)}: its name says {named}, but it is not {named}"
                )
            return handle
        if path == STDIN or not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return _decompressor(head, handle)  # a pipe cannot be opened again
    except BaseException:
        handle.close()
        raise
    handle.close()
    return _decompressor(head, path)


def _decompressor(head: bytes, source: Path | io.BufferedReader) -> IO[bytes]:
    """`source` (a path, or a file object it leaves open) read through the decompressor
    its first bytes, `head`, call for. The caller closes it."""
    if head.startswith(_GZIP):
        stream: io.BufferedIOBase = gzip.open(source)  # noqa: SIM115
    elif head.startswith(_BZIP2):
        stream = bz2.open(source)  # noqa: SIM115
    else:
        stream = lzma.open(source)  # noqa: SIM115
    return cast(IO[bytes], stream)


def _check_stdin() -> None:
    """Refuse a standard input that cannot be read (`<&-`, `0>file`) before reading it.

    A process started with descriptor 0 closed has no `sys.__stdin__`, and the
    first file it opens since (a socket, a module's file) takes descriptor 0:
    reading it read that file, or failed with a reason that named none of this.
    """
    if sys.__stdin__ is None:
        raise UnreadableFileError(
            "standard input (-) is closed: nothing to read; pipe the events in, or name a file"
        )
    with contextlib.suppress(OSError, ImportError):  # ImportError: no fcntl (Windows)
        import fcntl

        if fcntl.fcntl(0, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
            raise UnreadableFileError(
                "standard input (-) is open for writing only: nothing to read; pipe the "
                "events in, or name a file"
            )


# What reading a file may raise part way through: a disk's error, a compressed stream
# cut short or corrupt.
_READ_ERRORS: Final = (OSError, EOFError, zlib.error, lzma.LZMAError)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Non-blank lines with their 1-based numbers; opens now, so a missing file fails at once."""
    return _numbered(path, _open(path, "rb"))


# The longest line read whole (bytes). A longer one (a JSON array with no line breaks,
# as long as its file) is yielded cut at one byte more, its rest read past unkept.
MAX_LINE_BYTES = 1 << 26


def _numbered(path: Path, handle: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    try:
        with handle:
            number = 0
            while raw := handle.readline(MAX_LINE_BYTES + 1):
                number += 1
                rest = raw if len(raw) > MAX_LINE_BYTES else b""
                while rest and not rest.endswith(b"\n"):  # read past the cut line's rest
                    rest = handle.readline(1 << 20)
                line = raw.rstrip(b"\r\n")
                if number == 1:  # Windows tools start a file with a BOM, which is not JSON
                    line = line.removeprefix(codecs.BOM_UTF8)
                if line.strip():
                    yield number, line
    except _READ_ERRORS as exc:
        raise UnreadableFileError(f"cannot read {_named(path)}: {exc}") from exc


def _passthrough(lines: Iterator[tuple[int, bytes]], report: ImportReport) -> Iterator[Record]:
    for number, line in lines:
        report.rows += 1
        if len(line) > MAX_EVENT_BYTES:  # the producer may refuse it, and stop the import
            report.skip(number, "too_large", _too_large(line, MAX_EVENT_BYTES))
            continue
        report.produced += 1
        key = _user_key(line)
        report.unkeyed += key is None
        yield key, line


def _too_large(line: bytes, limit: int) -> str:
    if len(line) > MAX_LINE_BYTES:  # cut: its length is not known
        return f"over {MAX_LINE_BYTES} bytes"
    return f"{len(line)} bytes > {limit}"


def _user_key(line: bytes) -> bytes | None:
    try:
        user = _UserOnly.decode(line).user_id
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    return user.encode() if user else None


class _UserIdOnly(msgspec.Struct):
    user_id: str


_UserOnly: Final = msgspec.json.Decoder(_UserIdOnly)


def _json_rows(lines: Iterator[tuple[int, bytes]], report: ImportReport) -> Iterator[Row]:
    for number, line in lines:
        report.rows += 1
        if len(line) > MAX_LINE_BYTES:
            report.skip(number, "too_large", _too_large(line, MAX_LINE_BYTES))
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            report.skip(number, "invalid_json", str(exc))
            continue
        if not isinstance(obj, dict):
            report.skip(number, "not_object", type(obj).__name__)
            continue
        yield number, number, obj, line.decode("utf-8", "replace")


def _csv_rows(
    path: Path,
    preset: Preset | None,
    mapping: Mapping[str, str] | None,
    options: CsvOptions,
    report: ImportReport,
) -> Iterator[Row]:
    """Rows as `{column: cell}`; reads (and checks) the header before the first record."""
    utf8 = options.encoding.lower().replace("_", "-") in ("utf-8", "utf8")
    handle = _open(path, "rt", "utf-8-sig" if utf8 else options.encoding)  # drop a BOM
    delimiter = options.delimiter or ("\t" if ".tsv" in path.suffixes else ",")
    # A cell longer than csv's default (131,072 characters) is cut later, not refused.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_CSV_CELL))
    lines = _PhysicalLines(handle)
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        names = _column_names(path, reader, preset, mapping, options)
    except BaseException:
        handle.close()
        raise
    return _csv_records(path, handle, lines, reader, names=names, report=report)


MAX_CSV_CELL: Final = 1 << 26  # characters; a longer one is a csv_error


class _PhysicalLines:
    """The lines of a CSV file as its reader takes them, each with its number; lines
    given back (`again`) are read once more, before the rest of the file."""

    def __init__(self, handle: IO[str]) -> None:
        self._lines = enumerate(handle, 1)
        self._again: list[tuple[int, str]] = []  # in reverse order
        self.taken: list[tuple[int, str]] = []  # the lines of the record being read

    def __iter__(self) -> _PhysicalLines:
        return self

    def __next__(self) -> str:
        numbered = self._again.pop() if self._again else next(self._lines)
        self.taken.append(numbered)
        return numbered[1]

    def again(self, lines: list[tuple[int, str]]) -> None:
        self._again += reversed(lines)


def _csv_records(
    path: Path,
    handle: IO[Any],
    lines: _PhysicalLines,
    reader: Any,
    *,
    names: list[tuple[str, int]],
    report: ImportReport,
) -> Iterator[Row]:
    """The records of a CSV file. A quoted cell may hold line breaks, but a quote that
    is never closed takes the lines after it into one cell: a record over several
    lines that runs to the end of the file inside quotes, or has fewer columns
    than a row needs, or is refused (a cell over the size limit), is skipped as a
    `csv_error`, and the lines after its first are read again.

    A record is reported at its first line and named by its last, as the reader
    counts lines (its event id hashes that number).
    """
    width = 1 + max((index for _, index in names), default=-1)
    with handle:
        while True:
            lines.taken = []
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                report.rows += 1
                report.skip(lines.taken[0][0] if lines.taken else 0, "csv_error", str(exc))
                lines.again(lines.taken[1:])
                continue
            except _READ_ERRORS as exc:
                raise UnreadableFileError(f"cannot read {_named(path)}: {exc}") from exc
            taken = lines.taken
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue
            first, last = taken[0][0], taken[-1][0]
            report.rows += 1
            if len(taken) > 1 and (len(cells) < width or _quote_left_open(taken, reader.dialect)):
                report.skip(first, "csv_error", f"a quote on line {first} is never closed")
                lines.again(taken[1:])
                continue
            if len(cells) < width:
                report.skip(first, "short_row", f"{len(cells)} of {width} columns")
                continue
            yield first, last, {name: cells[i] for name, i in names}, "\x1f".join(cells)


def _quote_left_open(taken: list[tuple[int, str]], dialect: Any) -> bool:
    """Whether a record read over these lines is a quote left open: a strict reader
    finds it broken past its first line (the quote closed by a later cell's, or at
    the end of the file). A cell broken on the first line (`"i3"x`) is not that."""
    strict = csv.reader([text for _, text in taken], dialect, strict=True)
    try:
        list(strict)
    except csv.Error:
        return strict.line_num > 1
    return False


def _column_names(
    path: Path,
    reader: Any,
    preset: Preset | None,
    mapping: Mapping[str, str] | None,
    options: CsvOptions,
) -> list[tuple[str, int]]:
    """`(name, index)` of every column a row needs; checks the header has them all."""
    if preset and not preset.header:
        return [(alts[0], i) for i, alts in enumerate(preset.columns)]
    header_line = preset.header if preset else options.header is not False
    if header_line:
        try:
            header = [cell.strip() for cell in next(reader)]
        except StopIteration:
            raise FileImportError(f"{_named(path)} is empty: no header line") from None
        except (csv.Error, *_READ_ERRORS) as exc:
            raise UnreadableFileError(f"cannot read the header of {_named(path)}: {exc}") from exc
    else:
        header = list(options.columns) if options.columns else []
    mapped = dict.fromkeys((mapping or {}).values())
    wanted = preset.columns if preset else tuple((column,) for column in mapped)
    if not header:  # header-less, unnamed: columns are 1-based positions, as in cut and awk
        fields = {column: name for name, column in (mapping or {}).items()}
        return [(alts[0], _position(alts[0], fields.get(alts[0]))) for alts in wanted]
    found = []
    for alts in wanted:
        index = next((header.index(a) for a in alts if a in header), None)
        if index is None:
            raise MissingColumnError(
                f"{_named(path)}: no column {' or '.join(map(repr, alts))}; "
                f"columns are {', '.join(map(repr, header))}"
            )
        found.append((alts[0], index))
    return found


def _position(column: str, field: str | None) -> int:
    """The index of `column` (1-based, as the user gives it) of a file without a header;
    `field`: the field `--map` gave it to, named in the refusal of a column not a number."""
    if not column.isdigit() or int(column) < 1:
        given = f"--map {field}={column}" if field else f"column {column!r}"
        raise MissingColumnError(
            f"{given}: a file without a header line (--no-header) names its columns by "
            f"position: --map {field or 'FIELD'}=N for the Nth, from 1"
        )
    return int(column) - 1


def _produce(
    rows: Iterator[Row], how: Preset, options: CsvOptions, report: ImportReport, now_ms: int
) -> Iterator[Record]:
    """Convert, give ids, validate like the worker, encode; count what is skipped and why."""
    for line, last, row, raw in rows:
        try:
            event = how.convert(row, options)
            if how.own_users:  # the data set's ids, in its own namespace
                event["user_id"] = f"{how.tag}:{event['user_id']}"
            if "event_id" not in event:
                key = how.natural_key(row) if how.natural_key else f"{last}\x1f{raw}"
                event["event_id"] = natural_event_id(how.tag, key)
            value = _encode(event)
        except SkipRow as skip:
            report.skip(line, skip.reason, skip.detail)
            continue
        except (TypeError, ValueError, KeyError, OverflowError) as exc:  # a cell we did not foresee
            report.skip(line, "conversion_error", f"{type(exc).__name__}: {exc}")
            continue
        verdict = decode_event(value, now_ms)
        if isinstance(verdict, Rejection):
            report.skip(line, f"invalid:{verdict.error}", verdict.detail)
            continue
        report.produced += 1
        yield verdict.user_id.encode(), value


_encode: Final = msgspec.json.Encoder().encode

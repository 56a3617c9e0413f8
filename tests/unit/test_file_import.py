"""`profiler produce FILE`: JSON lines pass through, CSV maps, presets read the public data sets.

Each test writes a few lines of its own; none reads the shared data folder.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

import stream.file_import
from profiling.events import Event, decode_event
from stream.file_import import (
    STDIN,
    CsvOptions,
    FileImportError,
    ImportReport,
    MissingColumnError,
    UnknownPresetError,
    UnreadableFileError,
    estimated_taobao_price,
    natural_event_id,
    parse_pairs,
    parse_ts,
    read_events,
)
from stream.synthetic_shop import ShopGenerator

NOW = 1_700_000_000_000


def run(
    path: Path, preset: str | None = None, mapping: dict[str, str] | None = None, **options: Any
) -> tuple[list[tuple[bytes | None, dict[str, Any]]], ImportReport]:
    """Import `path` and return (key, decoded value) pairs plus the report."""
    report = ImportReport()
    opts = CsvOptions(**options) if options else None
    records = list(read_events(path, preset, mapping, options=opts, report=report, now_ms=NOW))
    assert report.rows == report.produced + sum(report.skipped.values())
    return [(key, orjson.loads(value)) for key, value in records], report


def assert_all_valid(events: list[tuple[bytes | None, dict[str, Any]]]) -> None:
    for key, event in events:
        verdict = decode_event(orjson.dumps(event), NOW)
        assert isinstance(verdict, Event), (event, verdict)
        assert key == verdict.user_id.encode()


# -- JSON lines, passed through ----------------------------------------------------------------


def test_json_lines_pass_through_byte_for_byte_with_user_keys(tmp_path: Path) -> None:
    good = b'{"event_id":"e1","user_id":"alice","type":"view","ts":1699999999000,"item_id":"p1"}'
    lines = [
        good,
        b"",
        b'{"event_id":"e2","type":"login","ts":1}',
        b"not json at all",
        b"[1,2]",
        b'{"user_id": 42}',
        b'{"user_id": ""}',
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\r\n".join(lines) + b"\n")
    report = ImportReport()
    records = list(read_events(path, None, None, report=report))
    assert records[0] == (b"alice", good)
    assert [value for _, value in records] == [line for line in lines if line]
    assert [key for key, _ in records][1:] == [None] * 5  # the worker dead-letters them
    assert (report.rows, report.produced, report.unkeyed) == (6, 6, 5)


def test_a_byte_order_mark_does_not_cost_the_first_event(tmp_path: Path) -> None:
    first = b'{"event_id":"e1","user_id":"alice","type":"login","ts":1699999999000}'
    second = b'{"event_id":"e2","user_id":"bob","type":"login","ts":1699999999000}'
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + first + b"\r\n" + second + b"\r\n")
    assert list(read_events(path, None, None)) == [(b"alice", first), (b"bob", second)]
    mapping = {name: name for name in ("event_id", "user_id", "type", "ts")}
    events, report = run(path, None, mapping)
    assert [key for key, _ in events] == [b"alice", b"bob"] and not report.skipped


def test_a_shop_stream_survives_a_round_trip_through_a_gzip_file(tmp_path: Path) -> None:
    shop = ShopGenerator(users=20, seed=5, start_ms=NOW - 3_600_000, end_ms=NOW, products=100)
    records = list(shop.records(300, malformed_ratio=0.0, duplicate_ratio=0.1))
    path = tmp_path / "shop.ndjson.gz"
    with gzip.open(path, "wb") as out:
        out.writelines(value + b"\n" for _, value in records)
    assert list(read_events(path, None, None)) == records


# -- presets -----------------------------------------------------------------------------------


def test_taobao_preset(tmp_path: Path) -> None:
    path = tmp_path / "UserBehavior.csv"
    path.write_text(
        "1,2268318,2520377,pv,1511544070\n"
        "1,2333346,2520771,cart,1511561733\n"
        "1,2576651,149192,fav,1511572885\n"
        "100,1603476,2951233,buy,1511579908\n"
        "100,1603477,2951233,buy,1511579908\n"  # the same checkout
        "100,1603478,2951233,buy,1511579909\n"  # the next one
        "100,1603476,2951233,share,1511579908\n"
        "301780,543546,4181361,pv,15\n"  # the truncated last line of a slice
        "5,6,7\n"
    )
    events, report = run(path, "taobao")
    assert_all_valid(events)
    assert [e["type"] for _, e in events] == ["view", "add_to_cart", "click", *["purchase"] * 3]
    view = events[0][1]
    assert view["user_id"] == "tb:1" and view["item_id"] == "2268318"
    assert view["category"] == "taobao.2520377" and view["ts"] == 1_511_544_070_000
    purchase = events[3][1]
    assert purchase["amount"] == estimated_taobao_price("1603476") > 0
    assert purchase["currency"] == "CNY" and purchase["amount_estimated"] is True
    orders = [e["order_id"] for _, e in events[3:]]
    assert orders[0] == orders[1] != orders[2]
    assert report.rows == 9
    assert report.skipped == {"unknown_behavior": 1, "invalid:out_of_range": 1, "short_row": 1}


def test_taobao_amount_can_be_fixed_instead_of_estimated(tmp_path: Path) -> None:
    path = tmp_path / "UserBehavior.csv"
    path.write_text("100,1603476,2951233,buy,1511579908\n")
    events, _ = run(path, "taobao", default_amount=0.0)
    assert events[0][1]["amount"] == 0.0 and "amount_estimated" not in events[0][1]


ONLINE_RETAIL = """InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom
536366,22633,HAND WARMER UNION JACK,6,12/1/2010 8:28,1.85,13047,EIRE
536367,22632,HAND WARMER RED POLKA DOT,2,2010-12-01 08:34:00,1.85,,United Kingdom
C536379,D,Discount,-1,2010-12-01 09:41:00,27.5,14527.0,United Kingdom
536370,POST,POSTAGE,3,2010-12-01 08:45:00,18.0,12583.0,Unspecified
536371,22086,"PAPER CHAIN KIT, 50'S CHRISTMAS",80,2010-12-01 09:00:00,2.55,13748.0,Atlantis
536372,22087,BIG ORDER,99999,2010-12-01 09:00:00,1.0,13748.0,France
"""


def test_online_retail_preset(tmp_path: Path) -> None:
    path = tmp_path / "Online Retail.csv"
    path.write_text(ONLINE_RETAIL)
    events, report = run(path, "online-retail")
    assert_all_valid(events)
    first = events[0][1]
    assert events[0][0] == b"or:17850"
    assert first == first | {
        "type": "purchase",
        "user_id": "or:17850",
        "order_id": "536365",
        "item_id": "85123A",
        "title": "WHITE HANGING HEART T-LIGHT HOLDER",
        "quantity": 6,
        "price": 2.55,
        "amount": 15.3,
        "currency": "GBP",
        "country": "GB",
        "ts": 1_291_191_960_000,
    }
    assert events[1][1]["country"] == "IE"
    assert events[1][1]["ts"] == 1_291_192_080_000  # US-style date; UK time, GMT in December
    assert "country" not in events[2][1]  # Atlantis
    assert events[2][1]["title"] == "PAPER CHAIN KIT, 50'S CHRISTMAS"
    # The discount and the postage are lines of an invoice, not products bought.
    assert report.skipped == {"no_customer": 1, "not_a_product": 2, "invalid:out_of_range": 1}


def test_online_retail_times_are_the_uks_wall_clock(tmp_path: Path) -> None:
    path = tmp_path / "Online Retail.csv"
    path.write_text(
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        "562000,22633,HAND WARMER UNION JACK,6,2011-08-01 09:00:00,1.85,13047,United Kingdom\n"
        "581000,22633,HAND WARMER UNION JACK,6,2011-12-01 09:00:00,1.85,13047,United Kingdom\n"
    )
    events, _ = run(path, "online-retail")
    assert [e["ts"] for _, e in events] == [
        1_312_185_600_000,  # 2011-08-01 08:00 UTC: 09:00 British Summer Time
        1_322_730_000_000,  # 2011-12-01 09:00 UTC: 09:00 GMT
    ]


def test_a_csv_saved_in_windows_1252_keeps_its_characters(tmp_path: Path) -> None:
    """Excel on Windows saves CSV in Windows-1252: its £ and é are not UTF-8."""
    header = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
    rows = [
        "536365,22633,CAFÉ SIGN £5,6,12/1/2010 8:26,1.85,17850,United Kingdom\n",
        "536366,22634,CRÈME JUG,6,12/1/2010 8:26,1.85,17850,United Kingdom\n",
    ]
    latin = tmp_path / "latin.csv"
    latin.write_bytes((header + rows[0]).encode("cp1252") + rows[1].encode())  # one of each
    events, _ = run(latin, "online-retail")
    assert [e["title"] for _, e in events] == ["CAFÉ SIGN £5", "CRÈME JUG"]


def test_online_retail_ii_header_names_are_understood(tmp_path: Path) -> None:
    path = tmp_path / "online_retail_II.csv"
    path.write_text(
        "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country\n"
        "489434,85048,15CM CHRISTMAS GLASS BALL 20 LIGHTS,12,2009-12-01 07:45:00,6.95,13085,"
        "United Kingdom\n"
    )
    events, _ = run(path, "online-retail")
    assert events[0][1]["amount"] == 83.4 and events[0][1]["user_id"] == "or:13085"


def test_an_amazon_rating_the_contract_cannot_hold_leaves_the_review(tmp_path: Path) -> None:
    """A rating is optional: "" or 4.5 dropped the whole review, and true became 1."""
    base = {"reviewerID": "R", "asin": "B", "unixReviewTime": 1441324800, "summary": "Fine"}
    overall: list[object] = ["", 4.5, True, 4]
    path = tmp_path / "reviews.json"
    lines = [json.dumps(base | {"overall": o, "summary": str(o)}) for o in overall]
    path.write_text("\n".join(lines))
    events, report = run(path, "amazon-reviews")
    assert [value.get("rating") for _, value in events] == [None, None, None, 4]
    assert report.produced == 4 and not report.skipped


def test_amazon_reviews_preset(tmp_path: Path) -> None:
    review = {
        "overall": 5.0,
        "verified": True,
        "reviewerID": "ALJ66O1Y6SLHA",
        "asin": "B000K2PJ4K",
        "style": {"Size:": " Big Boys"},
        "reviewText": "Great product and price!",
        "summary": "Five Stars",
        "unixReviewTime": 1441324800,
    }
    # The data set lists a review again under each variant's product.
    variant = review | {"asin": "B0058YEJ5K", "style": {"Size:": " Little Boys"}}
    other = review | {"overall": 3.0, "summary": "Runs small", "reviewText": "Size up."}
    rows = [
        review,
        variant,
        other,  # the same reviewer, product and day, another review
        {"asin": "B1", "overall": 3.0, "unixReviewTime": 1441324800},
        {
            "reviewerID": "R2",
            "asin": "B2",
            "overall": 2.0,
            "summary": "Meh",
            "unixReviewTime": 1441324800,
        },
    ]
    path = tmp_path / "AMAZON_FASHION_5.json.gz"
    with gzip.open(path, "wt") as out:
        out.write("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    events, report = run(path, "amazon-reviews")
    assert_all_valid(events)
    first = events[0][1]
    assert first["type"] == "review" and first["rating"] == 5 and first["item_id"] == "B000K2PJ4K"
    assert first["text"] == "Five Stars. Great product and price!"
    assert first["ts"] == 1_441_324_800_000
    assert first["user_id"] == "az:ALJ66O1Y6SLHA"
    assert events[1][1]["event_id"] == first["event_id"]  # per-variant copies: one review
    assert events[2][1]["event_id"] != first["event_id"]
    assert events[3][1]["text"] == "Meh"
    assert report.skipped == {"missing_value:reviewerID": 1, "invalid_json": 1}


def test_event_ids_are_deterministic_and_distinct_per_line(tmp_path: Path) -> None:
    path = tmp_path / "UserBehavior.csv"
    path.write_text("1,2,3,pv,1511544070\n1,2,3,pv,1511544070\n")  # the same row twice
    first, _ = run(path, "taobao")
    again, _ = run(path, "taobao")
    assert first == again
    assert first[0][1]["event_id"] != first[1][1]["event_id"]
    assert all(len(e["event_id"]) <= 64 for _, e in first)


# -- CSV with a mapping ------------------------------------------------------------------------


def test_a_mapped_csv_converts_types_times_and_amounts(tmp_path: Path) -> None:
    path = tmp_path / "shop.csv"
    path.write_text(
        "who,what,when,item,name,cost,n,stars\n"
        "u1,pv,1699990000,i1,Blue Kettle,25.5,,\n"
        "u1,buy,1699990100000,i1,Blue Kettle,25.5,2,\n"
        "u2,fav,2023-11-14T20:00:00Z,i2,  Red Mug  ,4,,\n"
        "u2,rate,1699990200,i2,Red Mug,4,,4\n"
        "u3,buy,not a time,i3,Pan,9,1,\n"
        "u3,buy,1699990300,i3,Pan,9,many,\n"
    )
    mapping = {
        "user_id": "who",
        "type": "what",
        "ts": "when",
        "item_id": "item",
        "title": "name",
        "price": "cost",
        "quantity": "n",
        "rating": "stars",
    }
    types = {"pv": "view", "buy": "purchase", "fav": "click", "rate": "review"}
    events, report = run(path, None, mapping, type_map=types, constants={"currency": "EUR"})
    assert_all_valid(events)
    view, purchase, click, review = (e for _, e in events)
    assert view["ts"] == 1_699_990_000_000 and view["type"] == "view"
    assert purchase["ts"] == 1_699_990_100_000 and purchase["amount"] == 51.0
    assert click["ts"] == 1_699_992_000_000 and click["title"] == "Red Mug"
    assert review["rating"] == 4 and view["currency"] == "EUR"
    assert report.skipped == {"bad_value:ts": 1, "bad_value:quantity": 1}


def test_a_number_cell_that_is_not_finite_skips_the_row(tmp_path: Path) -> None:
    path = tmp_path / "prices.csv"
    path.write_text(
        "who,what,when,item,cost,total\n"
        "u1,view,1699990000,i1,NaN,\n"
        "u2,view,1699990000,i2,inf,\n"
        "u3,purchase,1699990000,i3,,-Infinity\n"
        "u4,view,1699990000,i4,9.99,\n"
    )
    mapping = {"user_id": "who", "type": "what", "ts": "when", "item_id": "item"}
    mapping |= {"price": "cost", "amount": "total"}
    events, report = run(path, None, mapping)
    assert [key for key, _ in events] == [b"u4"] and events[0][1]["price"] == 9.99
    assert report.skipped == {"bad_value:price": 2, "bad_value:amount": 1}
    with pytest.raises(FileImportError, match="amount"):
        read_events(path, None, mapping, options=CsvOptions(constants={"amount": "nan"}))


def test_a_header_less_file_maps_columns_by_position(tmp_path: Path) -> None:
    path = tmp_path / "clicks.tsv"
    path.write_text("17/10/2023 10:00\tu9\tsearch\trunning shoes\n")
    mapping = {"ts": "1", "user_id": "2", "type": "3", "query": "4"}
    events, _ = run(path, None, mapping, header=False, ts_format="%d/%m/%Y %H:%M")
    assert events[0][1]["query"] == "running shoes" and events[0][1]["ts"] == 1_697_536_800_000


def test_a_files_slashed_dates_keep_the_order_one_of_them_shows(tmp_path: Path) -> None:
    def day(event: dict[str, Any]) -> str:
        return datetime.fromtimestamp(event["ts"] / 1000, UTC).strftime("%Y-%m-%d")

    mapping = {"user_id": "user", "type": "kind", "ts": "at"}
    path = tmp_path / "logins.csv"
    rows = ["05/01/2011 10:00", "13/01/2011 10:00", "04/02/2011 10:00", "12/25/2011 10:00"]
    path.write_text("user,kind,at\n" + "".join(f"u{i},login,{at}\n" for i, at in enumerate(rows)))
    events, report = run(path, None, mapping)
    # Day first from 13/01 on: 04/02 is February 4th, and 12/25 is no day-first date.
    assert [day(e) for _, e in events] == ["2011-05-01", "2011-01-13", "2011-02-04"]
    assert report.skipped == {"bad_value:ts": 1}
    assert "'12/25/2011 10:00' is not day first" in report.examples["bad_value:ts"]
    # 05/01 came before the file showed its order: read month first, and said so.
    assert "1 dates read month first before '13/01/2011 10:00'" in report.summary()

    path.write_text("user,kind,at\nu0,login,12/25/2011 10:00\nu1,login,05/01/2011 10:00\n")
    events, report = run(path, None, mapping)
    assert [day(e) for _, e in events] == ["2011-12-25", "2011-05-01"]
    assert "month first" not in report.summary()


def test_json_lines_can_be_mapped_too(tmp_path: Path) -> None:
    path = tmp_path / "other.jsonl"
    path.write_text('{"uid": 7, "kind": "login", "at": 1699990000, "ok": "yes"}\n')
    mapping = {"user_id": "uid", "type": "kind", "ts": "at", "success": "ok"}
    events, _ = run(path, None, mapping)
    assert events[0] == (b"7", events[0][1])
    assert events[0][1]["success"] is True


def test_a_mapping_reaches_keys_nested_in_a_json_lines_objects(tmp_path: Path) -> None:
    """`--map user_id=user.id`: a path through the line's objects (a key with a dot in its
    name first). A required field whose path the line lacks skips the row, naming it; an
    optional one is an absent field, as a blank cell is."""
    path = tmp_path / "nested.jsonl"
    lines = [
        {"user": {"id": "u1"}, "e": {"kind": "view", "at": 1699990000}, "item": {"id": "i1"}},
        {"user": {"id": "u2"}, "e": {"kind": "login", "at": 1699990001}},
        {"user.id": "u3", "e": {"kind": "login", "at": 1699990002}},
        {"user": {"name": "x"}, "e": {"kind": "login", "at": 1699990003}},
        {"user": "u5", "e": {"kind": "login", "at": 1699990004}},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    mapping = {"user_id": "user.id", "type": "e.kind", "ts": "e.at", "item_id": "item.id"}
    events, report = run(path, None, mapping)
    assert [(e["user_id"], e["type"], e.get("item_id")) for _, e in events] == [
        ("u1", "view", "i1"), ("u2", "login", None), ("u3", "login", None),
    ]  # fmt: skip
    assert_all_valid(events)
    assert report.skipped == {"missing:user_id": 2}
    assert report.examples["missing:user_id"] == (
        "line 4: no 'user.id' in the line (--map user_id=user.id)"
    )
    flat = tmp_path / "flat.jsonl"
    flat.write_text('{"kind": "login", "at": 1699990000}\n')
    _, report = run(flat, None, {"user_id": "uid", "type": "kind", "ts": "at"})
    assert report.examples == {
        "missing:user_id": "line 1: no 'uid' in the line (--map user_id=uid)"
    }
    _, report = run(path, None, {**mapping, "user_id": "user.id.first"})
    assert report.examples["missing:user_id"] == (
        "line 1: 'user.id' is a string, not an object: no 'user.id.first' (--map "
        "user_id=user.id.first)"
    )


def test_a_blank_success_cell_is_a_login_whose_outcome_is_not_told(tmp_path: Path) -> None:
    """The event contract lets a login leave `success` out: a cell with nothing in it, as
    a file padded after its commas has (`u1, login, 1699990000, `), is no bad value."""
    path = tmp_path / "logins.csv"
    path.write_text(
        "uid,kind,at,ok\n"
        "u1,login,1699990000,yes\n"
        "u1,login,1699990001,\n"
        "u1, login, 1699990002, \n"
        'u1,login,1699990003,"\t"\n'
        "u1,login,1699990004,no\n"
    )
    mapping = {"user_id": "uid", "type": "kind", "ts": "at", "success": "ok"}
    events, report = run(path, None, mapping)
    assert not report.skipped and len(events) == 5
    assert [e.get("success") for _, e in events] == [True, None, None, None, False]
    assert all("success" not in e for _, e in events[1:4])
    assert_all_valid(events)


def test_a_field_set_to_nothing_is_absent_as_a_blank_cell_is(tmp_path: Path) -> None:
    """`--set success=` leaves the field out, as an empty cell does, for every field type:
    it was refused for a boolean or a number and sent as "" (invalid) for a string."""
    path = tmp_path / "logins.csv"
    path.write_text("uid,kind,at\nu1,login,1699990000\n")
    mapping = {"user_id": "uid", "type": "kind", "ts": "at"}
    empty = {"success": "", "quantity": " ", "currency": "", "country": ""}
    events, report = run(path, None, mapping, constants=empty)
    assert not report.skipped and len(events) == 1
    assert not set(empty) & set(events[0][1])
    assert_all_valid(events)
    unset = CsvOptions(constants={"type": ""})
    with pytest.raises(FileImportError, match="`type`"):  # set to nothing: still unmapped
        read_events(path, None, {"user_id": "uid", "ts": "at"}, options=unset)


def test_row_errors_never_stop_an_import(tmp_path: Path) -> None:
    path = tmp_path / "messy.csv"
    huge = "x" * 200_000  # past the csv module's default field size limit: cut, not refused
    path.write_text(
        "user,type,ts,item\n"
        f'u1,view,1699990000,"{huge}"\n'
        "u1,view,1699990000\n"
        "u1,teleport,1699990000,i1\n"
        "u1,view,9999999999999,i1\n"
        "\n"
        "u1,view,1699990000,i1\n",
        encoding="utf-8",
    )
    mapping = {"user_id": "user", "type": "type", "ts": "ts", "item_id": "item"}
    events, report = run(path, None, mapping)
    assert len(events) == 2 and report.rows == 5
    assert len(events[0][1]["item_id"]) == 128
    assert set(report.skipped) == {"short_row", "invalid:invalid_value", "invalid:ts_in_future"}
    assert all(reason in report.examples for reason in report.skipped)
    assert "5 rows read, 2 produced, 3 skipped" in report.summary()


@pytest.mark.parametrize("preset", ["online-retail", None])
def test_a_quote_never_closed_costs_its_row_only(tmp_path: Path, preset: str | None) -> None:
    """The reader took every line after a stray quote into one cell: the rows after it
    were lost (with a mapping, produced inside the first row's description). A cell
    with a line break inside its quotes is still one cell."""
    path = tmp_path / "or.csv"
    path.write_text(
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        '536365,85123A,"WHITE HANGING HEART,6,12/1/2010 8:26,2.55,17850,United Kingdom\n'
        "536365,71053,WHITE METAL LANTERN,6,12/1/2010 8:26,3.39,17850,United Kingdom\n"
        '536366,22633,"HAND WARMER\nUNION JACK",6,12/1/2010 8:28,1.85,17850,United Kingdom\n'
        "536367,84879,BIRD ORNAMENT,32,12/1/2010 8:34,1.69,13047,United Kingdom\n",
        encoding="utf-8",
    )
    mapping = {"user_id": "CustomerID", "item_id": "StockCode", "title": "Description",
               "ts": "InvoiceDate", "price": "UnitPrice"}  # fmt: skip
    if preset:
        events, report = run(path, preset)
    else:
        events, report = run(path, None, mapping, constants={"type": "view"})
    titles = [value["title"] for _, value in events]
    assert titles == ["WHITE METAL LANTERN", "HAND WARMER\nUNION JACK", "BIRD ORNAMENT"]
    assert report.rows == 4 and report.skipped == {"csv_error": 1}
    assert report.examples["csv_error"] == "line 2: a quote on line 2 is never closed"


# -- clear errors before anything is produced --------------------------------------------------


def test_an_unknown_preset_is_named(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a\n")
    with pytest.raises(UnknownPresetError, match="known presets: amazon-reviews, online-retail"):
        read_events(path, "tmall", None)


def test_a_missing_column_lists_the_header(tmp_path: Path) -> None:
    path = tmp_path / "retail.csv"
    path.write_text("InvoiceNo,StockCode,Quantity\n1,2,3\n")
    with pytest.raises(MissingColumnError, match=r"'Description'.*columns are 'InvoiceNo'"):
        read_events(path, "online-retail", None)
    with pytest.raises(MissingColumnError, match="'buyer'"):
        read_events(path, None, {"user_id": "buyer", "type": "StockCode", "ts": "Quantity"})


@pytest.mark.parametrize("name", ["missing.csv", "folder.jsonl"])
def test_an_unreadable_file_is_reported(tmp_path: Path, name: str) -> None:
    (tmp_path / "folder.jsonl").mkdir()
    with pytest.raises(UnreadableFileError, match="cannot read"):
        read_events(tmp_path / name, "taobao" if name.endswith(".csv") else None, None)


@pytest.mark.parametrize(
    ("name", "why"), [("missing", "No such file"), ("folder", "Is a directory")]
)
def test_a_missing_file_or_a_folder_is_said_so_not_a_name_without_a_format(
    tmp_path: Path, name: str, why: str
) -> None:
    """`profiler produce exports/` (or a mistyped name without a suffix) said "cannot tell
    the format from the name; give it (--format csv|jsonl)", and with --format then
    that it could not read it."""
    (tmp_path / "folder").mkdir()
    with pytest.raises(UnreadableFileError, match=f"cannot read .*{name}: {why}"):
        read_events(tmp_path / name)


def test_a_corrupt_gzip_file_is_reported_not_half_read(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl.gz"
    path.write_bytes(b"this is not gzip")
    with pytest.raises(UnreadableFileError):
        list(read_events(path, None, None))


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("Online Retail.xlsx", b"PK\x03\x04\x14\x00xl/workbook.xml", "is a zip archive"),
        ("UserBehavior.csv.zip", b"PK\x03\x04\x14\x00UserBehavior.csv", "is a zip archive"),
        ("events.jsonl.zst", b"\x28\xb5\x2f\xfd\x00\x58", "is zstd-compressed"),
        ("reviews.jsonl", b"PAR1\x15\x04\x15", "is a Parquet file"),
    ],
)
def test_a_file_in_a_format_not_read_is_refused_saying_what_it_is(
    tmp_path: Path, name: str, content: bytes, why: str
) -> None:
    """Its bytes were read as CSV (a header of binary columns, or rows skipped one by one,
    or even sent: a zip stores small files as they are) or as JSON lines sent as events."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UnreadableFileError, match=f"^{path} {why}"):
        list(read_events(path, "online-retail"))
    with pytest.raises(UnreadableFileError, match=f"^{path} {why}"):
        list(read_events(path, None, None, options=CsvOptions(format="jsonl")))


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("Online Retail.xlsx", b"PK\x03\x04\x14\x00xl/workbook.xml", "is a zip archive"),
        ("UserBehavior.zip", b"PK\x03\x04\x14\x00UserBehavior.csv", "is a zip archive"),
        ("events.jsonl.zst", b"\x28\xb5\x2f\xfd\x00\x58", "is zstd-compressed"),
        ("reviews.parquet", b"PAR1\x15\x04\x15", "is a Parquet file"),
    ],
)
def test_a_file_not_read_whose_name_tells_no_format_is_refused_saying_what_it_is(
    tmp_path: Path, name: str, content: bytes, why: str
) -> None:
    """`profiler produce "Online Retail.xlsx"` said "cannot tell the format from the name;
    give it (--format csv|jsonl)": advice that only led to the refusal."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UnreadableFileError, match=f"^{path} {why}"):
        read_events(path)


def test_a_compressed_csv_file_reads_as_the_plain_one(tmp_path: Path) -> None:
    """Gzip by its first bytes under any name; bzip2 and xz as well, their suffixes left
    out of the name's format."""
    plain = tmp_path / "retail.csv"
    plain.write_text(ONLINE_RETAIL)
    expected, _ = run(plain, "online-retail")
    renamed = tmp_path / "retail-download.csv"
    renamed.write_bytes(gzip.compress(ONLINE_RETAIL.encode()))
    bzip2 = tmp_path / "retail.csv.bz2"
    bzip2.write_bytes(bz2.compress(ONLINE_RETAIL.encode()))
    xz = tmp_path / "retail.csv.xz"
    xz.write_bytes(lzma.compress(ONLINE_RETAIL.encode()))
    for path in (renamed, bzip2, xz):
        assert run(path, "online-retail")[0] == expected
    mapping = {"user_id": "CustomerID", "type": "Country", "ts": "InvoiceDate"}
    mapped, _ = run(bzip2, None, {**mapping, "item_id": "StockCode"}, type_map={"France": "view"})
    assert [event["user_id"] for _, event in mapped] == ["13748.0"]


@pytest.mark.parametrize(
    ("preset", "mapping", "message"),
    [
        (None, None, "needs --preset or --map"),
        (None, {"user": "a", "type": "b", "ts": "c"}, "not event fields: user"),
        (None, {"user_id": "a", "ts": "c"}, "`type`"),
        ("taobao", {"user_id": "a"}, "not both"),
    ],
)
def test_unusable_requests_are_refused(
    tmp_path: Path, preset: str | None, mapping: dict[str, str] | None, message: str
) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b,c\n")
    with pytest.raises(FileImportError, match=message):
        read_events(path, preset, mapping)


def test_a_format_the_preset_does_not_read_is_refused(tmp_path: Path) -> None:
    """It was ignored: the preset read the file in its own format whatever --format said."""
    path = tmp_path / "UserBehavior.log"  # a name that tells no format
    path.write_text("1,2268318,2520377,pv,1511544070\n")
    with pytest.raises(FileImportError) as refused:
        read_events(path, "taobao", options=CsvOptions(format="jsonl"))
    assert str(refused.value) == (
        "--preset taobao reads csv files: --format jsonl contradicts it (leave --format out)"
    )
    events, report = run(path, "taobao", format="csv")  # the preset's own: no contradiction
    assert report.produced == 1 and events[0][1]["user_id"] == "tb:1"


@pytest.mark.parametrize(
    ("preset", "options", "message"),
    [
        (
            "online-retail",
            {"type_map": {"Invoice": "view"}},
            "--preset online-retail makes every row a purchase: --type-map does not apply "
            "(leave it out)",
        ),
        (
            "online-retail",
            {"header": False},
            "--preset online-retail reads files with a header line: --no-header contradicts "
            "it (leave --no-header out)",
        ),
        (
            "taobao",
            {"header": True},
            "--preset taobao reads files with no header line: --header contradicts it "
            "(leave --header out)",
        ),
        (
            "taobao",
            {"ts_format": "%Y"},
            "--preset taobao reads its times as epoch seconds: --ts-format does not apply "
            "(leave it out)",
        ),
        (
            "amazon-reviews",
            {"header": False},
            "--preset amazon-reviews reads JSON lines, which have no cells and no header "
            "line: --no-header does not apply (leave it out)",
        ),
        (
            "amazon-reviews",
            {"type_map": {"5": "purchase"}},
            "--preset amazon-reviews makes every line a review: --type-map does not apply "
            "(leave it out)",
        ),
    ],
)
def test_an_option_the_preset_would_ignore_is_refused(
    tmp_path: Path, preset: str, options: dict[str, Any], message: str
) -> None:
    """They were ignored: the preset read the file its own way whatever they said."""
    path = tmp_path / "data.txt"
    path.write_text("")
    with pytest.raises(FileImportError) as refused:
        read_events(path, preset, options=CsvOptions(**options))
    assert str(refused.value) == message


@pytest.mark.parametrize(
    ("options", "flag"),
    [({"header": False}, "--no-header"), ({"header": True}, "--header"),
     ({"delimiter": ";"}, "--delimiter")],
)  # fmt: skip
@pytest.mark.parametrize("mapping", [None, {"user_id": "uid"}], ids=["as-is", "mapped"])
def test_a_csv_option_for_json_lines_without_a_preset_is_refused(
    tmp_path: Path, options: dict[str, Any], flag: str, mapping: dict[str, str] | None
) -> None:
    """They were silently ignored (a preset of JSON lines already refused them)."""
    path = tmp_path / "events.jsonl"
    path.write_text("")
    with pytest.raises(FileImportError) as refused:
        read_events(path, mapping=mapping, options=CsvOptions(**options))
    assert str(refused.value) == (
        f"{path} is read as JSON lines, which have no cells and no header line: {flag} "
        "does not apply (leave it out)"
    )
    with pytest.raises(FileImportError) as told:
        read_events(STDIN, mapping=mapping, options=CsvOptions(format="jsonl", **options))
    assert str(told.value).startswith("standard input is read as JSON lines, which have no")


def test_a_type_map_adds_to_the_taobao_presets_own(tmp_path: Path) -> None:
    """A value the preset does not know is mapped, one it knows renamed; the rest as ever."""
    path = tmp_path / "UserBehavior.csv"
    path.write_text(
        "1,2268318,2520377,pv,1511544070\n"
        "1,2268318,2520377,share,1511544071\n"
        "1,2268318,2520377,fav,1511544072\n"
    )
    events, report = run(path, "taobao", type_map={"share": "click", "fav": "add_to_cart"})
    assert_all_valid(events)
    assert [e["type"] for _, e in events] == ["view", "click", "add_to_cart"]
    assert report.skipped == {}
    _, same = run(path, "taobao", header=False)  # the preset's own layout: no contradiction
    assert same.produced == 2 and same.skipped == {"unknown_behavior": 1}


def test_constants_are_typed_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("u,t\nu1,1699990000\n")
    mapping = {"user_id": "u", "ts": "t"}
    events, _ = run(
        path, None, mapping, constants={"type": "add_to_cart", "item_id": "i", "quantity": "3"}
    )
    assert events[0][1]["quantity"] == 3
    with pytest.raises(FileImportError, match="quantity"):
        read_events(path, None, mapping, options=CsvOptions(constants={"quantity": "lots"}))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"type_map": {"pv": "view", "buy": "buy"}}, "--type-map buy=buy: not an event type; "),
        ({"type_map": {"pv": "views", "c": "cart"}}, "--type-map pv=views, --type-map c=cart: "),
        ({"constants": {"type": "logins"}}, "--set type=logins: not an event type; "),
    ],
)
def test_a_type_that_is_no_event_type_is_refused_before_any_row(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    """Each row it renamed was skipped as invalid, one by one, and the import went on."""
    path = tmp_path / "x.csv"
    path.write_text("u,k,t\nu1,pv,1699990000\n")
    with pytest.raises(FileImportError) as refused:
        mapping = {"user_id": "u", "type": "k", "ts": "t"}
        read_events(path, None, mapping, options=CsvOptions(**options))
    assert str(refused.value).startswith(message)
    assert str(refused.value).endswith(
        "the event types are view, click, search, add_to_cart, remove_from_cart, purchase, "
        "review, login"
    )


def test_parse_pairs_and_parse_ts() -> None:
    assert parse_pairs(["user_id=Customer ID", "ts = InvoiceDate"]) == {
        "user_id": "Customer ID",
        "ts": "InvoiceDate",
    }
    with pytest.raises(FileImportError, match="name=value"):
        parse_pairs(["user_id"])
    assert parse_ts("1511544070") == parse_ts(1511544070.0) == parse_ts("1511544070000")
    assert parse_ts("1511544070", unit="ms") == 1_511_544_070
    assert parse_ts("2017-11-24 17:21:10") == 1_511_544_070_000
    assert parse_ts("2017-11-24T18:21:10+01:00") == 1_511_544_070_000


def test_a_stray_quote_closed_by_a_later_cells_costs_its_row_only(tmp_path: Path) -> None:
    """The next quoted cell closed the stray quote: the rows between were taken into one
    cell of a record wide enough to pass, and lost without a word."""
    path = tmp_path / "or.csv"
    path.write_text(
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        '536365,85123A,HEART,6,12/1/2010 8:26,2.55,17850,"United Kingdom\n'
        "536365,71053,WHITE METAL LANTERN,6,12/1/2010 8:26,3.39,17850,United Kingdom\n"
        "536366,22632,HAND WARMER RED,6,12/1/2010 8:28,1.85,17850,United Kingdom\n"
        '536366,22633,"HAND WARMER, UNION JACK",6,12/1/2010 8:28,1.85,17850,United Kingdom\n',
        encoding="utf-8",
    )
    events, report = run(path, "online-retail")
    titles = [value["title"] for _, value in events]
    assert titles == ["WHITE METAL LANTERN", "HAND WARMER RED", "HAND WARMER, UNION JACK"]
    assert report.skipped == {"csv_error": 1} and report.rows == 4


def test_a_multi_line_row_is_reported_at_its_first_line(tmp_path: Path) -> None:
    path = tmp_path / "late.csv"
    path.write_text('user,type,ts,item\nu1,view,notatime,"i\n1\n"\nu2,view,1699990000,i2\n')
    events, report = run(path, None, {"user_id": "user", "type": "type", "ts": "ts",
                                      "item_id": "item"})  # fmt: skip
    assert len(events) == 1 and report.examples["bad_value:ts"].startswith("line 2: ")


def test_a_cell_with_line_breaks_is_one_cell_however_wide_its_row(tmp_path: Path) -> None:
    """A row narrower than its header (but with every column mapped) and a quote closed
    on a later line, beside a cell a strict reader refuses: one row each, as before,
    and a multi-line row keeps the event id it had (its last line's number)."""
    path = tmp_path / "notes.tsv"
    path.write_text(
        "user\titem\ttype\tts\ttitle\textra\n"
        "u1\ti1\tview\t1700000000\tKettle\tx\n"
        'u2\ti2\tview\t1700000001\t"Deliver to:\n12 High St, London"\n'
        'u3\t"i3"x\tview\t1700000002\t"two\nlines"\ty\n',
        encoding="utf-8",
    )
    mapping = {"user_id": "user", "item_id": "item", "type": "type", "ts": "ts", "title": "title"}
    events, report = run(path, None, mapping)
    assert [value["user_id"] for _, value in events] == ["u1", "u2", "u3"]
    assert report.rows == 3 and not report.skipped
    cells = ["u2", "i2", "view", "1700000001", "Deliver to:\n12 High St, London"]
    assert events[1][1]["event_id"] == natural_event_id("f", "4\x1f" + "\x1f".join(cells))


def test_a_quote_never_closed_past_the_cell_size_limit_gives_its_lines_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader refuses a cell past its limit: the lines the open quote took were
    dropped with it (a million rows in a large file)."""
    limit = csv.field_size_limit()
    monkeypatch.setattr(stream.file_import, "MAX_CSV_CELL", 1000)
    rows = [f"u{i},view,1699990000,i{i}" for i in range(100)]
    path = tmp_path / "open.csv"
    path.write_text("user,type,ts,item\n" + 'u0,view,1699990000,"i0\n' + "\n".join(rows) + "\n")
    try:
        csv.field_size_limit(1000)
        events, report = run(path, None, {"user_id": "user", "type": "type", "ts": "ts",
                                          "item_id": "item"})  # fmt: skip
    finally:
        csv.field_size_limit(limit)
    assert len(events) == 100 and report.skipped == {"csv_error": 1}


def test_a_json_line_too_large_for_any_worker_is_skipped_not_sent(tmp_path: Path) -> None:
    """A line over the producer's 1 MiB stopped the import, the valid lines after it
    unsent; one over the contract's 64 KiB would only be dead-lettered."""
    path = tmp_path / "big.jsonl"
    login = '{"event_id": "e%d", "user_id": "u", "type": "login", "ts": 1699990000000}'
    huge = (login % 9)[:-1] + ', "pad": "' + "x" * 1_100_000 + '"}'
    path.write_text("\n".join([login % 0, huge, login % 1, login % 2]) + "\n")
    events, report = run(path)
    assert [value["event_id"] for _, value in events] == ["e0", "e1", "e2"]
    assert report.skipped == {"too_large": 1}
    assert report.examples["too_large"].startswith("line 2: 1100")


@pytest.mark.parametrize("preset", [None, "amazon-reviews"])
def test_a_file_without_line_breaks_is_not_read_into_memory(
    tmp_path: Path, preset: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A JSON array (an export, not JSON lines) is one line as long as the file: it is
    skipped as too_large after reading at most the line limit, not the whole file."""
    monkeypatch.setattr(stream.file_import, "MAX_LINE_BYTES", 1 << 20, raising=False)
    path = tmp_path / "export.json"
    item = {"reviewerID": "A1", "asin": "B1", "unixReviewTime": 1699990000, "summary": "ok"}
    path.write_text("[" + ",".join([json.dumps(item)] * 200_000) + "]\n" + json.dumps(item))
    assert path.stat().st_size > 10 << 20
    tracemalloc.start()
    try:
        events, report = run(path, preset)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # the line limit a few times over; the file is 18 MB
    assert (report.rows, len(events), report.skipped) == (2, 1, {"too_large": 1})
    assert report.examples["too_large"] == f"line 1: over {1 << 20} bytes"

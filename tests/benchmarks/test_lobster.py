"""LOBSTER replay on the real sample (shared/data/lobster) and on small hand-made
files: the report is complete, bad rows are counted rather than fatal, unknown ids
fall back to the opening book, and the replay is deterministic."""

from __future__ import annotations

import zipfile
from itertools import islice
from pathlib import Path

import pytest

from benchmarks.lobster import (
    LobsterError,
    LobsterReplay,
    parse_book_row,
    parse_message,
    parse_time_ns,
)
from tools.replay import StreamReplay

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "lobster" / "LOBSTER_SampleFile_GOOG_2012-06-21_10.zip"
MESSAGE = "GOOG_2012-06-21_34200000_57600000_message_10.csv"
ORDERBOOK = "GOOG_2012-06-21_34200000_57600000_orderbook_10.csv"
ROWS = 5_000


def sample() -> Path:
    # The sample ships with the repository's shared data; its absence is a broken setup.
    assert SAMPLE.exists(), f"the LOBSTER sample is missing: {SAMPLE}"
    return SAMPLE


def test_parse_time_is_exact() -> None:
    assert parse_time_ns("34200.015105074") == 34_200_015_105_074
    assert parse_time_ns("34200.1") == 34_200_100_000_000
    assert parse_time_ns("34200") == 34_200_000_000_000
    for bad in ("", "3.4.5", "-1.0", "1e3", "12.x"):
        with pytest.raises(ValueError):
            parse_time_ns(bad)


def test_parse_rows() -> None:
    msg = parse_message("34200.5,4,15818974,4,5794000,1\n", 1_000)
    assert (msg.ts, msg.type, msg.order_id, msg.size, msg.price, msg.side) == (34_200_500_001_000, 4, 15818974, 4, 5794000, 1)
    assert parse_message("1.0,1,2,3,4,-1").side == 2
    assert parse_message("1.0,7,0,0,-1,-1").type == 7
    for bad, why in [("1.0,1,2,3,4", "6 fields"), ("1.0,9,2,3,4,1", "type 9"), ("1.0,1,2,0,4,1", "size 0"),
                     ("1.0,1,2,3,4,0", "direction 0"), ("1.0,1,x,3,4,1", "invalid literal")]:
        with pytest.raises(ValueError, match=why):
            parse_message(bad)
    asks, bids = parse_book_row("5802300,100,5794000,496,9999999999,0,-9999999999,0", levels=10)
    assert asks == [(5802300, 100)] and bids == [(5794000, 496)]


def test_sample_first_rows_from_the_zip() -> None:
    report = LobsterReplay(sample(), limit=ROWS).run()
    d = report.as_dict()
    assert d["rows"] == ROWS and d["malformed"] == 0
    assert sum(d["by_type"].values()) == ROWS
    handled = sum(d["applied"].values()) + sum(d["not_applied"].values()) + sum(d["ignored"].values())
    assert handled == ROWS
    assert d["seed_orders"] == 20  # ten levels a side
    assert d["rejected"] == 0
    assert d["check"]["rows"] == ROWS
    # The first minutes of the day track the orderbook file closely.
    assert d["check"]["ask_price"] > 0.95 and d["check"]["bid_price"] > 0.85
    assert d["trades"] > 100 and d["volume"] > 0
    assert len(d["state_hash"]) == 32
    assert LobsterReplay(sample(), limit=ROWS).run().state_hash == report.state_hash


def test_unzipped_csvs_give_the_same_replay(tmp_path: Path) -> None:
    with zipfile.ZipFile(sample()) as z:
        for name in (MESSAGE, ORDERBOOK):
            with z.open(name) as src:
                (tmp_path / name).write_bytes(b"".join(islice(src, ROWS)))
    from_zip = LobsterReplay(sample(), limit=ROWS).run()
    from_csv = LobsterReplay(tmp_path / MESSAGE).run()
    from_dir = LobsterReplay(tmp_path).run()
    assert from_csv.state_hash == from_dir.state_hash == from_zip.state_hash
    assert from_csv.as_dict()["check"] == from_zip.as_dict()["check"]


def test_saved_stream_replays_to_the_same_state(tmp_path: Path) -> None:
    saved = tmp_path / "goog.etx"
    report = LobsterReplay(sample(), limit=2_000, save=saved).run()
    summary = StreamReplay(str(saved), "msgpack").run()
    assert summary["commands_applied"] == report.commands
    assert summary["state_hash"] == report.state_hash


def write_pair(folder: Path, messages: list[str], books: list[str]) -> Path:
    (folder / "TEST_2020-01-02_0_1_message_1.csv").write_text("".join(m + "\n" for m in messages))
    (folder / "TEST_2020-01-02_0_1_orderbook_1.csv").write_text("".join(b + "\n" for b in books))
    return folder / "TEST_2020-01-02_0_1_message_1.csv"


def test_hand_made_file(tmp_path: Path) -> None:
    # Opening book before row 1: ask 10.01 x 300, bid 10.00 x 200 (row 1 adds 100 to the bid).
    messages = [
        "36000.0,1,1,100,100000,1",  # new bid at the opening bid price
        "36000.1,3,77,50,100000,1",  # delete of an unknown order: comes off the opening bid
        "36000.2,2,1,40,100000,1",  # partial cancel: order 1 down to 60
        "36000.3,4,78,100,100100,-1",  # execution of an unknown ask: against the opening ask
        "36000.4,3,79,10,99000,1",  # unknown, no opening quantity there: not applicable
        "36000.5,5,0,10,100050,1",  # hidden: ignored
        "garbage",  # malformed
        "36000.7,1,2,10,100055,-1",  # off the cent tick
        "36000.8,3,1,60,100000,1",  # delete order 1
    ]
    books = [
        "100100,300,100000,300",
        "100100,300,100000,250",
        "100100,300,100000,210",
        "100100,200,100000,210",
        "100100,200,100000,210",
        "100100,200,100000,210",
        "100100,200,100000,210",
        "100100,200,100000,210",
        "100100,200,100000,150",
    ]
    report = LobsterReplay(write_pair(tmp_path, messages, books)).run()
    d = report.as_dict()
    assert d["symbol"] == "TEST" and d["seed_orders"] == 2
    assert d["applied"] == {
        "new order": 1, "delete (opening quantity)": 1, "partial cancel": 1, "execution": 1, "delete": 1,
    }
    assert d["not_applied"] == {
        "delete: unknown order and no opening quantity at its price": 1,
        "new order: price not on the cent tick": 1,
    }
    assert d["ignored"] == {"hidden execution": 1}
    assert d["malformed"] == 1 and "message line 7" in d["malformed_examples"][0]
    assert d["check"]["rows"] == 9 and d["check"]["prices_and_sizes"] == 1.0
    assert d["trades"] == 1 and d["volume"] == 100


def test_a_resting_order_removes_stale_crossing_orders(tmp_path: Path) -> None:
    messages = [
        "36000.0,1,5,300,100100,-1",  # an ask
        "36000.1,1,1,100,100200,1",  # a bid that rests above it: the ask was deleted unseen
    ]
    books = ["100100,300,100000,200", "9999999999,0,100200,100"]
    d = LobsterReplay(write_pair(tmp_path, messages, books)).run().as_dict()
    assert d["drift"] == {"new order: stale order removed first": 1}
    assert d["trades"] == 0 and d["cancelled"] == 1
    assert d["check"]["rows"] == 2 and d["check"]["prices_and_sizes"] == 1.0


def test_unreadable_sources(tmp_path: Path) -> None:
    with pytest.raises(LobsterError, match="no such file"):
        LobsterReplay(tmp_path / "missing.zip")
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("readme.txt", "nothing here")
    with pytest.raises(LobsterError, match="no LOBSTER message file"):
        LobsterReplay(empty)


def test_no_orderbook_file_still_replays(tmp_path: Path) -> None:
    path = tmp_path / "TEST_2020-01-02_0_1_message_1.csv"
    path.write_text("36000.0,1,1,100,100000,1\n36000.1,3,1,100,100000,1\n")
    d = LobsterReplay(path).run().as_dict()
    assert d["applied"] == {"new order": 1, "delete": 1}
    assert d["check"]["rows"] == 0 and "no orderbook file" in d["check"]["note"]

"""``etx trader``: a dealer's terminal, driven with Textual's pilot against a real
``etx serve`` (a subprocess, plain TCP, SQLite registry): logon, enter, amend, cancel,
hit an order among the best five, see the fill and the balances change, survive a
dropped connection (the report made while away is replayed and shown as such)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.messages import Side
from gateway.client import Client
from gateway.protocol import CodMode
from terminal.trader import TraderApp, parse_price
from tests.integration.exchange import SECRET, Exchange, run

SYMBOL = "CEA24"
CASH = 100_000_000  # fen
ALLOWANCES = 10_000  # t


def cells(app: TraderApp, selector: str) -> list[list[str]]:
    from textual.widgets import DataTable

    table = app.query_one(selector, DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


async def until(pilot: Any, check: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        got = check()
        if got:
            return got
        await pilot.pause(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def command(pilot: Any, app: TraderApp, text: str) -> None:
    """Type a command line as a dealer would, and press Enter."""
    from textual.widgets import Input

    entry = app.query_one("#command", Input)
    entry.focus()
    entry.value = ""
    for ch in text:
        await pilot.press("space" if ch == " " else "full_stop" if ch == "." else ch)
    assert entry.value == text, entry.value
    await pilot.press("enter")


def said(app: TraderApp, start: str) -> str | None:
    return next((line for line in reversed(app.lines) if line.startswith(start)), None)


def test_prices_are_read_exactly() -> None:
    assert parse_price("100.25") == 10_025 and parse_price("99") == 9_900
    for bad in ("100.255", "-1", "0", "abc", "nan", "inf"):
        try:
            parse_price(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was taken as a price")


def test_a_dealer_trades_amends_cancels_hits_and_survives_a_dropped_connection(tmp_path: Path) -> None:
    async def scenario() -> None:
        ex = Exchange(tmp_path)
        await ex.start()
        try:
            await ex.fund(("M1", "M2"), CASH, ALLOWANCES)
            other = Client("127.0.0.1", ex.port, "M2", "tM2", SECRET, cod=CodMode.OFF)
            await other.connect()
            dealer = Client("127.0.0.1", ex.port, "M1", "tM1", SECRET, cod=CodMode.OFF)
            await dealer.connect()
            app = TraderApp(dealer, SYMBOL, [SYMBOL])
            async with app.run_test(size=(180, 50)) as pilot:
                await until(pilot, lambda: any(r[0] == "CNY" for r in cells(app, "#balances")), "the balances")
                assert cells(app, "#balances") == [["CNY", "1,000,000.00", "0.00", "", "1,000,000.00"],
                                                   [SYMBOL, "10,000 t", "0 t", "0 t", "10,000 t"]]

                # Enter: the order shows once the exchange accepted it.
                await command(pilot, app, "buy 100 100.00")
                accepted = await until(pilot, lambda: said(app, "accepted: order"), "the acceptance")
                order_id = accepted.split()[2]
                await until(pilot, lambda: cells(app, "#orders"), "the open order")
                assert cells(app, "#orders")[0][:7] == [order_id, cells(app, "#orders")[0][1], SYMBOL, "buy", "100.00",
                                                        "100", "0"]
                held = await until(pilot, lambda: next((r[2] for r in cells(app, "#balances")
                                                        if r[0] == "CNY" and r[2] != "0.00"), None), "the cash held")
                assert held == "10,003.50"  # 100 t at 100.00 plus fees (0.03 % + 0.005 %)

                # Amend: the key fills the command line with the selected order; Enter sends it.
                app.query_one("#orders").focus()
                await pilot.press("a")
                entry = app.query_one("#command")
                assert entry.value == f"amend {order_id} 100.00 100"  # type: ignore[attr-defined]
                entry.value = f"amend {order_id} 100.05 80"  # type: ignore[attr-defined]
                await pilot.press("enter")
                await until(pilot, lambda: said(app, f"amended: order {order_id}"), "the amendment")
                await until(pilot, lambda: cells(app, "#orders") and cells(app, "#orders")[0][4:6] == ["100.05", "80"],
                            "the amended order")

                # Another member sells into it: the fill, its fee and the balances change.
                other.new_order(SYMBOL, Side.SELL, 30, 10_005)
                await until(pilot, lambda: said(app, "fill: bought 30 t"), "the fill")
                await until(pilot, lambda: cells(app, "#fills"), "the fills table")
                await until(pilot, lambda: cells(app, "#market"), "the instrument's last trades")
                assert cells(app, "#market")[0][1:] == ["100.05", "30", "sell"]  # anyone's trade, no member
                fill = cells(app, "#fills")[0]
                assert fill[1:7] == [SYMBOL, "buy", "100.05", "30", "maker", "1.05"], fill  # 3,001.50 x 0.035 %
                await until(pilot, lambda: [r for r in cells(app, "#balances") if r[0] == SYMBOL] == [
                    [SYMBOL, "10,030 t", "0 t", "30 t", "10,000 t"]], "the allowances bought (sellable tomorrow)")

                # Hit an order among the best five: the other member's offer, chosen in the book's orders.
                other.new_order(SYMBOL, Side.SELL, 20, 10_050)
                target = await until(pilot, lambda: next((r for r in cells(app, "#top") if r[2] == "100.50"), None),
                                     "the offer among the best five")
                assert target[4] == "·"  # another member's order: anonymous
                top = app.query_one("#top")
                top.focus()
                top.move_cursor(row=[r[0] for r in cells(app, "#top")].index(target[0]))  # type: ignore[attr-defined]
                await pilot.press("h")
                assert entry.value == f"hit {target[0]} 20"  # type: ignore[attr-defined]
                await pilot.press("enter")
                await until(pilot, lambda: said(app, "fill: bought 20 t"), "the hit's fill")
                assert (said(app, "accepted: order") or "").endswith(f"hit 20 t of order {target[0]}"), app.lines[-4:]

                # Cancel the rest of the first order.
                app.query_one("#orders").focus()
                await pilot.press("x")
                assert entry.value == f"cancel {order_id}"  # type: ignore[attr-defined]
                await pilot.press("enter")
                await until(pilot, lambda: said(app, f"cancelled: order {order_id}, 50 t"), "the cancel")
                await until(pilot, lambda: not cells(app, "#orders"), "no open order")

                # A mistake is explained and nothing is sent.
                seq = dealer.last_seq
                await command(pilot, app, "buy ten 100")
                assert said(app, "not sent: not a quantity")
                await command(pilot, app, "sell 5 100.001")
                assert said(app, "not sent: not a price")
                # An order the exchange rejects says why.
                await command(pilot, app, "buy 5 200.00")
                await until(pilot, lambda: said(app, "rejected: buy 5 CEA24 200.00"), "the rejection")
                assert dealer.last_seq == seq + 1

                # A dropped connection: reconnected with replay; what happened meanwhile is shown.
                await command(pilot, app, "buy 10 99.00")
                await until(pilot, lambda: any(r[4] == "99.00" for r in cells(app, "#orders")), "the resting bid")
                gate = asyncio.Event()
                reconnect = dealer.reconnect

                async def held_back(timeout: float = 10.0) -> Any:
                    await gate.wait()
                    return await reconnect(timeout)

                dealer.reconnect = held_back  # type: ignore[method-assign]
                dealer.abort()
                await until(pilot, lambda: said(app, "connection lost"), "the lost connection")
                assert "disconnected" in str(app.query_one("#status").render())
                other.new_order(SYMBOL, Side.SELL, 10, 9_900)  # trades with the bid while the dealer is away
                await other.query_instruments()
                gate.set()
                await until(pilot, lambda: said(app, "reconnected"), "the reconnection")
                assert said(app, "reconnected") == "reconnected: 1 report while away", app.lines[-5:]
                await until(pilot, lambda: said(app, "fill (while away): bought 10 t"), "the replayed fill")
                await until(pilot, lambda: "connected" in str(app.query_one("#status").render()), "the status")
                await until(pilot, lambda: len(cells(app, "#fills")) == 3, "three fills")
                await pilot.press("q")
            await other.close()
            await dealer.close()
        finally:
            assert ex.stop() == 0
    run(scenario())


def test_mistakes_at_start_end_in_one_line(tmp_path: Path) -> None:
    """No exchange, a credentials file others can read, a wrong secret, an unknown
    instrument: one line saying what to fix, exit 2, no traceback."""
    import os
    import subprocess
    import sys

    from gateway.credentials import Credentials, write_file
    from tests.integration.exchange import ROOT

    def trader(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tools.cli", "trader", *argv], cwd=ROOT, capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)

    good = write_file(tmp_path / "good.cred", Credentials("M1", "tM1", SECRET))
    wrong = write_file(tmp_path / "wrong.cred", Credentials("M1", "tM1", "not-the-secret"))
    loose = write_file(tmp_path / "loose.cred", Credentials("M1", "tM1", SECRET))
    os.chmod(loose, 0o644)
    done = trader("--data", str(tmp_path / "nothing"), "--credentials", str(good))
    assert done.returncode == 2 and done.stderr.startswith("etx trader: no exchange is running on"), done.stderr

    async def scenario() -> list[subprocess.CompletedProcess[str]]:
        ex = Exchange(tmp_path)
        await ex.start()
        try:
            runs = []
            for argv in ((str(loose),), (str(wrong),), (str(good), "NOPE")):
                runs.append(await asyncio.to_thread(trader, "--data", str(ex.data), "--credentials", *argv))
            return runs
        finally:
            ex.stop()

    loose_run, wrong_run, unknown_run = run(scenario())
    assert "can be read by others (mode 644)" in loose_run.stderr, loose_run.stderr
    assert "refused the logon of M1/tM1" in wrong_run.stderr, wrong_run.stderr
    assert "no instrument 'NOPE' (the exchange lists CEA24)" in unknown_run.stderr, unknown_run.stderr
    for r in (loose_run, wrong_run, unknown_run):
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr


def test_a_dealer_takes_a_block_offer_and_bids_in_an_auction(tmp_path: Path) -> None:
    """Block agreement trading and auctions from the dealer's terminal: the offers and
    auctions it may take part in are listed, `accept` and `bid` are answered by the
    exchange, and the trade, the fill and the result show in the log."""
    import time

    from engine.messages import AuctionAnnounce

    async def scenario() -> None:
        ex = Exchange(tmp_path)
        await ex.start()
        try:
            await ex.fund(("M1", "M2", "M3"), 30_000_000_000, 300_000)
            seller = Client("127.0.0.1", ex.port, "M2", "tM2", SECRET, cod=CodMode.OFF)
            ops = Client("127.0.0.1", ex.port, "EXCH", "ops", SECRET, cod=CodMode.OFF)
            dealer = Client("127.0.0.1", ex.port, "M1", "tM1", SECRET, cod=CodMode.OFF)
            for c in (seller, ops, dealer):
                await c.connect()
            seller.block_offer(SYMBOL, Side.SELL, 150_000, 10_200, counterparty="M1", partial=True)
            app = TraderApp(dealer, SYMBOL, [SYMBOL])
            async with app.run_test(size=(180, 50)) as pilot:
                row = await until(pilot, lambda: next((r for r in cells(app, "#deals") if r[0] == "offer"), None),
                                  "the block offer named to M1")
                assert row[2:] == ["sell", "150,000", "102.00", "parts, named"], row
                await command(pilot, app, f"accept {row[1]} 100000")
                line = await until(pilot, lambda: said(app, "block trade: bought 100,000 t"), "the block trade")
                assert "with M2" in line and "50,000 t left" in line, line

                # A window long enough for a loaded machine to show the auction and take
                # the typed bid within it (a 3 s window closed first once in CI).
                now = time.time_ns()
                ops.send(AuctionAnnounce("M3", SYMBOL, 120_000, 9_600, now, now + 10_000_000_000))
                row = await until(pilot, lambda: next((r for r in cells(app, "#deals") if r[0].startswith("auction")),
                                                      None), "the auction")
                assert row[0] == "auction of M3" and row[4] == "96.00-110.00", row
                await command(pilot, app, f"bid {row[1]} 120000 101.00")
                await until(pilot, lambda: said(app, "bid 1 placed"), "the bid")
                await command(pilot, app, "bid 99 10 100.00")
                await until(pilot, lambda: said(app, "rejected: bid 10 t at 100.00 in auction 99"), "the rejection")
                await until(pilot, lambda: said(app, "auction 1 fill: bought 120,000 t"), "the fill", timeout=40)
                result = await until(pilot, lambda: said(app, "auction 1 result"), "the result")
                assert "120,000 of 120,000 t sold at 101.00 to 1 of 1 bids" in result, result
                await command(pilot, app, "offer sell 99 100.00")
                await until(pilot, lambda: said(app, "rejected: block offer sell 99"), "the small block's rejection")
                await pilot.press("q")
            for c in (seller, ops, dealer):
                await c.close()
        finally:
            assert ex.stop() == 0
    run(scenario())

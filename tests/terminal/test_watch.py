"""``etx watch``: the live ladder, trades and statistics in the terminal, driven with
Textual's pilot against a real server over TCP."""

from __future__ import annotations

import asyncio

from engine import Side
from terminal.watch import WatchApp
from tests.gateway.harness import SYMBOL, Harness, run


def cells(table: object) -> list[list[str]]:
    from textual.widgets import DataTable

    assert isinstance(table, DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


@run
async def test_the_ladder_trades_and_statistics_follow_the_market() -> None:
    async with Harness() as h:
        op = await h.client("EXCH", "op")
        m1, m2 = await h.client("M1", "t1"), await h.client("M2", "t2")
        app = WatchApp(op, SYMBOL)
        async with app.run_test(size=(140, 40)) as pilot:
            for i in range(3):
                m1.new_order(SYMBOL, Side.BUY, 10 + i, 9_990 - 10 * i)
                m2.new_order(SYMBOL, Side.SELL, 20 + i, 10_010 + 10 * i)
            await m1.query_instruments()
            await m2.query_instruments()
            for _ in range(100):
                await pilot.pause(0.05)
                if app.view is not None and len(app.view.bids) == 3 and len(app.view.asks) == 3:
                    break
            rows = cells(app.query_one("#ladder"))
            assert rows[2] == ["", "", "100.10", "20", "1"] and rows[3] == ["1", "10", "99.90", "", ""], rows
            m1.new_order(SYMBOL, Side.BUY, 5, 10_010)
            await m1.query_instruments()
            for _ in range(100):
                await pilot.pause(0.05)
                if app.trades:
                    break
            trades = cells(app.query_one("#trades"))
            assert trades[0][1:] == ["100.10", "5", "M1", "M2", "buy"], trades
            stats = str(app.query_one("#stats").render())
            assert "last 100.10" in stats and "volume 5 t" in stats, stats
            status = str(app.query_one("#status").render())
            assert "continuous" in status and "band 90.00 – 110.00" in status, status
            await pilot.press("q")
        await asyncio.sleep(0)

"""``etx watch INSTRUMENT``: one instrument live in the terminal (Textual).

The ladder (best 10 levels a side), the last trades with their members, the day's
statistics and the trading status, refreshed in place as the exchange's operator feed
(``gateway.watch``) pushes them. It runs as an exchange staff user (an operator, or a
read-only user of the exchange's own member), whose secret comes from a credentials
file only its owner can read or a prompt; it watches, it never acts. ``q`` quits.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import deque
from datetime import UTC, datetime
from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Footer, Header, Static

from engine.messages import Phase, Side
from gateway.client import CannotLogOn, Client, QueryError, connect_staff
from gateway.credentials import CredentialsError, obtain
from gateway.datadir import exchange_address
from gateway.protocol import InstrumentView, TradesView

DEPTH = 10
TRADES_SHOWN = 20


def yuan(fen: int) -> str:
    return f"{fen // 100:,}.{fen % 100:02d}" if fen else "—"


class WatchApp(App[int]):
    """The screen; ``client`` is a logged-on staff session (the caller connects it)."""

    TITLE = "etx watch"
    CSS = """
    #status { height: 2; padding: 0 1; }
    #stats { height: 2; padding: 0 1; }
    #ladder { width: 50; }
    #trades { width: 1fr; }
    """
    BINDINGS = [("q", "quit", "Quit")]

    def __init__(self, client: Client, instrument: str) -> None:
        super().__init__()
        self.client = client
        self.instrument = instrument
        self.view: InstrumentView | None = None
        self.trades: deque[Any] = deque(maxlen=TRADES_SHOWN)
        self.ended = ""

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical():
            yield Static(f"{self.instrument}: waiting for the exchange", id="status")
            yield Static("", id="stats")
            with Horizontal():
                yield DataTable(id="ladder", show_cursor=False)
                yield DataTable(id="trades", show_cursor=False)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"{self.client.member}/{self.client.user} at {self.client.host}:{self.client.port}"
        ladder = self.query_one("#ladder", DataTable)
        ladder.add_columns("Orders", "Bid qty", "Price", "Ask qty", "Orders")
        trades = self.query_one("#trades", DataTable)
        trades.add_columns("Time", "Price", "Qty", "Buyer", "Seller", "Aggressor")
        self.client.watch(DEPTH, 250)
        self.run_worker(self.follow(), exclusive=True)

    async def follow(self) -> None:
        async for msg in self.client.reports():
            t = type(msg)
            if t is InstrumentView and msg.instrument == self.instrument:
                self.view = msg
                self.render_view()
            elif t is TradesView:
                mine = [tr for tr in msg.trades if tr.instrument == self.instrument]
                if mine:
                    self.trades.extend(mine)
                    self.render_trades()
        self.ended = "the exchange ended the session"
        self.query_one("#status", Static).update(Text(f"{self.instrument}: {self.ended}", style="bold red"))

    def render_view(self) -> None:
        v = self.view
        assert v is not None
        phase = "HALTED" + (f": {v.halt_text}" if v.halt_text else "") if v.halted else Phase(v.phase).name.lower()
        self.query_one("#status", Static).update(Text.assemble(
            (f"{v.instrument} ", "bold"), (phase, "bold red" if v.halted else "green"),
            f"  reference {yuan(v.ref_price)}  band {yuan(v.band_low)} – {yuan(v.band_high)}  seq {v.seq}"))
        self.query_one("#stats", Static).update(
            f"open {yuan(v.open)}  high {yuan(v.high)}  low {yuan(v.low)}  last {yuan(v.last)}  VWAP {yuan(v.vwap)}"
            f"  volume {v.volume:,} t  value {yuan(v.value)}  {v.trades} trades")
        ladder = self.query_one("#ladder", DataTable)
        ladder.clear()
        for level in reversed(v.asks):
            ladder.add_row("", "", Text(yuan(level.price), style="bold red"), f"{level.qty:,}", str(level.orders))
        for level in v.bids:
            ladder.add_row(str(level.orders), f"{level.qty:,}", Text(yuan(level.price), style="bold green"), "", "")

    def render_trades(self) -> None:
        table = self.query_one("#trades", DataTable)
        table.clear()
        for tr in reversed(self.trades):
            when = datetime.fromtimestamp(tr.ts / 1e9, UTC).strftime("%H:%M:%S")
            table.add_row(when, yuan(tr.price), f"{tr.qty:,}", tr.buyer, tr.seller,
                          "buy" if tr.aggressor == Side.BUY else "sell")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("instrument")
    parser.add_argument("--data", default="etx-data", help="the exchange's data folder: finds the running exchange")
    parser.add_argument("--exchange", default="", help="HOST:PORT of the gateway (instead of --data)")
    parser.add_argument("--credentials", default="", help="a file (chmod 600) with member, user and secret")
    parser.add_argument("--as", dest="user", default="", help="the staff user: USER or MEMBER/USER (a prompt asks the secret)")
    parser.add_argument("--cafile", default="", help="the CA (or the exchange's own certificate) of a TLS gateway")


async def connect(args: argparse.Namespace) -> Client:
    host, port = exchange_address(args.data, args.exchange)
    creds = obtain(args.credentials, args.user, "EXCH")
    try:
        client = await connect_staff(host, port, creds.member, creds.user, creds.secret, args.cafile)
    except CannotLogOn as e:
        raise ValueError(str(e)) from None
    try:
        instruments = await client.query_instruments(args.instrument)
        await client.query_sessions()  # exchange staff only
    except QueryError as e:
        await client.close()
        raise ValueError(e.text) from None
    if not instruments.instruments:
        await client.close()
        raise ValueError(f"no instrument {args.instrument!r}")
    return client


def run(args: argparse.Namespace) -> int:
    async def main() -> int:
        client = await connect(args)
        try:
            await WatchApp(client, args.instrument).run_async()
        finally:
            await client.close()
        return 0

    try:
        return asyncio.run(main())
    except (ValueError, CredentialsError) as e:
        print(f"etx watch: {e}", file=sys.stderr)
        return 2

"""The member client: an asyncio library for trading members and load tests.

Usage::

    client = Client("127.0.0.1", 7400, member="M001", user="alice", secret="...")
    ack = await client.connect()                  # logon (and replay from last_seq)
    coid = client.new_order("CEA24", Side.BUY, qty=100, price=10_000)
    msg = await client.next()                     # Report(seq_out, Accepted(...)) ...
    book = await client.query_book("CEA24")       # BookReply
    await client.reconnect()                      # after a drop: replays what was missed
    await client.close()

Contract:
- Sending never waits for the exchange: ``new_order`` and friends queue a frame and
  return; replies arrive in order through ``next()`` (Reports, Resents, Notices,
  SessionRejects, SessionClosed) or, for queries, as the awaited result.
- ``last_seq`` is the highest ``Report.seq_out`` received; ``connect``/``reconnect``
  send it in the logon so the exchange replays only what is missing. Any report whose
  seq_out is not ``last_seq + 1`` is recorded in ``anomalies`` (the exchange promises
  none: no gap, no duplicate). A report with seq_out 0 is a refusal by the gateway,
  outside the sequence: it is delivered and leaves ``last_seq`` alone.
- Heartbeats are sent when the client has sent nothing for the agreed interval.
- Prices are integers in fen, quantities in tonnes (see ``docs/protocol.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import ssl as ssl_module
from collections.abc import AsyncIterator, Iterable
from typing import Any

from engine.messages import (
    Amend,
    AuctionBid,
    AuctionBidAmend,
    AuctionBidWithdraw,
    BlockAccept,
    BlockOffer,
    BlockWithdraw,
    Cancel,
    CancelReason,
    HitOrder,
    MassCancel,
    NewOrder,
    OrdType,
    Rejected,
    Stp,
    TimeInForce,
)
from gateway.framing import MAX_OUTBOUND_FRAME, FrameSplitter, FrameWriter
from gateway.protocol import (
    PROTOCOL_VERSION,
    AuctionsReply,
    BalancesReply,
    BlockOffersReply,
    BookReply,
    CodMode,
    ComplianceReply,
    Disconnect,
    Disconnected,
    Heartbeat,
    InstrumentsReply,
    Logon,
    LogonAck,
    LogonReject,
    Logout,
    MarketTradesReply,
    OrdersReply,
    OrderStatus,
    OrderStatusReply,
    QueryAuctions,
    QueryBalances,
    QueryBlockOffers,
    QueryBook,
    QueryCompliance,
    QueryInstruments,
    QueryMarketTrades,
    QueryOrders,
    QueryOrderStatus,
    QueryRejected,
    QuerySessions,
    QueryTrades,
    ReplayDone,
    Report,
    ServerHeartbeat,
    SessionsReply,
    TradeFill,
    TradesReply,
    Unlock,
    Unlocked,
    Watch,
    outbound_decoder,
)
from settlement.messages import RegistryRejected

_REJECTIONS = (Rejected, RegistryRejected)
_REPLIES = (OrdersReply, BalancesReply, BookReply, InstrumentsReply, QueryRejected, Unlocked, Disconnected, SessionsReply,
            OrderStatusReply, TradesReply, MarketTradesReply, BlockOffersReply, AuctionsReply, ComplianceReply)
READ_CHUNK = 256 * 1024
INBOX_MAX = 1_000_000  # messages kept for next(); beyond it the client stops reading


class LogonError(Exception):
    def __init__(self, reason: int, text: str) -> None:
        super().__init__(f"logon rejected ({reason}): {text}")
        self.reason = reason
        self.text = text


class QueryError(Exception):
    def __init__(self, reason: int, text: str) -> None:
        super().__init__(f"query rejected ({reason}): {text}")
        self.reason = reason
        self.text = text


class Client:
    """See the module docstring."""

    def __init__(self, host: str, port: int, member: str, user: str, secret: str, *, last_seq: int = 0,
                 cod: int = CodMode.DEFAULT, heartbeat_ms: int = 0, ssl: ssl_module.SSLContext | None = None,
                 coid_prefix: str | None = None, source: str = "",
                 alternates: list[tuple[str, int]] | None = None) -> None:
        """``source``: the local address to connect from (a machine with several);
        ``alternates``: the other addresses of the exchange (a standby's), tried in turn
        when a connection cannot be made; the one that answers is kept."""
        self.host, self.port = host, port
        self.alternates = list(alternates or [])
        self.source = source
        self.member, self.user, self._secret = member, user, secret
        self.cod = cod
        self.heartbeat_ms = heartbeat_ms
        self.ssl = ssl
        self.last_seq = last_seq
        self.anomalies: list[str] = []
        self.ack: LogonAck | None = None
        self.closed_by_server: Any = None  # the SessionClosed, if the exchange ended the session
        self._prefix = coid_prefix if coid_prefix is not None else os.urandom(4).hex() + "-"
        self._coids = itertools.count(1)
        self._req_ids = itertools.count(1)
        self._writer_frames = FrameWriter()
        self._decode = outbound_decoder().decode
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._sent_at = 0.0
        self._out = bytearray()
        self._collectors: list[list[Any]] = []  # rejections seen while a command() waits
        # Set by the exchange's ReplayDone after each logon: every report up to
        # ``replayed_to`` has arrived, what follows is live.
        self.replay_done = asyncio.Event()
        self.replayed_to = -1
        self.last_rx = 0.0  # the event loop's time of the last bytes received (heartbeats too)

    # --- connection ------------------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> LogonAck:
        """Open the connection and log on; raises LogonError when refused."""
        reader, self._writer = await self._open(timeout)
        self._reader = reader
        self.closed_by_server = None
        self.replay_done.clear()
        self.replayed_to = -1
        self._forget_end_marks()
        self._send_now(Logon(PROTOCOL_VERSION, self.member, self.user, self._secret, self.last_seq, self.cod,
                             self.heartbeat_ms))
        splitter = FrameSplitter(MAX_OUTBOUND_FRAME)
        first: Any = None
        rest: list[Any] = []
        while first is None:
            data = await asyncio.wait_for(reader.read(READ_CHUNK), timeout)
            if not data:
                raise LogonError(0, "connection closed before the logon answer")
            msgs = [self._decode(f) for f in splitter.split(data)]
            if msgs:
                first, rest = msgs[0], msgs[1:]
        if isinstance(first, LogonReject):
            await self._drop()
            raise LogonError(first.reason, first.text)
        if not isinstance(first, LogonAck):
            await self._drop()
            raise LogonError(0, f"expected LogonAck, got {type(first).__name__}: {first!r}")
        self.ack = first
        for msg in rest:
            self._dispatch(msg)
        loop = asyncio.get_running_loop()
        self._sent_at = self.last_rx = loop.time()
        self._tasks = [asyncio.create_task(self._read_loop(splitter)), asyncio.create_task(self._heartbeat_loop())]
        return first

    async def _open(self, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the exchange's address, else to each alternate in turn."""
        candidates = [(self.host, self.port), *((h, p) for h, p in self.alternates if (h, p) != (self.host, self.port))]
        error: BaseException | None = None
        for host, port in candidates:
            try:
                opened = await asyncio.wait_for(
                    asyncio.open_connection(host, port, ssl=self.ssl, limit=READ_CHUNK,
                                            local_addr=(self.source, 0) if self.source else None), timeout)
            except (OSError, TimeoutError) as e:
                error = e
                continue
            if (host, port) != (self.host, self.port):
                self.alternates = [a for a in candidates if a != (host, port)]
                self.host, self.port = host, port
            return opened
        assert error is not None
        raise error

    def _forget_end_marks(self) -> None:
        """Drop the end-of-stream marks of earlier connections; keep their messages."""
        kept = []
        while not self._inbox.empty():
            msg = self._inbox.get_nowait()
            if msg is not None:
                kept.append(msg)
        for msg in kept:
            self._inbox.put_nowait(msg)

    async def reconnect(self, timeout: float = 10.0) -> LogonAck:
        """Drop the connection (if any) and log on again from ``last_seq``."""
        await self._drop()
        return await self.connect(timeout)

    async def close(self) -> None:
        """Log out and close."""
        if self._writer is not None and not self._writer.is_closing():
            with contextlib.suppress(ConnectionError):
                self._send_now(Logout())
                await self._writer.drain()
        await self._drop()

    async def _drop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError, ssl_module.SSLError):
                await self._writer.wait_closed()
        self._writer = self._reader = None
        for fut in self._replies.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection closed"))
        self._replies.clear()

    def abort(self) -> None:
        """Cut the connection without a logout (as a crash or a network failure would)."""
        if self._writer is not None:
            self._writer.transport.abort()

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    # --- sending ---------------------------------------------------------------------

    def next_coid(self) -> str:
        return f"{self._prefix}{next(self._coids)}"

    def send(self, msg: Any) -> None:
        """Queue one message; it is written at the end of the current loop step with
        whatever else was queued (one write)."""
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._writer_frames.append(self._out, msg)

    def send_many(self, msgs: Iterable[Any]) -> None:
        for msg in msgs:
            self.send(msg)

    def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (tests of malformed input)."""
        assert self._writer is not None
        self._writer.write(data)
        self._sent_at = asyncio.get_running_loop().time()

    def _flush(self) -> None:
        if self._out and self._writer is not None and not self._writer.is_closing():
            self._writer.write(self._out)
            self._sent_at = asyncio.get_running_loop().time()
        self._out = bytearray()

    def _send_now(self, msg: Any) -> None:
        assert self._writer is not None
        self._writer.write(self._writer_frames.frame(msg))

    async def drain(self) -> None:
        self._flush()
        if self._writer is not None:
            await self._writer.drain()

    def new_order(self, instrument: str, side: int, qty: int, price: int = 0, *, coid: str | None = None,
                  ord_type: int = OrdType.LIMIT, tif: int = TimeInForce.DAY, stp: int = Stp.DEFAULT) -> str:
        coid = coid or self.next_coid()
        self.send(NewOrder(self.member, coid, instrument, int(side), qty, price, int(ord_type), int(tif), int(stp)))
        return coid

    def hit(self, instrument: str, target_order_id: int, qty: int, *, coid: str | None = None) -> str:
        coid = coid or self.next_coid()
        self.send(HitOrder(self.member, coid, instrument, target_order_id, qty))
        return coid

    def amend(self, order_id: int, price: int, qty: int) -> None:
        self.send(Amend(self.member, order_id, price, qty))

    def cancel(self, order_id: int) -> None:
        self.send(Cancel(self.member, order_id))

    def block_offer(self, instrument: str, side: int, qty: int, price: int, *, counterparty: str = "",
                    partial: bool = False, coid: str | None = None) -> str:
        """A block agreement offer (docs/protocol.md): answered by BlockOffered or Rejected."""
        coid = coid or self.next_coid()
        self.send(BlockOffer(self.member, coid, instrument, int(side), qty, price, counterparty, partial))
        return coid

    def block_accept(self, offer_id: int, qty: int, *, coid: str | None = None) -> str:
        """Take ``qty`` of a block offer: answered by BlockTraded or Rejected."""
        coid = coid or self.next_coid()
        self.send(BlockAccept(self.member, coid, offer_id, qty))
        return coid

    def block_withdraw(self, offer_id: int) -> None:
        self.send(BlockWithdraw(self.member, offer_id))

    async def query_block_offers(self, instrument: str = "", timeout: float = 10.0) -> BlockOffersReply:
        return await self._ask(lambda r: QueryBlockOffers(r, instrument), timeout)  # type: ignore[no-any-return]

    def bid(self, auction_id: int, qty: int, price: int, *, coid: str | None = None) -> str:
        """A sealed bid in an auction: answered by BidPlaced or Rejected."""
        coid = coid or self.next_coid()
        self.send(AuctionBid(self.member, coid, auction_id, qty, price))
        return coid

    def amend_bid(self, auction_id: int, bid_id: int, qty: int, price: int) -> None:
        self.send(AuctionBidAmend(self.member, auction_id, bid_id, qty, price))

    def withdraw_bid(self, auction_id: int, bid_id: int) -> None:
        self.send(AuctionBidWithdraw(self.member, auction_id, bid_id))

    async def query_auctions(self, timeout: float = 10.0) -> AuctionsReply:
        return await self._ask(lambda r: QueryAuctions(r), timeout)  # type: ignore[no-any-return]

    async def query_compliance(self, year: int, member: str = "", timeout: float = 10.0) -> ComplianceReply:
        """A compliance year's records: the member's own; staff any member's or all."""
        return await self._ask(lambda r: QueryCompliance(r, year, member), timeout)  # type: ignore[no-any-return]

    def mass_cancel(self, instrument: str = "", member: str | None = None) -> None:
        self.send(MassCancel(self.member if member is None else member, instrument, int(CancelReason.MASS_CANCEL)))

    # --- queries ---------------------------------------------------------------------

    async def _ask(self, make: Any, timeout: float) -> Any:
        req_id = next(self._req_ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[req_id] = fut
        self.send(make(req_id))
        try:
            reply = await asyncio.wait_for(fut, timeout)
        finally:
            self._replies.pop(req_id, None)
        if isinstance(reply, QueryRejected):
            raise QueryError(reply.reason, reply.text)
        return reply

    async def query_orders(self, instrument: str = "", member: str = "", timeout: float = 10.0) -> list[Any]:
        """Every open order (all pages)."""
        orders: list[Any] = []
        after = 0
        while True:
            reply: OrdersReply = await self._ask(lambda r, a=after: QueryOrders(r, instrument, member, a), timeout)
            orders += reply.orders
            if not reply.more or not reply.orders:
                return orders
            after = reply.orders[-1].order_id

    async def query_top_orders(self, instrument: str, levels: int = 10, member: str = "",
                               timeout: float = 10.0) -> OrdersReply:
        """The orders resting at the best ``levels`` levels of each side of a book
        (bids then asks, best first; one reply, at most 500 orders)."""
        return await self._ask(  # type: ignore[no-any-return]
            lambda r: QueryOrders(r, instrument, member, 0, levels), timeout)

    async def query_order_status(self, order_id: int = 0, coid: str = "", member: str = "",
                                 timeout: float = 10.0) -> OrderStatus | None:
        """One order of the trading day, open or finished, by order id or client order
        id; None when the member has no such order today."""
        reply: OrderStatusReply = await self._ask(
            lambda r: QueryOrderStatus(r, order_id, coid, member), timeout)
        return reply.orders[0] if reply.orders else None

    async def query_day_orders(self, instrument: str = "", member: str = "", timeout: float = 10.0) -> list[OrderStatus]:
        """Every order the member had accepted today, open or finished (all pages)."""
        orders: list[OrderStatus] = []
        after = 0
        while True:
            reply: OrderStatusReply = await self._ask(
                lambda r, a=after: QueryOrderStatus(r, 0, "", member, a, instrument), timeout)
            orders += reply.orders
            if not reply.more or not reply.orders:
                return orders
            after = reply.orders[-1].order_id

    async def query_trades(self, instrument: str = "", member: str = "", after_trade_id: int = 0,
                           timeout: float = 10.0) -> TradesReply:
        """One page of the member's fills of the day after ``after_trade_id``."""
        return await self._ask(  # type: ignore[no-any-return]
            lambda r: QueryTrades(r, member, instrument, after_trade_id), timeout)

    async def query_all_trades(self, instrument: str = "", member: str = "", timeout: float = 10.0) -> list[TradeFill]:
        """Every fill of the member's trading day (all pages)."""
        trades: list[TradeFill] = []
        after = 0
        while True:
            reply = await self.query_trades(instrument, member, after, timeout)
            trades += reply.trades
            if not reply.more or not reply.trades:
                return trades
            after = reply.trades[-1].trade_id

    async def query_market_trades(self, instrument: str, count: int = 20, timeout: float = 10.0) -> MarketTradesReply:
        """The newest trades of an instrument, anyone's, without members (newest first)."""
        return await self._ask(lambda r: QueryMarketTrades(r, instrument, count), timeout)  # type: ignore[no-any-return]

    async def query_balances(self, member: str = "", timeout: float = 10.0) -> BalancesReply:
        return await self._ask(lambda r: QueryBalances(r, member), timeout)  # type: ignore[no-any-return]

    async def query_book(self, instrument: str, timeout: float = 10.0) -> BookReply:
        return await self._ask(lambda r: QueryBook(r, instrument), timeout)  # type: ignore[no-any-return]

    async def query_instruments(self, instrument: str = "", timeout: float = 10.0) -> InstrumentsReply:
        return await self._ask(lambda r: QueryInstruments(r, instrument), timeout)  # type: ignore[no-any-return]

    # --- staff ----------------------------------------------------------------------

    async def command(self, cmd: Any, timeout: float = 10.0) -> Any:
        """Send a command and wait until the exchange has taken it: the refusal or
        rejection that answers it (a ``Rejected`` or ``RegistryRejected`` body), or None
        when it was applied without one. A query sent right behind it in the same write
        is answered after the command's batch, so whatever rejection comes before that
        reply is this command's (or another command of the same user's, sent at the
        same moment from another session: staff streams are per user)."""
        seen: list[Any] = []
        self._collectors.append(seen)
        try:
            self.send(cmd)
            await self._ask(lambda r: QueryInstruments(r), timeout)
        finally:
            self._collectors.remove(seen)
        for body in seen:
            return body
        return None

    async def unlock(self, member: str, user: str, text: str = "", timeout: float = 10.0) -> Unlocked:
        return await self._ask(lambda r: Unlock(r, member, user, text), timeout)  # type: ignore[no-any-return]

    async def disconnect(self, session_id: int, text: str = "", timeout: float = 10.0) -> Disconnected:
        return await self._ask(lambda r: Disconnect(r, session_id, text), timeout)  # type: ignore[no-any-return]

    async def query_sessions(self, timeout: float = 10.0) -> SessionsReply:
        return await self._ask(lambda r: QuerySessions(r), timeout)  # type: ignore[no-any-return]

    def watch(self, depth: int = 10, interval_ms: int = 250) -> None:
        """Start the operator feed (staff only): views arrive through ``next()``."""
        self.send(Watch(0, depth, interval_ms))

    # --- receiving -------------------------------------------------------------------

    async def next(self, timeout: float | None = 10.0) -> Any:
        """The next report or session message; TimeoutError when none comes in time."""
        return await asyncio.wait_for(self._inbox.get(), timeout)

    def pending(self) -> int:
        return self._inbox.qsize()

    async def reports(self) -> AsyncIterator[Any]:
        """The messages as they arrive, until the connection closes."""
        while True:
            msg = await self._inbox.get()
            if msg is None:
                return
            yield msg

    async def wait_for(self, pred: Any, timeout: float = 10.0) -> Any:
        """Skip messages until one satisfies ``pred``; return it."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            msg = await self.next(max(end - loop.time(), 0.001))
            if msg is not None and pred(msg):
                return msg

    def _dispatch(self, msg: Any) -> None:
        t = type(msg)
        if t is Report:
            # A command's answer is new: not one of the reports replayed at the logon.
            if self._collectors and type(msg.body) in _REJECTIONS and (
                    not msg.seq_out or self.ack is None or msg.seq_out > self.ack.next_seq):
                for seen in self._collectors:
                    seen.append(msg.body)
            if not msg.seq_out:  # a refusal by the gateway, outside the sequence
                self._inbox.put_nowait(msg)
                return
            if msg.seq_out != self.last_seq + 1:
                self.anomalies.append(f"seq_out {msg.seq_out} after {self.last_seq}")
            if msg.seq_out > self.last_seq:
                self.last_seq = msg.seq_out
            self._inbox.put_nowait(msg)
        elif t is ServerHeartbeat:
            pass
        elif t is ReplayDone:
            self.replayed_to = msg.last_seq
            self.replay_done.set()
        elif t in _REPLIES and (t is not SessionsReply or msg.req_id):
            fut = self._replies.get(msg.req_id)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        else:
            if type(msg).__name__ == "SessionClosed":
                self.closed_by_server = msg
            self._inbox.put_nowait(msg)

    async def _read_loop(self, splitter: FrameSplitter) -> None:
        reader = self._reader
        assert reader is not None
        decode = self._decode
        try:
            while True:
                data = await reader.read(READ_CHUNK)
                if not data:
                    break
                self.last_rx = asyncio.get_running_loop().time()
                for frame in splitter.split(data):
                    self._dispatch(decode(frame))
                while self._inbox.qsize() > INBOX_MAX:
                    await asyncio.sleep(0.01)
        except (ConnectionError, OSError):
            pass
        finally:
            self._inbox.put_nowait(None)  # end of stream marker for reports()
            for fut in self._replies.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("connection closed"))

    async def _heartbeat_loop(self) -> None:
        assert self.ack is not None
        interval = self.ack.heartbeat_ms / 1000
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval / 2)
            if self._writer is None or self._writer.is_closing():
                return
            if loop.time() - self._sent_at >= interval / 2:
                self._send_now(Heartbeat())
                self._sent_at = loop.time()


class CannotLogOn(Exception):
    """A tool could not log on; the message names the exchange and says why, in one line."""


async def log_on(client: Client) -> Client:
    """Connect and log ``client`` on; CannotLogOn when the exchange refuses the logon or
    cannot be reached (the tools print it as it is)."""
    try:
        await client.connect()
    except LogonError as e:
        raise CannotLogOn(f"the exchange at {client.host}:{client.port} refused the logon of "
                          f"{client.member}/{client.user}: {e.text}") from None
    except OSError as e:
        raise CannotLogOn(f"cannot reach the exchange at {client.host}:{client.port}: {e.strerror or e}") from None
    return client


async def connect_staff(host: str, port: int, member: str, user: str, secret: str, cafile: str = "") -> Client:
    """Log a staff tool (etx ops, etx watch, etx registry) on to the exchange's gateway,
    cancel-on-disconnect off; with ``cafile`` over TLS, trusting that certificate at
    whatever name the exchange is reached by."""
    return await log_on(Client(host, port, member, user, secret, cod=CodMode.OFF, ssl=tls_context(cafile)))


def tls_context(cafile: str) -> ssl_module.SSLContext | None:
    """A client TLS context trusting ``cafile`` (the CA, or the exchange's own certificate)
    at whatever name the exchange is reached by; None (plain TCP) without one."""
    if not cafile:
        return None
    context = ssl_module.create_default_context(cafile=cafile)
    context.check_hostname = False
    return context

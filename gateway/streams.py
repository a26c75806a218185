"""Members' streams: the per-member (and per staff user) sequences of reports, and the
routing of the core's events into them.

Contract:
- Outbound application messages are ``Report(seq_out, body)`` in a sequence per
  trading member, shared by all of the member's sessions, and one per staff user
  (``member/user``): each keeps its recent reports for replay at logon.
- ``Router.route`` turns a batch's events into reports: the engine's ``Trade`` leaves
  as one ``Fill`` per side (no member sees its counterparty), a rejection goes to the
  stream its command came from (its origin), market status (``StatusChanged``) and the
  day's close (``DayClosed``) to every stream, a registry answer to its command's
  origin. The sequence holds only reports made from the core's events, so ``rebuild``
  makes exactly the same sequence from the journal's replay after a restart; each
  command names its origin (``origin_of``: a staff user's ``actor``, else its member).
- A client order id is registered when first seen and its first outcome from the core
  (Accepted or Rejected) is kept for the trading day (``MemberStream.coids``).
- The gateway tracks each member's open orders (``MemberStream.open``): every event
  about an order names its member, so this is the one index of live orders it keeps.
- Snapshots: ``capture`` takes every stream between two batches (last seq_out, newest
  reports, the day's client order id outcomes) as references encoded later on any
  thread; ``restore`` puts them back before ``rebuild`` replays the journal after the
  snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, cast

import msgspec

from engine.matching import Engine
from engine.messages import (
    Accepted,
    Amended,
    AuctionAnnounced,
    AuctionFill,
    AuctionResult,
    BidPlaced,
    BlockOffered,
    BlockTraded,
    BlockWithdrawn,
    Cancelled,
    CancelReason,
    DayClosed,
    Decremented,
    Expired,
    Reason,
    Rejected,
    StatusChanged,
    Trade,
)
from gateway.protocol import Fill, Liquidity, OrderState, Report

log = logging.getLogger("etx.streams")

MAKER, TAKER = int(Liquidity.MAKER), int(Liquidity.TAKER)
# Members are answered UNKNOWN_ORDER where the engine says NOT_YOUR_ORDER (see route).
_NOT_YOURS, _UNKNOWN_ORDER = int(Reason.NOT_YOUR_ORDER), int(Reason.UNKNOWN_ORDER)


OPEN, FILLED, CANCELLED, EXPIRED = (int(OrderState.OPEN), int(OrderState.FILLED), int(OrderState.CANCELLED),
                                    int(OrderState.EXPIRED))
_STP = int(CancelReason.SELF_TRADE)


class DayOrder(msgspec.Struct, array_like=True, gc=False):
    """The gateway's record of one order of the trading day, open or finished: its
    acceptance (the client order id, instrument, side, type ... and when) and what
    changed since (the limit, the open quantity ``qty``, what filled, the state). While
    open it is what the order's Fills need (client order id, side, open quantity after
    each fill). Not tracked by the garbage collector: one is made per accepted order
    and nothing in it can form a cycle."""

    acc: Accepted
    price: int
    qty: int  # open now
    ordered: int  # filled + open, as last set by the acceptance or an amend
    filled: int = 0
    state: int = OPEN
    reason: int = 0  # of a cancel
    last_ts: int = 0

    @property
    def coid(self) -> str:
        return self.acc.coid

    @property
    def side(self) -> int:
        return self.acc.side


def day_order(order: Any) -> DayOrder:
    """The record of an open order of the engine whose acceptance the gateway did not
    see (a core restored from a snapshot without the day's records)."""
    acc = Accepted(0, order.ts, order.member, order.coid, order.order_id, order.instrument, order.side, order.price,
                   order.qty + order.filled, 1, order.tif)
    return DayOrder(acc, order.price, order.qty, order.qty + order.filled, order.filled, OPEN, 0, order.ts)


class MemberStream:
    """One member's outbound sequence: the last seq_out, the reports kept for replay
    (``history[i]`` has seq_out ``base + 1 + i``), the live sessions, the day's client
    order ids with their first outcome (None while in flight), and the member's open
    orders (order id -> its ``DayOrder``, also in ``day``, the day's orders). Every event that concerns an order names
    its member, so ``open`` is the one index of live orders the gateway keeps."""

    __slots__ = ("member", "seq", "base", "history", "sessions", "coids", "mark", "open", "day", "fills")

    def __init__(self, member: str) -> None:
        self.member = member
        self.seq = 0
        self.base = 0
        self.history: list[Report] = []
        self.sessions: list[Any] = []  # the joined sessions (gateway.session.Session)
        self.coids: dict[str, Report | None] = {}
        self.mark = -1  # index in history of the first report of the current batch
        self.open: dict[int, DayOrder] = {}
        self.day: dict[int, DayOrder] = {}  # every order accepted today, open or finished
        self.fills: list[Fill] = []  # the member's fills of the day, in trade id order

    def _check(self) -> None:
        assert self.seq == self.base + len(self.history), (self.seq, self.base, len(self.history))
        for i, rep in enumerate(self.history):
            assert rep.seq_out == self.base + 1 + i, (i, rep.seq_out)
        for s in self.sessions:
            assert s.stream is self and s.joined
        for oid, info in self.open.items():
            assert type(info) is DayOrder and info.state == OPEN and self.day.get(oid) is info, info


class MemberState(msgspec.Struct, array_like=True):
    """One member's outbound stream in a snapshot: its last seq_out, its newest reports
    (``history[i]`` has seq_out ``seq - len(history) + 1 + i``) and the first outcome of
    each client order id of the trading day (the id is the body's ``coid``)."""

    member: str
    seq: int
    history: list[Report]
    outcomes: list[Report]
    orders: list[DayOrder] = []  # the day's orders (since the snapshot format of issue 12)
    fills: list[Fill] = []


class GatewayState(msgspec.Struct, array_like=True):
    """The gateway's part of a snapshot of ``etx serve``: every member's stream at the
    snapshot's sequence number."""

    members: list[MemberState]


ENCODE_CHUNK = 4096  # reports encoded per call: the core thread gets the GIL between calls


class StreamsCapture:
    """Member streams taken between two batches, as references to reports (which are
    never changed once made) in lists of their own; ``encode()`` may then run on any
    thread (the snapshot writer), a chunk of reports at a time so that it never holds
    the interpreter for long."""

    def __init__(self, members: list[tuple[str, int, list[Report], list[Report], list[DayOrder], dict[int, DayOrder],
                                           list[Fill]]]) -> None:
        self.members = members

    @property
    def reports(self) -> int:
        return sum(len(m[2]) + len(m[3]) for m in self.members)

    def encode(self) -> bytes:
        encode = msgspec.msgpack.Encoder().encode
        members = []
        for m, seq, history, outcomes, day, open_copies, fills in self.members:
            # A finished order never changes again; an open one may have changed since
            # the capture, which copied it.
            orders = [open_copies.get(o.acc.order_id, o) if o.state == OPEN else o for o in day]
            members.append(MemberState(m, seq, cast(Any, _encode_list(encode, history)),
                                       cast(Any, _encode_list(encode, outcomes)), cast(Any, _encode_list(encode, orders)),
                                       cast(Any, _encode_list(encode, fills))))
        return encode(GatewayState(members))


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _encode_list(encode: Callable[[Any], bytes], items: list[Any]) -> msgspec.Raw:
    """A msgpack array of the items, encoded ENCODE_CHUNK at a time and joined."""
    parts: list[bytes | memoryview] = [_array_header(len(items))]
    for i in range(0, len(items), ENCODE_CHUNK):
        chunk = items[i : i + ENCODE_CHUNK]
        parts.append(memoryview(encode(chunk))[len(_array_header(len(chunk))):])
    return msgspec.Raw(b"".join(parts))


class Router:
    """The streams of the trading members and staff users, and the routing of events
    into them (see the module docstring)."""

    def __init__(self, engine: Engine, members: Iterable[str], staff: Iterable[str]) -> None:
        self.engine = engine
        self.members = frozenset(members)
        self.streams: dict[str, MemberStream] = {m: MemberStream(m) for m in self.members}
        for key in staff:
            self.streams[key] = MemberStream(key)
        # The origin of what the exchange enters itself (schedule ticks): no session's.
        self.system = MemberStream("")

    def report(self, stream: MemberStream, body: Any, touched: list[MemberStream]) -> Report:
        """Append a report to a stream's sequence (``touched`` collects the streams with
        new reports in this batch)."""
        seq = stream.seq + 1
        stream.seq = seq
        rep = Report(seq, body)
        history = stream.history
        if stream.mark < 0:
            stream.mark = len(history)
            touched.append(stream)
        history.append(rep)
        return rep

    def route(self, out: list[Any], origins: list[MemberStream], first_seq: int, touched: list[MemberStream]) -> None:
        """Turn the batch's events into reports (hot: runs per event, so the common
        cases, acceptances and fills, make their reports inline rather than through
        ``report``)."""
        streams = self.streams
        report = self.report
        for ev in out:
            t = type(ev)
            if t is Accepted:
                stream = streams[ev.member]
                order = DayOrder(ev, ev.price, ev.qty, ev.qty, 0, OPEN, 0, ev.ts)
                stream.open[ev.order_id] = order
                stream.day[ev.order_id] = order
                seq = stream.seq + 1
                stream.seq = seq
                rep = Report(seq, ev)
                if stream.mark < 0:
                    stream.mark = len(stream.history)
                    touched.append(stream)
                stream.history.append(rep)
                stream.coids[ev.coid] = rep
            elif t is Trade:
                qty = ev.qty
                ts = ev.ts
                maker, taker = streams[ev.maker_member], streams[ev.taker_member]
                m = maker.open.get(ev.maker_order_id) or self.untracked(ev.maker_order_id, ev.maker_member, 3 - ev.aggressor)
                k = taker.open.get(ev.taker_order_id) or self.untracked(ev.taker_order_id, ev.taker_member, ev.aggressor)
                for stream, oid, info, liquidity in ((maker, ev.maker_order_id, m, MAKER), (taker, ev.taker_order_id, k, TAKER)):
                    info.qty -= qty
                    info.filled += qty
                    info.last_ts = ts
                    seq = stream.seq + 1
                    stream.seq = seq
                    if stream.mark < 0:
                        stream.mark = len(stream.history)
                        touched.append(stream)
                    acc = info.acc
                    fill = Fill(ev.seq, ts, oid, acc.coid, ev.trade_id, ev.instrument, acc.side, ev.price, qty, liquidity,
                                info.qty)
                    stream.history.append(Report(seq, fill))
                    stream.fills.append(fill)
                    if not info.qty:
                        info.state = FILLED
                        del stream.open[oid]
            elif t is Rejected:
                stream = origins[ev.seq - first_seq]
                if ev.reason == _NOT_YOURS:
                    # A member learns nothing of other members' orders: it is answered as
                    # for an order that does not exist. The engine's reason stays in the
                    # journal (etx journal inspect) for operators.
                    ev = Rejected(ev.seq, ev.ts, ev.member, ev.coid, ev.order_id, _UNKNOWN_ORDER,
                                  f"no open order {ev.order_id}")
                rep = report(stream, ev, touched)
                if ev.coid and ev.member == stream.member:
                    stream.coids[ev.coid] = rep
            elif t is Cancelled or t is Expired:
                stream = streams[ev.member]
                done = stream.open.pop(ev.order_id, None)
                if done is not None:
                    done.qty = 0
                    done.last_ts = ev.ts
                    if t is Cancelled:
                        done.state = CANCELLED
                        done.reason = ev.reason
                    else:
                        done.state = EXPIRED
                report(stream, ev, touched)
            elif t is Amended:
                stream = streams[ev.member]
                live = stream.open.get(ev.order_id)
                if live is not None:
                    live.qty = ev.qty
                    live.ordered = live.filled + ev.qty
                    live.price = ev.price
                    live.last_ts = ev.ts
                report(stream, ev, touched)
            elif t is Decremented:
                stream = streams[ev.member]
                live = stream.open.get(ev.order_id)
                if live is not None:
                    live.qty = ev.qty_left
                    live.last_ts = ev.ts
                    if not ev.qty_left:
                        live.state = CANCELLED
                        live.reason = _STP
                        del stream.open[ev.order_id]
                report(stream, ev, touched)
            elif t is BlockTraded:
                # To both parties; the acceptor's client order id has its outcome.
                acceptor = streams[ev.acceptor]
                rep = report(acceptor, ev, touched)
                acceptor.coids[ev.coid] = rep
                report(streams[ev.offerer], ev, touched)
            elif t is BlockOffered:
                stream = streams[ev.member]
                stream.coids[ev.coid] = report(stream, ev, touched)
            elif t is BlockWithdrawn:
                report(streams[ev.member], ev, touched)
            elif t is BidPlaced:
                stream = streams[ev.member]
                rep = report(stream, ev, touched)
                if not ev.amended:
                    stream.coids[ev.coid] = rep  # a new bid's client order id has its outcome
            elif t is AuctionFill:
                report(streams[ev.member], ev, touched)
            elif t is AuctionAnnounced or t is AuctionResult:
                for stream in streams.values():  # public: to every member and staff user
                    report(stream, ev, touched)
            elif t is StatusChanged:
                for stream in streams.values():
                    report(stream, ev, touched)
            elif t is DayClosed:
                for stream in streams.values():
                    report(stream, ev, touched)
                    # Client order ids are unique per trading day; the day's records start
                    # again (an order still open, if any, goes on).
                    stream.coids.clear()
                    stream.day = dict(stream.open)
                    stream.fills = []
            else:
                # An event of the registry or settlement: to whoever sent the command.
                member = getattr(ev, "member", None) or getattr(ev, "account", None)
                target = streams.get(member) if isinstance(member, str) else None
                if target is None and getattr(ev, "seq", 0) >= first_seq:
                    target = origins[ev.seq - first_seq]
                if target is not None:
                    report(target, ev, touched)

    def origin_of(self, cmd: Any) -> MemberStream:
        """The stream a command came from, named by the command itself: a staff user's
        (its ``actor``), else its member's, else the exchange's own (a tick). Live, a
        command's origin is its session's stream, which is the same one."""
        streams = self.streams
        actor = getattr(cmd, "actor", "")
        stream = streams.get(actor) if actor else None
        if stream is None:
            stream = streams.get(getattr(cmd, "member", ""))
        return stream if stream is not None else self.system

    def rebuild(self, cmds: list[Any], events: list[Any]) -> None:
        """Route the events of journaled commands replayed at start (recovery) into the
        streams' histories and client order id tables, writing nothing: clients that
        log on afterwards get them by replay. Batch by batch, with each batch and its
        events. (Gateway refusals were never journaled.)"""
        touched: list[MemberStream] = []
        if cmds:
            self.route(events, [self.origin_of(c) for c in cmds], cmds[0].seq, touched)
        for stream in touched:
            stream.mark = -1

    def capture(self, history_max: int) -> StreamsCapture:
        """Every member's stream now, between two batches (see ``StreamsCapture``): its
        last seq_out, its newest ``history_max`` reports and the outcomes of the day's
        client order ids (those still in flight have none: the journal after the
        snapshot has them)."""
        members = []
        copy = msgspec.structs.replace
        for stream in self.streams.values():
            history = stream.history[-history_max:] if history_max > 0 else []
            outcomes = [rep for rep in stream.coids.values() if rep is not None]
            open_copies = {oid: copy(o) for oid, o in stream.open.items()}
            members.append((stream.member, stream.seq, history, outcomes, list(stream.day.values()), open_copies,
                            list(stream.fills)))
        return StreamsCapture(members)

    def restore(self, state: GatewayState, open_orders: Iterable[tuple[int, str, str, int, int]]) -> None:
        """Load the member streams of a snapshot, and the tracking of the orders open
        at its sequence number ((order_id, member, coid, side, open qty) each, from the
        restored core), before ``rebuild`` routes the journal after it. Call once,
        before the server starts. The streams take over the state's history lists."""
        assert all(not st.seq and not st.open for st in self.streams.values()), "restore needs fresh streams"
        for ms in state.members:
            stream = self.streams.get(ms.member)
            if stream is None:
                log.warning("snapshot has reports of member %s, which the configuration lacks: dropped", ms.member)
                continue
            stream.seq = ms.seq
            stream.base = ms.seq - len(ms.history)
            stream.history = ms.history
            stream.coids = {cast(Any, rep.body).coid: rep for rep in ms.outcomes}  # Accepted or Rejected
            stream.day = {o.acc.order_id: o for o in ms.orders}
            stream.fills = ms.fills
            stream._check()
        streams = self.streams
        orders = self.engine.orders
        for order_id, member, _coid, _side, qty in open_orders:
            stream = streams[member]
            known = stream.day.get(order_id)
            if known is None or known.state != OPEN:  # a snapshot made before the day's records were kept
                known = stream.day[order_id] = day_order(orders[order_id])
            known.qty = qty
            stream.open[order_id] = known

    @property
    def track(self) -> dict[int, tuple[str, int, int, MemberStream]]:
        """Every live order the gateway tracks, across members: order id -> (client
        order id, side, open quantity, stream). Built on demand, for checks and tests."""
        return {oid: (info.coid, info.side, info.qty, stream)
                for stream in self.streams.values() for oid, info in stream.open.items()}

    def untracked(self, order_id: int, member: str, side: int) -> DayOrder:
        """Tracking for an order the gateway did not see accepted (a core restored from
        a snapshot): the engine still has it before its fill is routed."""
        stream = self.streams[member]
        order = self.engine.orders.get(order_id)
        if order is None:  # filled in this very batch: only the fill's own fields are known
            info = DayOrder(Accepted(0, 0, member, "", order_id, "", side, 0, 0, 1, 1), 0, 0, 0)
        else:
            info = day_order(order)
        stream.open[order_id] = stream.day[order_id] = info
        return info

    def track_core_orders(self) -> None:
        """Make the tracking match the core's open orders before the first batch (a core
        recovered from a snapshot holds orders whose acceptance was never routed here)."""
        orders = self.engine.orders
        for stream in self.streams.values():
            for oid in [oid for oid in stream.open if oid not in orders]:
                del stream.open[oid]
        for oid, order in orders.items():
            known = self.streams[order.member].open.get(oid)
            if known is None:
                self.untracked(oid, order.member, order.side)
            else:
                known.qty = order.qty


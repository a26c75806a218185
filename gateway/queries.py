"""Queries: a session's questions answered from the core's state, after the batch they
arrived with (unsequenced replies carrying the query's ``req_id``).

Contract: ``Queries.answer(member, sees_all, q)`` returns the reply to one query of a
session of ``member`` (``sees_all``: a staff role, which may name any member). Traders
and read-only users may ask about their own member only; a member's open orders are
found through its own index (``MemberStream.open``), so a query costs what the member
has open, not what the whole exchange has. Replies are bounded: ORDERS_PER_REPLY
orders (page on with ``after_order_id``), BALANCES_PER_REPLY balances, BOOK_LEVELS
levels.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import operator
from collections.abc import Iterable
from typing import Any

from engine.messages import Rejected, Side
from gateway.protocol import (
    BOOK_LEVELS,
    MARKET_TRADES_MAX,
    ORDERS_PER_REPLY,
    TRADES_PER_REPLY,
    AuctionRow,
    AuctionsReply,
    Balance,
    BalancesReply,
    BlockOfferRow,
    BlockOffersReply,
    BookLevel,
    BookReply,
    ComplianceReply,
    ComplianceRow,
    GatewayReason,
    InstrumentInfo,
    InstrumentsReply,
    MarketTrade,
    MarketTradesReply,
    OpenOrder,
    OrdersReply,
    OrderState,
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
    QueryTrades,
    TradeFill,
    TradesReply,
)
from gateway.streams import DayOrder, MemberStream, Router

BALANCES_PER_REPLY = 10_000  # rows of one BalancesReply (the rest is left out)
LEVELS_MAX = 50  # best_levels of a QueryOrders
BUY, SELL = int(Side.BUY), int(Side.SELL)


class Queries:
    def __init__(self, core: Any, router: Router) -> None:
        self.core = core
        self.router = router
        # instrument -> its newest trades (the operator feed keeps them: gateway.watch)
        self.recent: dict[str, Any] = {}

    def answer(self, member: str, sees_all: bool, q: Any) -> Any:
        engine = self.core.engine
        t = type(q)
        if t is QueryCompliance:
            named = q.member
            if not sees_all and named and named != member:
                return QueryRejected(q.req_id, GatewayReason.NOT_PERMITTED, "you may query your own member only")
            return self._compliance(q, named if sees_all else member)
        if t is QueryAuctions:
            auctions = engine.auctions
            return AuctionsReply(q.req_id, [AuctionRow(a.auction_id, a.seller, a.instrument, a.qty, a.floor, a.ceiling,
                                                       a.start_ts, a.end_ts, a.pricing, a.bid_min, a.bid_max,
                                                       a.cancel_if_short)
                                            for a in (auctions[i] for i in sorted(auctions))])
        if t is QueryBlockOffers:
            if q.instrument and q.instrument not in engine.markets:
                return QueryRejected(q.req_id, GatewayReason.UNKNOWN_INSTRUMENT, f"unknown instrument {q.instrument!r}")
            rows = []
            for offer_id in sorted(engine.offers):
                o = engine.offers[offer_id]
                if q.instrument and o.instrument != q.instrument:
                    continue
                mine = o.member == member
                if not sees_all and not mine and o.counterparty not in ("", member):
                    continue  # named to another member: not this one's to see
                rows.append(BlockOfferRow(o.offer_id, o.member if sees_all or mine else "", o.instrument, o.side, o.qty,
                                          o.price, o.partial, bool(o.counterparty), o.ts))
            return BlockOffersReply(q.req_id, rows)
        if t is QueryMarketTrades:
            if q.instrument not in engine.markets:
                return QueryRejected(q.req_id, GatewayReason.UNKNOWN_INSTRUMENT, f"unknown instrument {q.instrument!r}")
            if not 1 <= q.count <= MARKET_TRADES_MAX:
                return QueryRejected(q.req_id, GatewayReason.INVALID_FIELD,
                                     f"count must be 1 to {MARKET_TRADES_MAX}, got {q.count}")
            recent = list(self.recent.get(q.instrument, ()))[-q.count:]
            return MarketTradesReply(q.req_id, q.instrument, [MarketTrade(t.trade_id, t.ts, t.price, t.qty, t.aggressor)
                                                              for t in reversed(recent)])
        if t is QueryOrderStatus or t is QueryTrades:
            named = q.member
            if not sees_all and named and named != member:
                return QueryRejected(q.req_id, GatewayReason.NOT_PERMITTED, "you may query your own member only")
            who = named if sees_all else member
            stream = self.router.streams.get(who) if who in self.router.members else None
            if stream is None:
                return QueryRejected(q.req_id, GatewayReason.UNKNOWN_MEMBER,
                                     f"unknown member {named!r}" if named else "name the member to query")
            if q.instrument and q.instrument not in engine.markets:
                return QueryRejected(q.req_id, GatewayReason.UNKNOWN_INSTRUMENT, f"unknown instrument {q.instrument!r}")
            if t is QueryTrades:
                return self._trades(q, stream)
            return self._order_status(q, stream)
        if t is QueryOrders or t is QueryBalances:
            named = q.member
            if not sees_all and named and named != member:
                return QueryRejected(q.req_id, GatewayReason.NOT_PERMITTED, "you may query your own member only")
            if named and named not in self.router.members:
                return QueryRejected(q.req_id, GatewayReason.UNKNOWN_MEMBER, f"unknown member {named!r}")
            who = named if sees_all else member
            if t is QueryBalances:
                return self._balances(q, who)
            if q.best_levels:
                if not q.instrument or q.best_levels < 0:
                    return QueryRejected(q.req_id, GatewayReason.INVALID_FIELD,
                                         "best_levels needs an instrument and a positive number of levels")
                if q.instrument not in engine.markets:
                    return QueryRejected(q.req_id, GatewayReason.UNKNOWN_INSTRUMENT,
                                         f"unknown instrument {q.instrument!r}")
                if not sees_all and not named:
                    # The orders a member may hit: every order at the best levels, the
                    # other members' without member or client order id.
                    return self._top_orders(q, "", viewer=member)
                return self._top_orders(q, who)
            return self._orders(q, who)
        if t is QueryBook:
            market = engine.markets.get(q.instrument)
            if market is None:
                return QueryRejected(q.req_id, GatewayReason.UNKNOWN_INSTRUMENT, f"unknown instrument {q.instrument!r}")
            bids, asks = engine.depth(q.instrument, BOOK_LEVELS)
            return BookReply(q.req_id, q.instrument, market.phase,
                             [BookLevel(*lv) for lv in bids], [BookLevel(*lv) for lv in asks])
        if t is QueryInstruments:
            if q.instrument and q.instrument not in engine.markets:
                return QueryRejected(q.req_id, GatewayReason.UNKNOWN_INSTRUMENT, f"unknown instrument {q.instrument!r}")
            infos = []
            for symbol, m in sorted(engine.markets.items()):
                if q.instrument and symbol != q.instrument:
                    continue
                r = m.rules
                infos.append(InstrumentInfo(symbol, r.tick, r.lot, r.qty_min, r.qty_max, m.ref_price, m.low, m.high,
                                            m.phase, m.halted, m.last_price, m.volume))
            return InstrumentsReply(q.req_id, infos)
        raise AssertionError(f"not a query: {q!r}")  # pragma: no cover - the session only queues known queries

    def _orders(self, q: QueryOrders, member: str) -> OrdersReply:
        orders = self.core.engine.orders
        after, instrument = q.after_order_id, q.instrument
        ids: Iterable[int] = self.router.streams[member].open if member else orders
        found = heapq.nsmallest(ORDERS_PER_REPLY + 1, (
            oid for oid in ids if oid > after and (not instrument or orders[oid].instrument == instrument)))
        page = [orders[oid] for oid in found[:ORDERS_PER_REPLY]]
        return OrdersReply(q.req_id, [OpenOrder(o.order_id, o.member, o.coid, o.instrument, o.side, o.price, o.qty,
                                                o.filled, o.ts) for o in page], len(found) > ORDERS_PER_REPLY)

    def _top_orders(self, q: QueryOrders, member: str, viewer: str = "") -> OrdersReply:
        """The orders at the best levels of each side (see ``QueryOrders``): read level by
        level from the book, so the cost is that of the orders listed. ``member``: only
        that member's; ``viewer``: every order, those of other members than the viewer
        anonymous (member and client order id "")."""
        engine = self.core.engine
        levels = min(q.best_levels, LEVELS_MAX)
        bids, asks = engine.depth(q.instrument, levels)
        rows: list[OpenOrder] = []
        more = False
        for side, book_levels in ((BUY, bids), (SELL, asks)):
            for price, _, _ in book_levels:
                for o in engine.level_orders(q.instrument, side, price):
                    if member and o.member != member:
                        continue
                    if len(rows) == ORDERS_PER_REPLY:
                        more = True
                        break
                    if viewer and o.member != viewer:
                        rows.append(OpenOrder(o.order_id, "", "", o.instrument, o.side, o.price, o.qty, o.filled, o.ts))
                    else:
                        rows.append(OpenOrder(o.order_id, o.member, o.coid, o.instrument, o.side, o.price, o.qty,
                                              o.filled, o.ts))
        return OrdersReply(q.req_id, rows, more)

    def _compliance(self, q: QueryCompliance, member: str) -> ComplianceReply:
        ledger = self.core.ledger
        states = getattr(ledger, "compliance", {})
        obligations = getattr(ledger, "obligations", {})
        rows = []
        for account in sorted({a for a, y in states if y == q.year} | {a for a, y in obligations if y == q.year}):
            if member and account != member:
                continue
            c, ob = states.get((account, q.year)), obligations.get((account, q.year))
            required, surrendered, ccer = (ob.required, ob.surrendered, ob.ccer) if ob else (0, 0, 0)
            closed = bool(c and c.closed)
            rows.append(ComplianceRow(
                account, c.industry if c else "", c.allocated if c else 0, c.deducted if c else 0,
                c.verified_emissions if c else 0, required, surrendered, ccer,
                c.shortfall if c and closed else required - surrendered, c.penalty if c else 0,
                c.expired if c else 0, closed))
        return ComplianceReply(q.req_id, q.year, rows[:BALANCES_PER_REPLY])

    def _balances(self, q: QueryBalances, member: str) -> BalancesReply:
        ledger = self.core.ledger
        rows = ledger.state() if ledger is not None else []
        # available: what an order could hold now (the settlement ledger also keeps
        # today's purchases out of it until the next trading day).
        available = getattr(ledger, "available", None)
        out = [Balance(a, asset, b, h, available(a, asset) if available else b - h)
               for a, asset, b, h in rows if not member or a == member]
        return BalancesReply(q.req_id, out[:BALANCES_PER_REPLY])

    def _order_status(self, q: QueryOrderStatus, stream: MemberStream) -> OrderStatusReply:
        """One order of the day by id or client order id, or a page of the day's orders."""
        member = stream.member
        if q.order_id or q.coid:
            order: DayOrder | None = None
            if q.order_id:
                order = stream.day.get(q.order_id)
                if order is not None and q.coid and order.acc.coid != q.coid:
                    order = None  # both named and they disagree: no such order
            else:
                rep = stream.coids.get(q.coid)
                body: Any = rep.body if rep is not None else None
                if type(body) is Rejected:
                    return OrderStatusReply(q.req_id, [OrderStatus(
                        0, member, body.coid, "", 0, 0, 0, 0, 0, 0, 0, REJECTED, body.reason, body.ts, body.ts)], False)
                if body is not None:
                    order = stream.day.get(body.order_id)
            return OrderStatusReply(q.req_id, [_status(member, order)] if order is not None else [], False)
        after, instrument = q.after_order_id, q.instrument
        found = heapq.nsmallest(ORDERS_PER_REPLY + 1, (
            oid for oid, o in stream.day.items() if oid > after and (not instrument or o.acc.instrument == instrument)))
        day = stream.day
        return OrderStatusReply(q.req_id, [_status(member, day[oid]) for oid in found[:ORDERS_PER_REPLY]],
                                len(found) > ORDERS_PER_REPLY)

    def _trades(self, q: QueryTrades, stream: MemberStream) -> TradesReply:
        """A page of the member's fills of the day after ``after_trade_id`` (the list is
        in trade id order: found by bisection)."""
        fills = stream.fills
        start = bisect.bisect_right(fills, q.after_trade_id, key=_TRADE_ID)
        ledger = self.core.ledger
        fees = getattr(ledger, "fees", None)
        trading_ppm = fees.trading_ppm if fees is not None else 0
        settlement_ppm = fees.settlement_ppm if fees is not None else 0
        rows: list[TradeFill] = []
        more = False
        instrument = q.instrument
        for f in itertools.islice(fills, start, None):
            if instrument and f.instrument != instrument:
                continue
            if len(rows) == TRADES_PER_REPLY:
                more = True
                break
            notional = f.price * f.qty
            fee = notional * trading_ppm // PPM + notional * settlement_ppm // PPM
            rows.append(TradeFill(f.trade_id, f.seq, f.ts, f.order_id, f.coid, f.instrument, f.side, f.price, f.qty,
                                  f.liquidity, fee))
        return TradesReply(q.req_id, rows, more)


PPM = 1_000_000
REJECTED = int(OrderState.REJECTED)
_TRADE_ID = operator.attrgetter("trade_id")


def _status(member: str, o: DayOrder) -> OrderStatus:
    a = o.acc
    return OrderStatus(a.order_id, member, a.coid, a.instrument, a.side, a.ord_type, a.tif, o.price, o.ordered,
                       o.filled, o.qty, o.state, o.reason, a.ts, o.last_ts)

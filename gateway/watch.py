"""The operator feed: what exchange staff watch (the console, ``etx watch``), pushed over
their gateway sessions.

Contract:
- ``Feed.on_batch(cmds, events)`` runs on the core's thread after each batch (a server
  listener): it notes which instruments changed, keeps the day's per-second price
  series of each instrument (``CHART_POINTS_MAX`` points at most) and, while anyone
  watches, the batch's trades in a bounded buffer (``TRADES_MAX``; a watcher that
  falls further behind is told how many it missed). Cheap and without I/O.
- ``Feed.tick(now)`` runs on the server's timer: to each watching session that is due
  (its ``interval_ms``) it sends an ``InstrumentView`` of every instrument that changed
  since its last push (all of them in its first push), the chart points it lacks
  (``ChartView``: the whole day first, then the seconds from the last one sent), the
  newest trades since its last push (``TradesView``: at most ``TRADES_PER_PUSH``, the
  rest counted; a trade list shows the last ones, the chart and the statistics count
  every trade), and once a second a ``HealthView`` and a ``SessionsReply``. Views are
  complete pictures: a watcher may miss any and the next is right.
- A watcher never slows the core: each view is built once per tick whoever watches,
  and a session whose unread output passes ``BACKLOG_MAX`` bytes is skipped until it
  has read it (conflation: it then gets the views as they are by then); the server's
  own limit (``write_buffer_max``) drops a session that reads nothing at all.
- ``Feed.alert(kind, text, instrument, member)`` pushes an ``AlertView`` to every
  watcher at once and keeps the newest ``ALERTS_KEPT`` for those who start watching
  later.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.messages import (
    Accepted,
    BlockOffered,
    BlockTraded,
    BlockWithdrawn,
    Cancelled,
    DayClosed,
    Halt,
    Phase,
    StatusChanged,
    Trade,
)
from gateway.protocol import (
    MARKET_TRADES_MAX,
    AlertView,
    BlockOfferRow,
    BlocksView,
    BlockTradeRow,
    BookLevel,
    ChartView,
    HealthView,
    InstrumentView,
    SessionInfo,
    SessionsReply,
    TradeRow,
    TradesView,
)

if TYPE_CHECKING:
    from gateway.session import Session

TRADES_MAX = 20_000  # trades buffered for watchers
TRADES_PER_PUSH = 100  # the newest trades in one TradesView (the older ones of the interval are counted)
BLOCK_TRADES_KEPT = 100  # the day's newest block trades in a BlocksView
CHART_POINTS_MAX = 86_400  # a day of seconds
ALERTS_KEPT = 200
BACKLOG_MAX = 1 << 20  # unread bytes above which a watcher's pushes are skipped
DEPTH_MAX = 50
INTERVAL_MIN_MS, INTERVAL_MAX_MS = 50, 10_000
NS = 1_000_000_000
HALTED = int(Phase.HALTED)


class _Watcher:
    __slots__ = ("session", "depth", "interval_s", "next_at", "first", "trade_cursor", "seen", "chart_from",
                 "blocks_seen")

    def __init__(self, session: Session, depth: int, interval_s: float, cursor: int) -> None:
        self.session = session
        self.depth = depth
        self.interval_s = interval_s
        self.next_at = 0.0
        self.first = True
        self.trade_cursor = cursor  # the number of the next trade this watcher has not had
        self.seen: dict[str, int] = {}  # instrument -> the change count last sent
        self.chart_from: dict[str, int] = {}  # instrument -> the second from which its chart points are not sent
        self.blocks_seen = -1  # the block trading change count last sent


class Feed:
    """See the module docstring. ``engine`` is the core's engine; ``sessions()`` lists
    the server's sessions; ``health()`` gives the service's figures (settlement lag,
    snapshot age, market data lag) beside the server's own."""

    def __init__(self, engine: Any, sessions: Callable[[], list[Any]], server_figures: Callable[[], dict[str, int]],
                 health: Callable[[], dict[str, int]] | None = None) -> None:
        self.engine = engine
        self.sessions = sessions
        self.server_figures = server_figures
        self.health = health
        self.watchers: dict[Any, _Watcher] = {}
        self.changes: dict[str, int] = {}  # instrument -> how often it changed (a counter)
        self.seqs: dict[str, tuple[int, int]] = {}  # instrument -> (seq, ts) of the last event touching it
        self.halt_texts: dict[str, str] = {}  # instrument -> why it is halted (the Halt command's reason and actor)
        # The core's Trade events as they are: a row for a watcher is made only for the
        # few trades a push carries, not for every trade under load.
        self.trades: collections.deque[Trade] = collections.deque(maxlen=TRADES_MAX)
        self.trades_total = 0  # trades ever buffered: the number of the next one
        # The newest trades of each instrument, watched or not (QueryMarketTrades).
        self.recent: dict[str, collections.deque[Trade]] = {}
        # Block agreement trading: a change count, and the day's newest block trades.
        self.blocks_changes = 0
        self.block_trades: collections.deque[BlockTradeRow] = collections.deque(maxlen=BLOCK_TRADES_KEPT)
        self.charts: dict[str, collections.deque[tuple[int, int, int]]] = {}
        self.alerts: collections.deque[AlertView] = collections.deque(maxlen=ALERTS_KEPT)
        self._second = 0.0
        self._last_figures: dict[str, int] = {}
        self._last_counts: dict[Any, tuple[int, int]] = {}
        self._rates: dict[Any, tuple[int, int]] = {}
        self._health: HealthView | None = None

    # --- the core's side ---------------------------------------------------------------

    def on_batch(self, cmds: list[Any], events: list[Any]) -> None:
        # Runs after every batch, watched or not: per event only a type test and a
        # note of its instrument; each instrument's change count and last (seq, ts)
        # are moved once per batch, and a batch's trades of one instrument in one
        # second make one chart update.
        last: dict[str, Any] = {}  # instrument -> its last event in this batch
        watching = bool(self.watchers)
        trades = self.trades
        chart: Any = None  # the pending chart update: the last trade, and the volume since
        volume = 0
        for ev in events:
            t = type(ev)
            if t is Accepted or t is Cancelled:
                last[ev.instrument] = ev
                continue
            if t is Trade:
                last[ev.instrument] = ev
                if chart is not None and (chart.instrument != ev.instrument or chart.ts // NS != ev.ts // NS):
                    self._chart(chart.instrument, chart.ts, chart.price, volume)
                    volume = 0
                chart = ev
                volume += ev.qty
                recent = self.recent.get(ev.instrument)
                if recent is None:
                    recent = self.recent[ev.instrument] = collections.deque(maxlen=MARKET_TRADES_MAX)
                recent.append(ev)
                if watching:
                    trades.append(ev)
                    self.trades_total += 1
                continue
            if t is BlockTraded or t is BlockOffered or t is BlockWithdrawn:
                self.blocks_changes += 1
                if t is BlockTraded:
                    self.block_trades.append(BlockTradeRow(ev.seq, ev.ts, ev.trade_id, ev.offer_id, ev.instrument,
                                                           ev.price, ev.qty, ev.buyer, ev.seller))
                continue
            instrument = getattr(ev, "instrument", None)
            if not instrument:
                continue
            last[instrument] = ev
            if t is StatusChanged:
                if ev.phase == HALTED:
                    cmd = cmds[ev.seq - cmds[0].seq] if cmds else None
                    why = (f"{cmd.text} ({cmd.actor})" if cmd.text else f"by {cmd.actor}") if type(cmd) is Halt else ""
                    self.halt_texts[instrument] = why
                else:
                    self.halt_texts.pop(instrument, None)
            elif t is DayClosed:
                if self.block_trades:
                    self.block_trades.clear()  # the day's block trades
                    self.blocks_changes += 1
                if chart is not None:
                    self._chart(chart.instrument, chart.ts, chart.price, volume)
                    chart, volume = None, 0
                self.charts.pop(instrument, None)  # a new day, a new chart
        if chart is not None:
            self._chart(chart.instrument, chart.ts, chart.price, volume)
        changes, seqs = self.changes, self.seqs
        for instrument, ev in last.items():
            changes[instrument] = changes.get(instrument, 0) + 1
            seqs[instrument] = (ev.seq, ev.ts)

    def _chart(self, instrument: str, ts: int, price: int, qty: int) -> None:
        points = self.charts.get(instrument)
        if points is None:
            points = self.charts[instrument] = collections.deque(maxlen=CHART_POINTS_MAX)
        second = ts // NS
        if points and points[-1][0] == second:
            _, _, volume = points[-1]
            points[-1] = (second, price, volume + qty)
        else:
            points.append((second, price, qty))

    # --- watchers ----------------------------------------------------------------------

    def watch(self, session: Session, depth: int, interval_ms: int) -> None:
        if depth <= 0:
            self.watchers.pop(session, None)
            return
        depth = min(depth, DEPTH_MAX)
        interval_s = min(max(interval_ms, INTERVAL_MIN_MS), INTERVAL_MAX_MS) / 1000
        self.watchers[session] = _Watcher(session, depth, interval_s, self.trades_total)

    def forget(self, session: Session) -> None:
        self.watchers.pop(session, None)

    def alert(self, kind: str, text: str, instrument: str = "", member: str = "") -> None:
        view = AlertView(time.time_ns(), kind, instrument, member, text)
        self.alerts.append(view)
        for w in list(self.watchers.values()):
            w.session.send(view)

    def tick(self, now: float) -> None:
        """Push to the watchers that are due (the server's timer calls this)."""
        second = now - self._second >= 1.0
        if second:
            self._second = now
            self._count_second()
        if not self.watchers:
            return
        views: dict[tuple[str, int], InstrumentView] = {}
        for w in list(self.watchers.values()):
            s = w.session
            if s.transport is None or s.state == 3:  # closed (gateway.session.CLOSED)
                self.watchers.pop(s, None)
                continue
            if now < w.next_at and not second:
                continue
            if s.transport.get_write_buffer_size() > BACKLOG_MAX:
                continue  # it has not read what it has: it gets fresher views once it has
            msgs: list[Any] = []
            if now >= w.next_at:
                w.next_at = now + w.interval_s
                msgs += self._instruments(w, views)
                msgs += self._trades(w)
                if w.blocks_seen != self.blocks_changes:
                    w.blocks_seen = self.blocks_changes
                    msgs.append(self.blocks_view())
            if w.first:
                msgs += list(self.alerts)  # those kept, before the figures (etx ops alerts reads up to them)
            if second or w.first:
                if self._health is not None:
                    msgs.append(self._health)
                msgs.append(self.sessions_reply(0))
            w.first = False
            if msgs:
                s.send_many(msgs)

    def blocks_view(self) -> BlocksView:
        offers = self.engine.offers
        rows = [BlockOfferRow(o.offer_id, o.member, o.instrument, o.side, o.qty, o.price, o.partial,
                              bool(o.counterparty), o.ts) for o in (offers[i] for i in sorted(offers))]
        return BlocksView(rows, list(self.block_trades))

    def _instruments(self, w: _Watcher, views: dict[tuple[str, int], InstrumentView]) -> list[Any]:
        out: list[Any] = []
        changes = self.changes
        for symbol in sorted(self.engine.markets):
            count = changes.get(symbol, 0)
            if not w.first and w.seen.get(symbol) == count:
                continue
            w.seen[symbol] = count
            key = (symbol, w.depth)
            view = views.get(key)
            if view is None:
                view = views[key] = self.instrument_view(symbol, w.depth)
            chart = self._chart_points(w, symbol)
            if chart is not None:
                out.append(chart)
            out.append(view)
        return out

    def _chart_points(self, w: _Watcher, symbol: str) -> ChartView | None:
        """The chart points the watcher lacks: all of them at first, then those of the
        seconds from the last one sent on (which may have changed)."""
        points = self.charts.get(symbol)
        if not points:
            return ChartView(symbol, []) if w.first else None
        since = -1 if w.first else w.chart_from.get(symbol, -1)
        if points[-1][0] < since:
            return None
        new: list[tuple[int, int, int]] = []
        for p in reversed(points):
            if p[0] < since:
                break
            new.append(p)
        new.reverse()
        w.chart_from[symbol] = new[-1][0] if new else since
        return ChartView(symbol, new)

    def instrument_view(self, symbol: str, depth: int) -> InstrumentView:
        engine = self.engine
        m = engine.markets[symbol]
        bids, asks = engine.depth(symbol, depth)
        seq, ts = self.seqs.get(symbol, (engine.last_seq, engine.last_ts))
        vwap = m.value // m.volume if m.volume else 0
        return InstrumentView(symbol, seq, ts, m.phase, m.halted, self.halt_texts.get(symbol, "") if m.halted else "",
                              m.ref_price, m.low, m.high, m.tick, m.open_price,
                              m.high_price, m.low_price, m.last_price, vwap, m.volume, m.value, m.trades,
                              [BookLevel(*lv) for lv in bids], [BookLevel(*lv) for lv in asks])

    def _trades(self, w: _Watcher) -> list[Any]:
        """The newest trades since the last push (TRADES_PER_PUSH at most: a trade list
        shows the last ones; the chart and the statistics count them all)."""
        total = self.trades_total
        if w.trade_cursor >= total:
            return []
        kept_from = total - len(self.trades)
        start = max(w.trade_cursor, kept_from, total - TRADES_PER_PUSH)
        trades = []
        for i in range(start, total):
            t = self.trades[i - kept_from]
            trades.append(TradeRow(t.seq, t.ts, t.trade_id, t.instrument, t.price, t.qty, t.aggressor, t.buyer, t.seller))
        dropped = start - w.trade_cursor
        w.trade_cursor = total
        return [TradesView(trades, dropped)]

    # --- health and sessions -----------------------------------------------------------

    def _count_second(self) -> None:
        figures = self.server_figures()
        last = self._last_figures
        self._last_figures = figures
        per_s = {k: figures[k] - last.get(k, figures[k]) for k in ("commands", "batches")}
        extra = self.health() if self.health is not None else {}
        self._health = HealthView(
            time.time_ns(), self.engine.last_seq, per_s["commands"], per_s["batches"], figures["batch_p50_us"],
            figures["batch_p99_us"], extra.get("fsync_p50_us", -1), extra.get("fsync_p99_us", -1),
            extra.get("settlement_lag", -1), extra.get("snapshot_age_s", -1), extra.get("md_lag_ms", -1),
            figures["sessions"], figures["connecting"])
        counts = {s: (s.commands, s.refused) for s in self.sessions() if s.acked}
        previous = self._last_counts
        self._rates = {s: (c - previous.get(s, (c, r))[0], r - previous.get(s, (c, r))[1]) for s, (c, r) in counts.items()}
        self._last_counts = counts

    def health_view(self) -> HealthView | None:
        return self._health

    def sessions_reply(self, req_id: int) -> SessionsReply:
        rows = []
        for s in sorted((s for s in self.sessions() if s.acked), key=lambda s: s.session_id):
            rate = self._rates.get(s, (0, 0))
            rows.append(SessionInfo(s.session_id, s.member, s.user, int(s.role), s.peer, s.since, s.commands, s.refused,
                                    rate[0], rate[1], s.cod))
        return SessionsReply(req_id, rows)

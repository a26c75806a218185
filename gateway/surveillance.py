"""Market surveillance: alerts for the operators, raised from what the core does.

``Surveillance.on_batch(cmds, events)`` runs on the core's thread after each batch (a
server listener) and raises, through ``alert(kind, text, instrument, member)`` (the
server's: log, the operators' feed, the ``{root}/ops/alerts`` topic), each naming the
instrument, the member and the figures:

- ``price-limit``: a trade at the lower or upper limit of the day's price band;
- ``halt`` / ``resume``: an instrument halted (with the operator and the reason) or
  resumed;
- ``self-trade``: self-trade prevention stopped a member's order meeting its own (an
  attempted wash trade: cancelled or decremented), with the member and the quantity;
- ``large-holder``: a member's holding of an instrument reached its large-holder
  threshold (``large_holder`` of the instrument, configured; once a trading day each);
- ``position-limit``: an order refused by the instrument's position limit;
- ``cancel-ratio``: a member's cancels today exceed ``cancel_ratio_max`` times its
  trades (after ``cancel_ratio_min`` cancels; again each time the cancels double).

A repeat of the same kind for the same instrument and member within ``repeat_s``
seconds is counted, not raised (the next one says how many were folded into it), so a
storm of wash-trade attempts is one line a minute, not a flood. Cheap: a few dict
operations per event that matters, nothing for the others; no I/O.

Other alerts come from their owners through the same ``alert``: lockouts (the
authenticator), dropped sessions (the server), the journal refusing writes and
settlement lagging behind (the service).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from engine.messages import (
    Accepted,
    Cancelled,
    CancelReason,
    DayClosed,
    Decremented,
    Halt,
    Phase,
    Reason,
    Rejected,
    StatusChanged,
    Trade,
)

HALTED = int(Phase.HALTED)
SELF_TRADE = int(CancelReason.SELF_TRADE)
USER, MASS = int(CancelReason.USER), int(CancelReason.MASS_CANCEL)  # a member's own cancels
POSITION_LIMIT = int(Reason.POSITION_LIMIT)

Alert = Callable[[str, str, str, str], None]  # (kind, text, instrument, member)


def yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


class Surveillance:
    def __init__(self, core: Any, alert: Alert, *, large_holder: dict[str, int] | None = None,
                 cancel_ratio_max: float = 20.0, cancel_ratio_min: int = 200, repeat_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.core = core
        self.engine = core.engine
        self.alert = alert
        self.large_holder = {k: v for k, v in (large_holder or {}).items() if v > 0}
        self.cancel_ratio_max = cancel_ratio_max
        self.cancel_ratio_min = cancel_ratio_min
        self.repeat_s = repeat_s
        self.clock = clock
        self.cancels: dict[str, int] = {}  # member -> its cancels today
        self.trades: dict[str, int] = {}  # member -> the trades it was a party to today
        self.ratio_alerted: dict[str, int] = {}  # member -> the cancel count of its last cancel-ratio alert
        self.holders: set[tuple[str, str]] = set()  # (member, instrument) told today as large holders
        self._last: dict[tuple[str, str, str], float] = {}  # (kind, instrument, member) -> when last raised
        self._folded: dict[tuple[str, str, str], int] = {}

    def raise_(self, kind: str, text: str, instrument: str = "", member: str = "") -> None:
        key = (kind, instrument, member)
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.repeat_s:
            self._folded[key] = self._folded.get(key, 0) + 1
            return
        folded = self._folded.pop(key, 0)
        self._last[key] = now
        if folded:
            text += f" ({folded} more like it since the last alert)"
        self.alert(kind, text, instrument, member)

    def on_batch(self, cmds: list[Any], events: list[Any]) -> None:
        # Runs after every batch, whether anyone watches or not: the common events
        # (acknowledgements, trades, members' cancels) take the short paths, counted
        # inline; what may raise an alert goes to a method.
        markets = self.engine.markets
        first = cmds[0].seq if cmds else 0
        trades, cancels = self.trades, self.cancels
        ratio_min = self.cancel_ratio_min
        large = self.large_holder
        for ev in events:
            t = type(ev)
            if t is Accepted:
                continue
            if t is Trade:
                buyer, seller = ev.buyer, ev.seller
                trades[buyer] = trades.get(buyer, 0) + 1
                if seller != buyer:
                    trades[seller] = trades.get(seller, 0) + 1
                market = markets[ev.instrument]
                if ev.price <= market.low or ev.price >= market.high or large:
                    self._trade(ev, market, buyer, seller)
            elif t is Cancelled:
                reason = ev.reason
                if reason == SELF_TRADE:
                    self.raise_("self-trade", f"self-trade prevention cancelled order {ev.order_id} of {ev.member} "
                                f"({ev.qty} t): it met an order of the same member", ev.instrument, ev.member)
                elif reason == USER or reason == MASS:
                    member = ev.member
                    count = cancels[member] = cancels.get(member, 0) + 1
                    if count >= ratio_min:
                        self._cancel(member, count)
            elif t is Decremented:
                self.raise_("self-trade", f"self-trade prevention took {ev.qty} t off order {ev.order_id} of "
                            f"{ev.member} ({ev.qty_left} t left): it met an order of the same member",
                            ev.instrument, ev.member)
            elif t is Rejected:
                if ev.reason == POSITION_LIMIT:
                    self.raise_("position-limit", f"an order of {ev.member} refused: {ev.text}",
                                self._instrument_of(cmds, ev.seq - first), ev.member)
            elif t is StatusChanged:
                self._status(ev, cmds, first)
            elif t is DayClosed:
                self.cancels.clear()
                self.trades.clear()
                self.ratio_alerted.clear()
                self.holders.clear()

    def _trade(self, ev: Trade, market: Any, buyer: str, seller: str) -> None:
        """A trade at the band's limit, or in an instrument with a large-holder threshold."""
        if ev.price <= market.low or ev.price >= market.high:
            edge = "lower" if ev.price <= market.low else "upper"
            self.raise_("price-limit", f"{ev.instrument} traded {ev.qty} t at {yuan(ev.price)}, the {edge} limit of "
                        f"the day's band [{yuan(market.low)}, {yuan(market.high)}] (trade {ev.trade_id}, "
                        f"buyer {buyer}, seller {seller})", ev.instrument, buyer if edge == "upper" else seller)
        threshold = self.large_holder.get(ev.instrument)
        if threshold and (buyer, ev.instrument) not in self.holders:
            held = self.core.ledger.holding(buyer, ev.instrument)
            if held >= threshold:
                self.holders.add((buyer, ev.instrument))
                self.raise_("large-holder", f"{buyer} holds {held:,} t of {ev.instrument}, at or above the "
                            f"large-holder threshold of {threshold:,} t (after trade {ev.trade_id})",
                            ev.instrument, buyer)

    def _cancel(self, member: str, cancels: int) -> None:
        """A member's cancel, its ``cancels``-th today (at least cancel_ratio_min)."""
        trades = self.trades.get(member, 0)
        if cancels <= self.cancel_ratio_max * max(trades, 1):
            return
        last = self.ratio_alerted.get(member, 0)
        if last and cancels < 2 * last:
            return
        self.ratio_alerted[member] = cancels
        self.raise_("cancel-ratio", f"{member} cancelled {cancels:,} orders today against {trades:,} trades "
                    f"(more than {self.cancel_ratio_max:g} cancels a trade)", "", member)

    def _status(self, ev: StatusChanged, cmds: list[Any], first: int) -> None:
        cmd = cmds[ev.seq - first] if cmds and 0 <= ev.seq - first < len(cmds) else None
        if ev.phase == HALTED:
            why = f": {cmd.text}" if type(cmd) is Halt and cmd.text else ""
            who = f" by {cmd.actor}" if type(cmd) is Halt and cmd.actor else ""
            self.raise_("halt", f"{ev.instrument} halted{who}{why}", ev.instrument)
        elif cmd is not None and type(cmd).__name__ == "Resume":
            self.raise_("resume", f"{ev.instrument} resumed by {cmd.actor or 'the exchange'}", ev.instrument)

    @staticmethod
    def _instrument_of(cmds: list[Any], index: int) -> str:
        if 0 <= index < len(cmds):
            return str(getattr(cmds[index], "instrument", ""))
        return ""

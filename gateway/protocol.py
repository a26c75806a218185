"""The member wire protocol: session messages, reports and the codecs built once.

A frame is a 4-byte big-endian length and a msgpack body (see ``gateway.framing``). The
body is one msgspec Struct encoded as an array whose first element is an integer tag.
``docs/protocol.md`` specifies every message for implementers in other languages.

Tags:
- 1-19: engine commands (``engine.messages``), sent as they are: the gateway overwrites
  ``member`` from the session (a trader's) or ``actor`` (staff), and the sequencer
  overwrites ``seq``/``ts`` when it stamps them.
- 20-49: registry commands (``settlement.messages``); the gateway overwrites ``actor``
  with the session's ``member/user``.
- 50-99: inbound session messages defined here (logon, heartbeat, queries).
- 101-149: engine and settlement events; the ones a member may see travel inside a
  ``Report`` unchanged (one definition), except ``Trade``, which names both members and
  is turned into one ``Fill`` per side.
- 150-199: outbound session messages defined here.

Application messages to a member (order outcomes, fills, cancels, amends, market status)
travel in a ``Report`` carrying the member's outbound sequence number ``seq_out``
(1, 2, 3 ... per member, shared by all of the member's sessions). Only what the core
applied is sequenced, because only that is journaled and can be rebuilt after a restart:
a command the gateway refuses itself (throttle, role, field checks, journal unavailable)
is answered by a ``Report`` with ``seq_out`` 0, which is not replayed. Query replies,
session rejects, heartbeats and resends are not sequenced either.
"""

from __future__ import annotations

import functools
import operator
from enum import IntEnum
from typing import Annotated, Any

import msgspec

from engine.messages import (
    ENGINE_EVENTS,
    TEXT_MAX,
    Accepted,
    Amend,
    Amended,
    AuctionAnnounce,
    AuctionAnnounced,
    AuctionBid,
    AuctionBidAmend,
    AuctionBidWithdraw,
    AuctionFill,
    AuctionResult,
    BidPlaced,
    BlockAccept,
    BlockOffer,
    BlockOffered,
    BlockTraded,
    BlockWithdraw,
    BlockWithdrawn,
    Cancel,
    Cancelled,
    Coid,
    DayClosed,
    Decremented,
    EndOfDay,
    Expired,
    Halt,
    HitOrder,
    MassCancel,
    MemberStatus,
    Name,
    NewOrder,
    Noted,
    ReinstateMember,
    Rejected,
    Resume,
    StatusChanged,
    SuspendMember,
    Symbol,
    Text,
)
from settlement.messages import (
    REGISTRY_COMMANDS,
    Allocate,
    ApproveVerification,
    CloseCompliance,
    PreAllocate,
    RegistryDone,
    RegistryRejected,
    SetObligation,
    SubmitVerification,
)

PROTOCOL_VERSION = 1
SECRET_MAX = TEXT_MAX  # characters of a secret (a longer one is refused before hashing)
Secret = Annotated[str, msgspec.Meta(max_length=SECRET_MAX)]


class Role(IntEnum):
    TRADER = 1  # enters, amends and cancels its member's orders; queries its member
    READ_ONLY = 2  # queries its member only
    OPERATOR = 3  # halts, resumes, mass cancels anyone, closes the day; queries all; never trades
    CLERK = 4  # registry operations (accounts, deposits, withdrawals, transfers ...)
    AUTHORITY = 5  # allocation and issue of allowances, obligations, approval of verifications, the year's close
    VERIFIER = 6  # submits verified output and emissions (the authority approves them)


STAFF_ROLES = (Role.OPERATOR, Role.CLERK, Role.AUTHORITY, Role.VERIFIER)


def is_staff(role: int, member: str, operator_member: str) -> bool:
    """Exchange staff: operators, clerks, the authority, and read-only users of the
    exchange's own member (the staff view). Each has a stream of its own and sees every
    member."""
    return role in STAFF_ROLES or (role == Role.READ_ONLY and member == operator_member)


ROLE_NAMES = {"trader": Role.TRADER, "read_only": Role.READ_ONLY, "operator": Role.OPERATOR,
              "clerk": Role.CLERK, "authority": Role.AUTHORITY, "verifier": Role.VERIFIER}


class GatewayReason(IntEnum):
    """Reason codes of the gateway (100-199). Engine codes (1-99) are in
    ``engine.messages.Reason``; settlement uses 200+."""

    NOT_LOGGED_ON = 100  # a message other than Logon before logon
    THROTTLED = 101  # over the session's order rate
    NOT_PERMITTED = 102  # the user's role may not send this message
    MALFORMED = 103  # the frame did not decode as an inbound message
    FRAME_TOO_LARGE = 104  # the length prefix exceeds the maximum frame size
    BAD_CREDENTIALS = 105  # unknown member/user or wrong secret (never says which)
    LOCKED = 106  # too many failed logons; try again later
    UNSUPPORTED_VERSION = 107  # the logon's protocol version is not spoken here
    ALREADY_LOGGED_ON = 108  # a second Logon on a logged-on session
    SEQ_AHEAD = 109  # last_seq is beyond the member's outbound sequence
    HEARTBEAT_TIMEOUT = 110  # the peer was silent too long
    SHUTDOWN = 111  # the exchange is shutting down
    SLOW_CONSUMER = 112  # the peer does not read its reports fast enough (dropped, no message)
    TOO_MANY_MALFORMED = 113  # repeated malformed frames
    FLOODING = 114  # far over the throttle
    LOGOUT = 115  # the client asked to log out
    INVALID_FIELD = 116  # a field the gateway checks (e.g. client order id length)
    REPLAY_TRIMMED = 117  # reports older than the retained history cannot be replayed
    SESSION_LIMIT = 118  # too many connections to the server (``sessions_max``)
    UNKNOWN_INSTRUMENT = 119  # a query named an instrument that does not exist
    UNKNOWN_MEMBER = 120  # an operator query or mass cancel named an unknown member
    JOURNAL_UNAVAILABLE = 121  # the command could not be made durable, so it was not entered
    FRAME_TIMEOUT = 122  # a frame begun was not completed within the session's frame deadline
    DISCONNECTED = 123  # an operator ended the session
    UNKNOWN_ORDER = 124  # an order status query named no order of the member's trading day


class CodMode(IntEnum):
    """Cancel-on-disconnect choice in the logon."""

    DEFAULT = 0  # on for traders, off for every other role
    ON = 1
    OFF = 2


class Liquidity(IntEnum):
    MAKER = 1  # the resting order
    TAKER = 2  # the incoming order


class Msg(msgspec.Struct, array_like=True, gc=False, tag_field="t"):
    """Base of the session messages defined here."""


# --- inbound session messages (50-99) ------------------------------------------------


class Logon(Msg, tag=50):
    version: int
    member: Name
    user: Name
    secret: Secret
    last_seq: int = 0  # the last Report.seq_out this member's client has seen
    cod: int = CodMode.DEFAULT
    heartbeat_ms: int = 0  # 0: the server's default

    def __repr__(self) -> str:
        # The secret never reaches a log line, an assertion message or a traceback.
        return (f"Logon(version={self.version!r}, member={self.member!r}, user={self.user!r}, secret=<hidden>, "
                f"last_seq={self.last_seq!r}, cod={self.cod!r}, heartbeat_ms={self.heartbeat_ms!r})")

    __str__ = __repr__


class Logout(Msg, tag=51):
    text: Text = ""


class Heartbeat(Msg, tag=52):
    """Sent by the client when it has sent nothing for a heartbeat interval."""


class QueryOrders(Msg, tag=53):
    """The open orders of the session's member (staff: ``member``, "" = all), in order
    id order, at most ``ORDERS_PER_REPLY`` after ``after_order_id``. With ``best_levels``
    and an ``instrument``: the orders resting at the best ``best_levels`` price levels
    of each side instead (bids then asks, best first, in time priority; at most
    ``ORDERS_PER_REPLY``): what is near the top of a book, at a cost that does not
    grow with the book."""

    req_id: int
    instrument: Symbol = ""
    member: Name = ""
    after_order_id: int = 0
    best_levels: int = 0


class QueryBalances(Msg, tag=54):
    req_id: int
    member: Name = ""  # operators only; others always get their own member


class QueryBook(Msg, tag=55):
    req_id: int
    instrument: Symbol


class QueryInstruments(Msg, tag=56):
    req_id: int
    instrument: Symbol = ""  # "" = all


class Unlock(Msg, tag=57):
    """An operator lifts the logon lockout of a user (from every address). Answered
    with an ``Unlocked``; recorded in the journal as a ``Note`` with ``text``."""

    req_id: int
    member: Name
    user: Name
    text: Text = ""  # the operator's reason


class Watch(Msg, tag=58):
    """Exchange staff (an operator, or a read-only user of the exchange's own member)
    start the operator feed on this session: every ``interval_ms`` the instruments that
    changed (``InstrumentView``, ``depth`` levels a side), the trades with their
    members (``TradesView``), alerts (``AlertView``) as they come, and each second the
    exchange's health (``HealthView``) and its sessions (``SessionsReply``). The first
    push holds everything (with each instrument's ``ChartView``). ``depth`` 0 stops it.
    The feed is conflated: a client that does not keep up gets fewer, fresher views."""

    req_id: int
    depth: int = 10
    interval_ms: int = 250


class QuerySessions(Msg, tag=59):
    """The sessions logged on now (exchange staff)."""

    req_id: int


class QueryOrderStatus(Msg, tag=61):
    """The state of the member's orders of the trading day, finished ones too: one order
    by ``order_id`` or by ``coid`` (a rejected order has no order id: only its coid
    finds it); with neither, the day's accepted orders in order id order, at most
    ``ORDERS_PER_REPLY`` after ``after_order_id`` (``instrument`` "" = all). Staff name
    the ``member``."""

    req_id: int
    order_id: int = 0
    coid: Coid = ""
    member: Name = ""
    after_order_id: int = 0
    instrument: Symbol = ""


class QueryTrades(Msg, tag=62):
    """The member's fills of the trading day (one row per side of a trade it took part
    in), in trade id order, at most ``TRADES_PER_REPLY`` after ``after_trade_id``
    (``instrument`` "" = all). Staff name the ``member``."""

    req_id: int
    member: Name = ""
    instrument: Symbol = ""
    after_trade_id: int = 0


class QueryMarketTrades(Msg, tag=63):
    """The newest trades of an instrument (anyone's, without members): at most ``count``
    (1 to ``MARKET_TRADES_MAX``), newest first, of those since the exchange started."""

    req_id: int
    instrument: Symbol
    count: int = 20


class QueryBlockOffers(Msg, tag=64):
    """The open block agreement offers a member may accept (open to all, or naming it)
    and its own; staff see all. ``instrument`` "" = all."""

    req_id: int
    instrument: Symbol = ""


class QueryAuctions(Msg, tag=65):
    """The auctions announced and not yet cleared, with their terms (no bids: they are
    sealed)."""

    req_id: int


class QueryCompliance(Msg, tag=66):
    """A compliance year's records: a member its own, staff any member's (``member``) or
    every covered entity's ("")."""

    req_id: int
    year: int
    member: Name = ""


class Disconnect(Msg, tag=60):
    """An operator ends a session (``SessionClosed(DISCONNECTED)``); answered with a
    ``Disconnected``; recorded in the journal as a ``Note`` with ``text``."""

    req_id: int
    session_id: int
    text: Text = ""


# --- outbound session messages (150-199) ---------------------------------------------


class LogonAck(Msg, tag=150):
    version: int
    member: str
    user: str
    role: int
    next_seq: int  # the member's last seq_out; replayed reports up to it follow
    heartbeat_ms: int
    cod: bool
    session_id: int


class LogonReject(Msg, tag=151):
    reason: int
    text: str


class ServerHeartbeat(Msg, tag=152):
    ts: int  # server time, ns since the epoch


class SessionReject(Msg, tag=153):
    """An inbound frame could not be taken (malformed, out of session order). Not
    sequenced; ``index`` counts the inbound frames of this session from 1."""

    index: int
    reason: int
    text: str


class SessionClosed(Msg, tag=154):
    """The server ends the session; the connection closes after it."""

    reason: int
    text: str


class Notice(Msg, tag=155):
    """Unsequenced information for the session (e.g. replay limits)."""

    code: int
    text: str


class ReplayDone(Msg, tag=156):
    """Sent once per logon, after the replay of missed reports and before any live
    report: everything up to ``last_seq`` has been sent (``last_seq`` equals
    ``LogonAck.next_seq`` unless reports were made during the replay, which it then
    includes)."""

    last_seq: int


class Fill(Msg, tag=170):
    """One side of a trade, as its member sees it: the counterparty is never named."""

    seq: int
    ts: int
    order_id: int
    coid: str
    trade_id: int
    instrument: str
    side: int
    price: int
    qty: int
    liquidity: int
    leaves: int  # the order's open quantity after this fill


ReportBody = (
    Accepted | Rejected | Fill | Cancelled | Amended | Expired | Decremented | StatusChanged | DayClosed
    | MemberStatus | Noted | RegistryDone | RegistryRejected | BlockOffered | BlockTraded | BlockWithdrawn
    | AuctionAnnounced | BidPlaced | AuctionFill | AuctionResult
)


class Report(Msg, tag=160):
    """An application message for a member, in the member's outbound sequence; ``seq_out``
    0 for a refusal by the gateway, which is outside the sequence and not replayed.
    ``index``, only in a refusal by the gateway, is the session's inbound frame index of
    the refused command (counted as ``SessionReject.index``); 0 otherwise."""

    seq_out: int
    body: ReportBody
    index: int = 0


class Resent(Msg, tag=161):
    """The original outcome of a client order id sent again (a retransmission); not a
    new report: ``seq_out`` is where the original sits in the sequence."""

    seq_out: int
    body: ReportBody


class OpenOrder(msgspec.Struct, array_like=True, gc=False):
    order_id: int
    member: str
    coid: str
    instrument: str
    side: int
    price: int
    qty: int  # open quantity
    filled: int
    ts: int


class OrdersReply(Msg, tag=171):
    req_id: int
    orders: list[OpenOrder]
    more: bool  # more orders follow after the last one here: ask again with after_order_id


class Balance(msgspec.Struct, array_like=True, gc=False):
    account: str
    asset: str
    balance: int
    held: int
    available: int


class BalancesReply(Msg, tag=172):
    req_id: int
    balances: list[Balance]


class BookLevel(msgspec.Struct, array_like=True, gc=False):
    price: int
    qty: int
    orders: int


class BookReply(Msg, tag=173):
    req_id: int
    instrument: str
    phase: int
    bids: list[BookLevel]
    asks: list[BookLevel]


class InstrumentInfo(msgspec.Struct, array_like=True, gc=False):
    symbol: str
    tick: int
    lot: int
    qty_min: int
    qty_max: int
    ref_price: int
    band_low: int
    band_high: int
    phase: int
    halted: bool
    last_price: int
    volume: int


class InstrumentsReply(Msg, tag=174):
    req_id: int
    instruments: list[InstrumentInfo]


class QueryRejected(Msg, tag=175):
    req_id: int
    reason: int
    text: str


class Unlocked(Msg, tag=176):
    req_id: int
    member: str
    user: str
    locks: int  # the lockouts lifted (one per source address that was locked out)


class Disconnected(Msg, tag=177):
    req_id: int
    session_id: int
    found: bool  # False: no such session is connected


class OrderState(IntEnum):
    """An order's state in ``OrderStatus``."""

    OPEN = 1  # resting (partly filled or not)
    FILLED = 2  # filled completely
    CANCELLED = 3  # cancelled (``reason``: the cancel reason); also an IOC/FOK/market rest
    EXPIRED = 4  # expired at the end of the day
    REJECTED = 5  # refused by the exchange's core (``reason``: the reject reason); no order id


class OrderStatus(msgspec.Struct, array_like=True, gc=False):
    order_id: int  # 0 for a rejected order
    member: str
    coid: str
    instrument: str
    side: int
    ord_type: int
    tif: int
    price: int  # the limit now (an amend changes it); a market order's band limit
    qty: int  # ordered: filled + open (an amend changes it)
    filled: int
    leaves: int  # open now (0 once finished)
    state: int  # OrderState
    reason: int  # why it was cancelled or rejected (CancelReason, Reason), else 0
    ts: int  # accepted (or rejected)
    last_ts: int  # the last change (fill, amend, cancel, expiry)


class OrderStatusReply(Msg, tag=178):
    req_id: int
    orders: list[OrderStatus]  # empty when the order named is not one of the day's
    more: bool  # listing the day: more orders after the last one here


class TradeFill(msgspec.Struct, array_like=True, gc=False):
    trade_id: int
    seq: int
    ts: int
    order_id: int
    coid: str
    instrument: str
    side: int
    price: int
    qty: int
    liquidity: int  # 1 maker, 2 taker
    fee: int  # fen: the trading and registry fees of this side (settled with the trade)


class MarketTrade(msgspec.Struct, array_like=True, gc=False):
    trade_id: int
    ts: int
    price: int
    qty: int
    aggressor: int  # the side of the incoming order (1 buy, 2 sell)


class MarketTradesReply(Msg, tag=186):
    req_id: int
    instrument: str
    trades: list[MarketTrade]  # newest first


class BlockOfferRow(msgspec.Struct, array_like=True, gc=False):
    offer_id: int
    member: str  # the offerer: only to itself and to staff ("" to other members)
    instrument: str
    side: int  # the offerer's
    qty: int  # what is left
    price: int
    partial: bool  # whether a part may be accepted
    named: bool  # it names a counterparty (to a member: itself)
    ts: int


class BlockOffersReply(Msg, tag=187):
    req_id: int
    offers: list[BlockOfferRow]  # in offer id order


class AuctionRow(msgspec.Struct, array_like=True, gc=False):
    auction_id: int
    seller: str
    instrument: str
    qty: int
    floor: int
    ceiling: int
    start_ts: int
    end_ts: int
    pricing: int
    bid_min: int
    bid_max: int
    cancel_if_short: bool


class AuctionsReply(Msg, tag=189):
    req_id: int
    auctions: list[AuctionRow]  # in auction id order


class ComplianceRow(msgspec.Struct, array_like=True, gc=False):
    account: str
    industry: str
    allocated: int  # t: pre-allocated and trued up
    deducted: int  # t taken off the year's allocation for the year before's shortfall
    emissions: int  # t verified
    obligation: int  # t to surrender (the verified emissions and what a true-up could not take back)
    surrendered: int  # t, offsets included
    offsets: int  # t of CCER among them
    shortfall: int  # t: at the close, or still missing while open
    penalty: int  # fen, recorded at the close
    expired: int  # t cancelled by the banking cap at the close
    closed: bool


class ComplianceReply(Msg, tag=190):
    req_id: int
    year: int
    rows: list[ComplianceRow]  # in account order


class TradesReply(Msg, tag=179):
    req_id: int
    trades: list[TradeFill]
    more: bool  # more after the last one here: ask again with after_trade_id


# --- the operator feed (Watch) ----------------------------------------------------------


class InstrumentView(Msg, tag=180):
    """One instrument as it is now: phase, halt, band, the day's statistics and the
    best ``depth`` levels each side. Prices in fen; 0 for a price that does not exist
    yet (no trade today)."""

    instrument: str
    seq: int  # of the last event that touched it
    ts: int
    phase: int
    halted: bool
    halt_text: str  # why it is halted: the operator's reason and name ("" when not halted)
    ref_price: int
    band_low: int
    band_high: int
    tick: int
    open: int
    high: int
    low: int
    last: int
    vwap: int  # the closing price so far: the volume-weighted average of the day's trades
    volume: int
    value: int
    trades: int
    bids: list[BookLevel]
    asks: list[BookLevel]


class TradeRow(msgspec.Struct, array_like=True, gc=False):
    seq: int
    ts: int
    trade_id: int
    instrument: str
    price: int
    qty: int
    aggressor: int  # the taker's side
    buyer: str
    seller: str


class TradesView(Msg, tag=181):
    """The newest trades since the last push (at most 100), oldest first; ``dropped``
    counts the older ones of the interval left out (the statistics and the chart count
    them)."""

    trades: list[TradeRow]
    dropped: int


class ChartView(Msg, tag=182):
    """The day's price series of one instrument: per second with a trade, the last price
    and the volume of that second (``[ts_s, price, volume]``). The first push holds the
    whole day; later ones the seconds from the last one sent on (which replace those
    the client has)."""

    instrument: str
    points: list[tuple[int, int, int]]


class AlertView(Msg, tag=183):
    ts: int
    kind: str  # price-limit, halt, resume, self-trade, large-holder, position-limit, cancel-ratio, lockout, ...
    instrument: str
    member: str
    text: str


class BlockTradeRow(msgspec.Struct, array_like=True, gc=False):
    seq: int
    ts: int
    trade_id: int
    offer_id: int
    instrument: str
    price: int
    qty: int
    buyer: str
    seller: str


class BlocksView(Msg, tag=188):
    """Block agreement trading as it is: every open offer (with its member: staff see
    them) and the newest block trades of the day (at most 100), when either changed."""

    offers: list[BlockOfferRow]
    trades: list[BlockTradeRow]


class HealthView(Msg, tag=184):
    ts: int
    last_seq: int
    commands_per_s: int
    batches_per_s: int
    batch_p50_us: int  # applying a batch to the core, over the last second
    batch_p99_us: int
    fsync_p50_us: int  # the journal's group commits, over the last second
    fsync_p99_us: int
    settlement_lag: int  # commands applied but not yet settled into the registry store
    snapshot_age_s: int  # since the newest durable snapshot (-1: none)
    md_lag_ms: int  # the market data publisher's oldest unpublished change (-1: not publishing)
    sessions: int
    connecting: int  # connections not logged on yet


class SessionInfo(msgspec.Struct, array_like=True, gc=False):
    session_id: int
    member: str
    user: str
    role: int
    peer: str
    since: int  # logon time, ns since the epoch
    commands: int  # commands this session sent
    refused: int  # of them, refused by the gateway
    commands_per_s: int  # over the last second
    refused_per_s: int
    cod: bool


class SessionsReply(Msg, tag=185):
    req_id: int  # 0 in the operator feed
    sessions: list[SessionInfo]


ORDERS_PER_REPLY = 500
TRADES_PER_REPLY = 500
MARKET_TRADES_MAX = 50  # trades an instrument keeps for QueryMarketTrades
BOOK_LEVELS = 5

SESSION_INBOUND: tuple[type, ...] = (Logon, Logout, Heartbeat, QueryOrders, QueryBalances, QueryBook, QueryInstruments,
                                     Unlock, Watch, QuerySessions, Disconnect, QueryOrderStatus, QueryTrades,
                                     QueryMarketTrades, QueryBlockOffers, QueryAuctions, QueryCompliance)
QUERIES: tuple[type, ...] = (QueryOrders, QueryBalances, QueryBook, QueryInstruments, QueryOrderStatus, QueryTrades,
                             QueryMarketTrades, QueryBlockOffers, QueryAuctions, QueryCompliance)
TRADER_COMMANDS: tuple[type, ...] = (NewOrder, Cancel, Amend, MassCancel, HitOrder, BlockOffer, BlockAccept, BlockWithdraw,
                                     AuctionBid, AuctionBidAmend, AuctionBidWithdraw)
OPERATOR_COMMANDS: tuple[type, ...] = (Halt, Resume, MassCancel, EndOfDay, AuctionAnnounce)
ENGINE_INBOUND: tuple[type, ...] = (NewOrder, Cancel, Amend, MassCancel, HitOrder, BlockOffer, BlockAccept, BlockWithdraw,
                                    AuctionBid, AuctionBidAmend, AuctionBidWithdraw, AuctionAnnounce,
                                    Halt, Resume, EndOfDay, SuspendMember,
                                    ReinstateMember)


def _registry_commands() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(clerk commands, authority commands, verifier commands): allocation, obligations,
    approval of verifications and the year's close belong to the issuing authority,
    submitting verified figures to verifiers, every other registry operation to
    registry clerks."""
    authority = (Allocate, SetObligation, PreAllocate, ApproveVerification, CloseCompliance)
    verifier = (SubmitVerification,)
    clerk = tuple(c for c in REGISTRY_COMMANDS if c not in authority and c not in verifier)
    return clerk, authority, verifier


CLERK_COMMANDS, AUTHORITY_COMMANDS, VERIFIER_COMMANDS = _registry_commands()
REGISTRY_INBOUND: tuple[type, ...] = CLERK_COMMANDS + AUTHORITY_COMMANDS + VERIFIER_COMMANDS
INBOUND: tuple[type, ...] = ENGINE_INBOUND + REGISTRY_INBOUND + SESSION_INBOUND
OUTBOUND: tuple[type, ...] = (
    LogonAck, LogonReject, ServerHeartbeat, SessionReject, SessionClosed, Notice, ReplayDone, Report, Resent,
    OrdersReply, BalancesReply, BookReply, InstrumentsReply, QueryRejected, Unlocked, Disconnected,
    OrderStatusReply, TradesReply, MarketTradesReply, BlockOffersReply, AuctionsReply, ComplianceReply,
    InstrumentView, TradesView, ChartView, AlertView, HealthView, SessionsReply, BlocksView,
)

InboundMessage: Any = functools.reduce(operator.or_, INBOUND)
OutboundMessage: Any = functools.reduce(operator.or_, OUTBOUND)
# The tags of what only the exchange sends (events and outbound messages): a client
# that sends one is told NOT_PERMITTED, not MALFORMED (docs/protocol.md 3.8).
EXCHANGE_ONLY_TAGS: dict[int, str] = {
    t.__struct_config__.tag: t.__name__  # type: ignore[attr-defined]
    for t in (*OUTBOUND, *ENGINE_EVENTS, RegistryDone, RegistryRejected, Fill)
}


def inbound_decoder() -> msgspec.msgpack.Decoder[Any]:
    """The server's decoder of every inbound message (build once, reuse)."""
    return msgspec.msgpack.Decoder(InboundMessage)


def outbound_decoder() -> msgspec.msgpack.Decoder[Any]:
    """The client's decoder of every outbound message (build once, reuse)."""
    return msgspec.msgpack.Decoder(OutboundMessage)

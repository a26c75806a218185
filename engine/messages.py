"""Commands the core applies and events it emits: the one definition of each message.

Every message is a msgspec Struct encoded as a msgpack (or JSON) array whose first
element is an integer tag. A command decoded from the wire is the very object the
sequencer stamps, the journal stores and the engine applies; nothing is copied into
look-alike classes. The engine fills in ``seq`` and ``ts`` through the sequencer, so
clients send them as 0.

Units: prices are integers in the instrument's price unit (fen, CNY 0.01, for CEA);
quantities are integers in tonnes; timestamps are integer nanoseconds since the Unix
epoch (UTC). Enumerations travel as plain integers; the IntEnum classes below name them.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Annotated, Final

import msgspec

# --- bounded text ---------------------------------------------------------------------
# Every string a command carries has a maximum length, checked when it is decoded (in C,
# before anything is journaled): a peer cannot make the exchange keep, journal, snapshot
# or echo back text of its choosing at any length. Registry commands and the gateway's
# own messages use the same limits.

NAME_MAX: Final = 64  # a member id, user name or account id
COID_MAX: Final = 36  # a client order id (a UUID fits)
SYMBOL_MAX: Final = 16  # an instrument or asset symbol
ACTOR_MAX: Final = 2 * NAME_MAX + 1  # "member/user"
TEXT_MAX: Final = 256  # free text: an operator's reason, a logout's words

Name = Annotated[str, msgspec.Meta(max_length=NAME_MAX)]
Coid = Annotated[str, msgspec.Meta(max_length=COID_MAX)]
Symbol = Annotated[str, msgspec.Meta(max_length=SYMBOL_MAX)]
Actor = Annotated[str, msgspec.Meta(max_length=ACTOR_MAX)]
Text = Annotated[str, msgspec.Meta(max_length=TEXT_MAX)]

# --- enumerations -----------------------------------------------------------------


class Side(IntEnum):
    BUY = 1
    SELL = 2


class OrdType(IntEnum):
    LIMIT = 1
    MARKET = 2


class TimeInForce(IntEnum):
    DAY = 1
    IOC = 2
    FOK = 3


class Stp(IntEnum):
    """Self-trade prevention mode; the incoming order's mode decides."""

    DEFAULT = 0  # the engine's configured default
    CANCEL_RESTING = 1
    CANCEL_INCOMING = 2
    CANCEL_BOTH = 3
    DECREMENT = 4


class Phase(IntEnum):
    CLOSED = 0
    CONTINUOUS = 1
    HALTED = 2


class Reason(IntEnum):
    """Why a command was rejected. Codes below 100 are the engine's; the gateway and
    settlement use their own ranges (100+, 200+)."""

    UNKNOWN_INSTRUMENT = 1
    OFF_TICK = 2
    OFF_LOT = 3
    QTY_OUT_OF_RANGE = 4
    PRICE_OUTSIDE_BAND = 5
    MARKET_CLOSED = 6
    INSTRUMENT_HALTED = 7
    INSUFFICIENT_FUNDS = 8
    INSUFFICIENT_HOLDINGS = 9
    DUPLICATE_CLIENT_ORDER_ID = 10
    UNKNOWN_ORDER = 11
    NOT_YOUR_ORDER = 12
    INVALID_FIELD = 13
    TARGET_NOT_IN_BEST_LEVELS = 14
    TARGET_IS_OWN_ORDER = 15
    AMEND_NO_CHANGE = 16
    NOT_HALTED = 17
    ALREADY_HALTED = 18
    POSITION_LIMIT = 19  # a buy would take the member past the instrument's position_max
    MEMBER_SUSPENDED = 20  # the member's trading is suspended by the operator
    ALREADY_SUSPENDED = 21
    NOT_SUSPENDED = 22
    BLOCK_TOO_SMALL = 23  # a block offer under the instrument's block minimum
    BLOCK_PRICE_OUT_OF_RANGE = 24  # a block offer's price outside the block band around the previous close
    BLOCK_SESSION_CLOSED = 25  # block trading only in the block session (the schedule's last window)
    UNKNOWN_OFFER = 26  # no open block offer with that id for this member (one naming another member is none)
    OFFER_IS_YOURS = 27  # a member cannot accept its own offer
    PARTIAL_NOT_ALLOWED = 28  # the offer is all-or-nothing and the quantity is not all of it
    UNKNOWN_AUCTION = 29  # no auction with that id is announced (or it has closed)
    AUCTION_NOT_OPEN = 30  # outside the auction's bidding window
    BID_PRICE_OUT_OF_RANGE = 31  # a bid below the auction's floor or above its ceiling
    BID_SIZE_OUT_OF_RANGE = 32  # a bid outside the auction's minimum and maximum bid sizes
    UNKNOWN_BID = 33  # no bid of this member with that id in the auction
    SELLER_CANNOT_BID = 34  # the auction's seller may not bid in it
    STAFF_MAY_NOT_TRADE = 35  # a staff account (regulator, registry, exchange, verifier) may not trade


class CancelReason(IntEnum):
    USER = 1  # the member asked
    IOC_REST = 2  # the unfilled rest of an IOC, FOK or market order
    SELF_TRADE = 3  # self-trade prevention
    HALT = 4  # an operator halt that cancels resting orders
    MASS_CANCEL = 5  # a mass cancel by the member or an operator
    DISCONNECT = 6  # the gateway's cancel-on-disconnect (a mass cancel)
    SUSPENDED = 7  # the operator suspended the member's trading and cancelled its orders


# --- commands ---------------------------------------------------------------------


class Command(msgspec.Struct, array_like=True, gc=False, tag_field="t"):
    """Base of all commands; ``seq`` and ``ts`` are stamped by the sequencer."""


class NewOrder(Command, tag=1):
    member: Name
    coid: Coid  # client order id, unique per member per trading day
    instrument: Symbol
    side: int
    qty: int
    price: int = 0  # ignored for market orders
    # Plain int defaults: an IntEnum member would make every comparison and hash in
    # the engine's hot path take the slow, subclass-aware route.
    ord_type: int = int(OrdType.LIMIT)
    tif: int = int(TimeInForce.DAY)
    stp: int = int(Stp.DEFAULT)
    seq: int = 0
    ts: int = 0


class Cancel(Command, tag=2):
    """Cancel one open order; ``member`` must be the order's member, whoever sends it.
    ``actor`` (who sent it, ``member/user``: an operator cancelling for a member) and
    ``text`` (an operator's reason) are for the record: the gateway fills in ``actor``."""

    member: Name
    order_id: int
    actor: Actor = ""
    text: Text = ""
    seq: int = 0
    ts: int = 0


class Amend(Command, tag=3):
    """Change an order's price and/or open quantity. ``qty`` is the new open
    (remaining) quantity. A quantity decrease at the same price keeps time priority;
    a price change or a quantity increase loses it."""

    member: Name
    order_id: int
    price: int
    qty: int
    seq: int = 0
    ts: int = 0


class MassCancel(Command, tag=4):
    """Cancel every open order matching the filters; an empty member or instrument
    means all. ``reason`` is MASS_CANCEL or DISCONNECT. ``actor`` (who sent it,
    ``member/user``; "" for the gateway's cancel-on-disconnect) and ``text`` (an
    operator's reason) are for the record: the gateway fills in ``actor``."""

    member: Name = ""
    instrument: Symbol = ""
    reason: int = int(CancelReason.MASS_CANCEL)
    actor: Actor = ""
    text: Text = ""
    seq: int = 0
    ts: int = 0


class HitOrder(Command, tag=5):
    """Trade against one chosen resting order among the best five levels of the
    opposite side, at its price; whatever does not fill is cancelled (IOC)."""

    member: Name
    coid: Coid
    instrument: Symbol
    target_order_id: int
    qty: int
    seq: int = 0
    ts: int = 0


class Halt(Command, tag=6):
    """Operator halt of one instrument (or all when empty). ``actor`` (filled in by the
    gateway) and ``text`` (the operator's reason) are for the record."""

    instrument: Symbol = ""
    cancel_orders: bool = False
    actor: Actor = ""
    text: Text = ""
    seq: int = 0
    ts: int = 0


class Resume(Command, tag=7):
    instrument: Symbol = ""
    actor: Actor = ""
    text: Text = ""
    seq: int = 0
    ts: int = 0


class Tick(Command, tag=8):
    """Time passes: lets the schedule change phases when no other command arrives."""

    seq: int = 0
    ts: int = 0


class EndOfDay(Command, tag=9):
    """Close the trading day: expire what still rests, fix the closing prices and
    roll every instrument's reference price and band to the next day."""

    actor: Actor = ""
    text: Text = ""
    seq: int = 0
    ts: int = 0


class SuspendMember(Command, tag=10):
    """Operator suspension of a member's trading: until it is reinstated, its new
    orders, hit orders and amends are rejected (MEMBER_SUSPENDED); its cancels still
    work. With ``cancel_orders`` its resting orders are cancelled (reason SUSPENDED).
    ``actor`` (filled in by the gateway) and ``text`` (the reason) are for the record."""

    member: Name
    cancel_orders: bool = False
    actor: Actor = ""
    text: Text = ""
    seq: int = 0
    ts: int = 0


class ReinstateMember(Command, tag=11):
    """End an operator suspension of a member's trading."""

    member: Name
    actor: Actor = ""
    text: Text = ""
    seq: int = 0
    ts: int = 0


class Note(Command, tag=12):
    """An operator's action outside the core (unlocking a user, disconnecting a
    session), put into the journal, the exchange's one history. It changes no state:
    like a ``Tick`` it only lets time pass; the engine answers with ``Noted``."""

    actor: Actor
    kind: Name  # what was done, e.g. "unlock", "disconnect"
    text: Text
    seq: int = 0
    ts: int = 0


class BlockOffer(Command, tag=13):
    """A block agreement offer: at least the instrument's block minimum (100,000 t),
    priced within the block band around the previous close (+-30 %), in the block
    session (the schedule's last window, 13:00-15:00). Open to every member, or to the
    one ``counterparty`` named; with ``partial`` another member may take part of it.
    The offerer's side is held like an order's until the offer is taken, withdrawn or
    expires at the session's end."""

    member: Name
    coid: Coid
    instrument: Symbol
    side: int
    qty: int
    price: int
    counterparty: Name = ""  # "" = any member
    partial: bool = False
    seq: int = 0
    ts: int = 0


class BlockAccept(Command, tag=14):
    """Take ``qty`` of block offer ``offer_id`` (all of it unless the offer allows a
    part), on the other side at the offer's price: held, then settled at once."""

    member: Name
    coid: Coid
    offer_id: int
    qty: int
    seq: int = 0
    ts: int = 0


class BlockWithdraw(Command, tag=15):
    """The offerer takes back what is left of its block offer."""

    member: Name
    offer_id: int
    seq: int = 0
    ts: int = 0


class Pricing(IntEnum):
    """How an auction's winning bids pay."""

    UNIFORM = 1  # every winner at the lowest accepted bid's price
    OWN_BID = 2  # each winner at its own bid's price


class AuctionAnnounce(Command, tag=16):
    """The exchange (an operator) announces a one-way auction: ``seller`` (the
    authority's account, or a member selling at least the block minimum) sells ``qty``
    of ``instrument``; bids between ``floor`` (at least the previous close -10 %) and the
    ceiling (the previous close +10 %), from ``start_ts`` to ``end_ts`` (nanoseconds);
    bids of ``bid_min`` to ``bid_max`` t (0: up to ``qty``). With ``cancel_if_short`` an
    auction whose bids do not cover ``qty`` is cancelled instead of clearing what it can.
    The seller's allowances are held from the announcement."""

    seller: Name
    instrument: Symbol
    qty: int
    floor: int
    start_ts: int
    end_ts: int
    pricing: int = int(Pricing.UNIFORM)
    bid_min: int = 1
    bid_max: int = 0
    cancel_if_short: bool = False
    actor: Actor = ""
    text: Text = ""
    seq: int = 0
    ts: int = 0


class AuctionBid(Command, tag=17):
    """A sealed bid: ``qty`` at ``price`` at most; its cash is held until the auction
    clears. No one sees another member's bids."""

    member: Name
    coid: Coid
    auction_id: int
    qty: int
    price: int
    seq: int = 0
    ts: int = 0


class AuctionBidAmend(Command, tag=18):
    """A new quantity and price for one's bid, during the window; it takes the amend's
    time (its priority among bids at its price starts again)."""

    member: Name
    auction_id: int
    bid_id: int
    qty: int
    price: int
    seq: int = 0
    ts: int = 0


class AuctionBidWithdraw(Command, tag=19):
    """Take one's bid back during the window; its hold is released."""

    member: Name
    auction_id: int
    bid_id: int
    seq: int = 0
    ts: int = 0


ENGINE_COMMANDS = (
    NewOrder, Cancel, Amend, MassCancel, HitOrder, Halt, Resume, Tick, EndOfDay, SuspendMember, ReinstateMember, Note,
    BlockOffer, BlockAccept, BlockWithdraw, AuctionAnnounce, AuctionBid, AuctionBidAmend, AuctionBidWithdraw,
)

# --- events -----------------------------------------------------------------------


class Event(msgspec.Struct, array_like=True, gc=False, tag_field="t"):
    """Base of all events. ``seq`` and ``ts`` are those of the command that caused it."""


class Accepted(Event, tag=101):
    seq: int
    ts: int
    member: str
    coid: str
    order_id: int
    instrument: str
    side: int
    price: int  # the limit; for market orders the band limit it may trade to
    qty: int
    ord_type: int
    tif: int


class Rejected(Event, tag=102):
    seq: int
    ts: int
    member: str
    coid: str  # of a rejected order, else ""
    order_id: int  # of a rejected cancel or amend, else 0
    reason: int
    text: str


_BUY = int(Side.BUY)  # a plain int: comparing with the IntEnum member takes its slow path


class Trade(Event, tag=103):
    seq: int
    ts: int
    trade_id: int
    instrument: str
    price: int
    qty: int
    aggressor: int  # the taker's side
    maker_order_id: int
    maker_member: str
    taker_order_id: int
    taker_member: str

    @property
    def buyer(self) -> str:
        return self.taker_member if self.aggressor == _BUY else self.maker_member

    @property
    def seller(self) -> str:
        return self.maker_member if self.aggressor == _BUY else self.taker_member


class Cancelled(Event, tag=104):
    seq: int
    ts: int
    member: str
    order_id: int
    instrument: str
    qty: int  # the open quantity that was cancelled
    reason: int
    # The order's side and limit price (a market order's: the band's limit), so a
    # consumer keeping a book from the events needs no memory of the order. Last, with
    # defaults: a decoder of the older layout still reads the rest.
    side: int = 0
    price: int = 0


class Amended(Event, tag=105):
    seq: int
    ts: int
    member: str
    order_id: int
    instrument: str
    price: int
    qty: int  # the new open quantity
    priority_kept: bool


class Expired(Event, tag=106):
    seq: int
    ts: int
    member: str
    order_id: int
    instrument: str
    qty: int


class StatusChanged(Event, tag=107):
    seq: int
    ts: int
    instrument: str
    phase: int


class DayClosed(Event, tag=108):
    """One instrument's day: its closing price and the next day's band."""

    seq: int
    ts: int
    instrument: str
    open_price: int  # the first trade's price; the previous close when nothing traded
    close_price: int
    volume: int
    value: int
    next_ref_price: int
    next_band_low: int
    next_band_high: int


class Decremented(Event, tag=109):
    """Self-trade prevention (decrement mode) reduced a resting order, no trade."""

    seq: int
    ts: int
    member: str
    order_id: int
    instrument: str
    qty: int  # the quantity taken off
    qty_left: int  # the order's open quantity after it


class MemberStatus(Event, tag=110):
    """A member's trading was suspended or reinstated; ``text`` is the operator's reason."""

    seq: int
    ts: int
    member: str
    suspended: bool
    text: str


class Noted(Event, tag=111):
    """The record of a ``Note``: an operator's action outside the core."""

    seq: int
    ts: int
    actor: str
    kind: str
    text: str


class BlockOffered(Event, tag=112):
    """A block offer is open (to its offerer; other members find it with a query)."""

    seq: int
    ts: int
    member: str
    coid: str
    offer_id: int
    instrument: str
    side: int
    qty: int
    price: int
    counterparty: str
    partial: bool


class BlockTraded(Event, tag=113):
    """A block trade: the acceptor took ``qty`` of the offer at its price, settled by
    delivery versus payment like any trade; ``left`` is what remains of the offer.
    To both members (a block agreement names its parties to each other)."""

    seq: int
    ts: int
    trade_id: int
    offer_id: int
    instrument: str
    price: int
    qty: int
    buyer: str
    seller: str
    offerer: str
    acceptor: str
    coid: str  # the acceptor's client order id
    offer_coid: str
    left: int


class BlockWithdrawn(Event, tag=114):
    """What was left of a block offer is gone: withdrawn by its member (reason 1) or
    expired at the end of the block session (reason 2); its hold is released."""

    seq: int
    ts: int
    member: str
    offer_id: int
    instrument: str
    qty: int
    reason: int


class AuctionAnnounced(Event, tag=115):
    """An auction's terms, to every member."""

    seq: int
    ts: int
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


class BidPlaced(Event, tag=116):
    """A bid entered, amended (``amended``) or withdrawn (``qty`` 0), to its bidder."""

    seq: int
    ts: int
    member: str
    coid: str
    auction_id: int
    bid_id: int
    qty: int
    price: int
    amended: bool


class AuctionFill(Event, tag=117):
    """What a winning bid bought: settled by delivery versus payment; to its bidder."""

    seq: int
    ts: int
    member: str
    coid: str
    auction_id: int
    bid_id: int
    trade_id: int
    instrument: str
    qty: int
    price: int


class AuctionResult(Event, tag=118):
    """An auction's result, to every member, naming no bidder: the clearing price (the
    lowest accepted bid; 0 when nothing sold), the quantity sold of the quantity offered,
    the bids, the winning bids, and whether it was cancelled for want of demand."""

    seq: int
    ts: int
    auction_id: int
    instrument: str
    seller: str
    clearing_price: int
    qty_sold: int
    qty: int
    bids: int
    winners: int
    bid_qty: int  # the quantity all bids asked for
    cancelled: bool


class BlockEnd(IntEnum):
    """Why a block offer ended without being taken (``BlockWithdrawn.reason``)."""

    WITHDRAWN = 1
    EXPIRED = 2


ENGINE_EVENTS = (
    Accepted,
    Rejected,
    Trade,
    Cancelled,
    Amended,
    Expired,
    StatusChanged,
    DayClosed,
    Decremented,
    MemberStatus,
    Noted,
    BlockOffered,
    BlockTraded,
    BlockWithdrawn,
    AuctionAnnounced,
    BidPlaced,
    AuctionFill,
    AuctionResult,
)

AnyCommand = (
    NewOrder | Cancel | Amend | MassCancel | HitOrder | Halt | Resume | Tick | EndOfDay | SuspendMember
    | ReinstateMember | Note | BlockOffer | BlockAccept | BlockWithdraw | AuctionAnnounce | AuctionBid | AuctionBidAmend
    | AuctionBidWithdraw
)

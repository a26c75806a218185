"""The msgspec Structs that the mypyc-compiled modules (engine/book.py,
engine/matching.py) use: the encoded order and the engine snapshot.

They must stay in this interpreted module. mypyc builds a compiled module's
non-native classes without their class keywords (``array_like=True, gc=False`` would
be dropped, changing the encoding of every order in a snapshot and the state hash)
and with annotations erased to runtime types (``list[MarketSnapshot]`` becomes
``list``, so msgspec would decode nested orders and tuples as plain lists).
"""

from __future__ import annotations

import msgspec


class OrderRecord(msgspec.Struct, array_like=True, gc=False):
    """A resting order as snapshots and the state hash encode it (the fields of
    ``engine.book.Order``, in its order)."""

    order_id: int
    member: str
    coid: str
    instrument: str
    side: int
    price: int  # limit (for a market order: the band limit)
    qty: int
    filled: int
    tif: int
    stp: int
    hold: int  # cash held for a buy's open quantity; 0 for sells (they hold qty)
    ts: int  # entry time, the time of its priority


class OfferRecord(msgspec.Struct, array_like=True, gc=False):
    """An open block agreement offer as snapshots and the state hash encode it."""

    offer_id: int
    member: str
    coid: str
    instrument: str
    side: int
    qty: int  # what is left
    price: int
    counterparty: str
    partial: bool
    hold: int  # cash held for a buy's quantity left; 0 for sells (they hold qty)
    ts: int


class BidRecord(msgspec.Struct, array_like=True, gc=False):
    bid_id: int
    member: str
    coid: str
    qty: int
    price: int
    hold: int  # cash held (cash_required of price x qty)
    ts: int  # entered or last amended: its time priority


class AuctionRecord(msgspec.Struct, array_like=True, gc=False):
    """An announced auction and its bids (in bid id order), as snapshots and the state
    hash encode it."""

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
    hold: int  # allowances held from the seller
    bids: list[BidRecord]


class MarketSnapshot(msgspec.Struct, array_like=True):
    symbol: str
    phase: int
    halted: bool
    ref_price: int
    stats: list[int]
    orders: list[OrderRecord]  # bids then asks, each best level first, in time priority


class EngineSnapshot(msgspec.Struct, array_like=True):
    last_seq: int
    last_ts: int
    next_order_id: int
    next_trade_id: int
    day: int
    next_change: int
    expire_at: int
    coids: list[tuple[str, list[str]]]  # per member, in no particular order
    markets: list[MarketSnapshot]
    # Added later, with a default, at the end: snapshots written before decode as before.
    suspended: list[str] = msgspec.field(default_factory=list)  # members whose trading is suspended, sorted
    offers: list[OfferRecord] = msgspec.field(default_factory=list)  # open block offers, by offer id
    next_offer_id: int = 1
    # per instrument with block trades today: [volume, value, trades]
    block_stats: list[tuple[str, list[int]]] = msgspec.field(default_factory=list)
    auctions: list[AuctionRecord] = msgspec.field(default_factory=list)  # announced, not yet cleared
    next_auction_id: int = 1
    next_bid_id: int = 1

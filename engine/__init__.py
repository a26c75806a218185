"""etx exchange core: books, matching, market rules, sequencing. Imports nothing from
the other etx packages."""

from engine.book import Book, Order
from engine.instrument import ALWAYS_OPEN, Instrument, Schedule
from engine.ledger import CASH, HoldLedger, SimpleLedger
from engine.matching import Engine, Market
from engine.messages import (
    Accepted,
    Amend,
    Amended,
    AnyCommand,
    Cancel,
    Cancelled,
    CancelReason,
    Command,
    DayClosed,
    Decremented,
    EndOfDay,
    Event,
    Expired,
    Halt,
    HitOrder,
    MassCancel,
    NewOrder,
    OrdType,
    Phase,
    Reason,
    Rejected,
    Resume,
    Side,
    StatusChanged,
    Stp,
    Tick,
    TimeInForce,
    Trade,
)
from engine.sequencer import ManualClock, Sequencer
from engine.states import OrderTracker, State

__all__ = [
    "ALWAYS_OPEN", "CASH", "Accepted", "Amend", "Amended", "AnyCommand", "Book", "Cancel",
    "CancelReason", "Cancelled", "Command", "DayClosed", "Decremented", "EndOfDay", "Engine",
    "Event", "Expired", "Halt", "HitOrder", "HoldLedger", "Instrument", "ManualClock", "Market",
    "MassCancel", "NewOrder", "OrdType", "Order", "OrderTracker", "Phase", "Reason", "Rejected",
    "Resume", "Schedule", "Sequencer", "Side", "SimpleLedger", "State", "StatusChanged", "Stp",
    "Tick", "TimeInForce", "Trade",
]

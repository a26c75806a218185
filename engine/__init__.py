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
    MemberStatus,
    NewOrder,
    Note,
    Noted,
    OrdType,
    Phase,
    Reason,
    ReinstateMember,
    Rejected,
    Resume,
    Side,
    StatusChanged,
    Stp,
    SuspendMember,
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
    "MassCancel", "MemberStatus", "NewOrder", "Note", "Noted", "OrdType", "Order", "OrderTracker", "Phase",
    "Reason", "ReinstateMember", "Rejected", "Resume", "Schedule", "Sequencer", "Side", "SimpleLedger", "State",
    "StatusChanged", "Stp", "SuspendMember", "Tick", "TimeInForce", "Trade",
]

"""Registry commands, their events, and the posting records settlement writes.

Registry commands subclass ``engine.messages.Command`` (array-like, integer tags 20-49)
and events subclass ``engine.messages.Event`` (tags 120-149), so they travel through the
same sequencer, journal and event stream as the engine's own messages. Every command
names the user who runs it (``actor``) and ends with ``seq`` and ``ts``, stamped by the
sequencer. Amounts are integers: cash in fen, allowances and CCER in tonnes.

A posting is the unit of record: every balance change, and every change to an
account or a compliance obligation, is one posting with an id (``T<trade id>`` for a
trade, ``C<seq>`` for a registry command, ``D<day>`` for an end of day, ``G-<account>``
for the system accounts the ledger creates), what caused it, who, when, and its legs.
A leg is ``(account, asset, delta, pending_delta)``: ``delta`` changes the balance;
``pending_delta`` changes the part of it that is not yet free (allowances bought today
and not sellable until the next trading day; cash from today's sales, not withdrawable
until the end-of-day settlement). Within a trade posting the deltas of each asset sum
to zero (fees are legs too).

Two record types share that shape (``AnyPosting``). ``Posting`` lists its legs. A
trade, the one posting made per fill, is a ``TradePosting``: the trade and the fee
amounts as plain numbers, from which ``legs`` (and ``posting_id``, ``ref``) are derived
when read, so settling a trade allocates one untracked object and formats no text. Both
are tagged array-like Structs (tags 90 and 91), and the store keeps either as it is.
"""

from __future__ import annotations

from enum import IntEnum
from typing import ClassVar

import msgspec

from engine.ledger import CASH
from engine.messages import Actor, Coid, Command, Event, Name, Symbol


class HolderType(IntEnum):
    COMPLIANCE = 1  # a covered (compliance) company
    INSTITUTION = 2
    INDIVIDUAL = 3
    EXCHANGE_FEE = 4  # the exchange's trading-fee account
    REGISTRY_FEE = 5  # the registry's settlement-fee account
    RISK_RESERVE = 6  # funded from a share of the trading fee
    AUTHORITY = 7  # the issuing authority: allocates allowances, sets obligations
    STAFF = 8  # staff of the regulator, the registry, the exchange or a verifier: may hold, never trade


MEMBER_TYPES = frozenset({HolderType.COMPLIANCE, HolderType.INSTITUTION, HolderType.INDIVIDUAL, HolderType.STAFF})
FEE_TYPES = frozenset({HolderType.EXCHANGE_FEE, HolderType.REGISTRY_FEE, HolderType.RISK_RESERVE})


class AccountStatus(IntEnum):
    ACTIVE = 1
    SUSPENDED = 2


class RegistryReason(IntEnum):
    """Why a registry command was rejected (the settlement range, 200+)."""

    UNKNOWN_ACCOUNT = 201
    ACCOUNT_EXISTS = 202
    ACCOUNT_SUSPENDED = 203
    NOT_SUSPENDED = 204
    NOT_AUTHORITY = 205
    WRONG_ACCOUNT_TYPE = 206
    INSUFFICIENT_CASH = 207
    INSUFFICIENT_HOLDINGS = 208
    INVALID_AMOUNT = 209
    INVALID_ASSET = 210
    INVALID_FIELD = 211
    SAME_ACCOUNT = 212
    NO_OBLIGATION = 213
    VINTAGE_TOO_LATE = 214
    CCER_LIMIT = 215
    EXCEEDS_OBLIGATION = 216
    OBLIGATION_BELOW_SURRENDERED = 217
    USE_END_OF_DAY = 218
    NOT_PERMITTED = 219  # the user's role does not allow the command (tools, gateway)
    LIMIT_EXCEEDED = 220  # the asset's total in the registry would pass its maximum (BALANCE_MAX)
    UNKNOWN_INDUSTRY = 221  # not an industry of the compliance rules, or no benchmark for it that year
    ALREADY_ALLOCATED = 222  # the year's pre-allocation of the account is done already
    NOT_SUBMITTED = 223  # no verification submitted to approve
    YEAR_CLOSED = 224  # the compliance year is closed: no more surrender, verification or obligation for it
    BEFORE_DEADLINE = 225  # the year cannot close before its surrender deadline
    NOT_PRE_ALLOCATED = 226  # verification of an account the year's allocation has not started for


# --- commands ---------------------------------------------------------------------


class OpenAccount(Command, tag=20):
    actor: Actor
    account: Name
    holder_type: int
    name: Name = ""
    ref: Coid = ""  # the client's reference, echoed in the answer
    seq: int = 0
    ts: int = 0


class SuspendAccount(Command, tag=21):
    """Suspended accounts take no new holds (their orders are refused) and no registry
    operation; orders already resting still settle."""

    actor: Actor
    account: Name
    ref: Coid = ""  # the client's reference, echoed in the answer
    seq: int = 0
    ts: int = 0


class ReinstateAccount(Command, tag=22):
    actor: Actor
    account: Name
    ref: Coid = ""  # the client's reference, echoed in the answer
    seq: int = 0
    ts: int = 0


class Deposit(Command, tag=23):
    """Cash arrives from the holder's bank (fen)."""

    actor: Actor
    account: Name
    amount: int
    ref: Coid = ""  # the client's reference, echoed in the answer
    seq: int = 0
    ts: int = 0


class Withdraw(Command, tag=24):
    """Cash leaves to the holder's bank: only settled cash that no order holds."""

    actor: Actor
    account: Name
    amount: int
    ref: Coid = ""  # the client's reference, echoed in the answer
    seq: int = 0
    ts: int = 0


class Allocate(Command, tag=25):
    """The authority (``source``, an account of type AUTHORITY) issues ``qty`` of an
    allowance vintage (or CCER) into ``account``."""

    actor: Actor
    source: Name
    account: Name
    asset: Symbol
    qty: int
    ref: Coid = ""  # the client's reference, echoed in the answer
    seq: int = 0
    ts: int = 0


class Transfer(Command, tag=26):
    """Move free allowances or CCER from one holder's account to another's."""

    actor: Actor
    source: Name
    target: Name
    asset: Symbol
    qty: int
    ref: Coid = ""  # the client's reference, echoed in the answer
    seq: int = 0
    ts: int = 0


class Surrender(Command, tag=27):
    """Surrender for compliance against the account's obligation for ``year``: CCER
    at most 5 % of the obligation; no allowance vintage later than ``year``."""

    actor: Actor
    account: Name
    asset: Symbol
    qty: int
    year: int
    ref: Coid = ""  # the client's reference, echoed in the answer
    seq: int = 0
    ts: int = 0


class Retire(Command, tag=28):
    """Voluntary cancellation: the allowances leave the market for good."""

    actor: Actor
    account: Name
    asset: Symbol
    qty: int
    ref: Coid = ""  # the client's reference, echoed in the answer
    seq: int = 0
    ts: int = 0


class SettleDay(Command, tag=29):
    """End of day for a registry running without the engine (the tools, on a stopped
    store): T+1 quantities become sellable and sale proceeds withdrawable. The
    exchange rejects it (USE_END_OF_DAY): there the engine's EndOfDay does this, once
    per trading day, after the books close."""

    actor: Actor
    ref: Coid = ""  # the client's reference, echoed in the answer
    seq: int = 0
    ts: int = 0


class SetObligation(Command, tag=30):
    """The authority (``source``) sets an account's compliance obligation for a year
    (its verified emissions, tonnes)."""

    actor: Actor
    source: Name
    account: Name
    year: int
    qty: int
    ref: Coid = ""  # the client's reference, echoed in the answer
    seq: int = 0
    ts: int = 0


class PreAllocate(Command, tag=31):
    """The authority's pre-allocation of a covered entity's year: ``output`` (the base
    output, usually the last verified year's) times the industry's benchmark and
    factors for ``year``, times the pre-allocated share, in allowances of that vintage
    (less any deduction for an earlier shortfall). Sets the entity's industry for the year."""

    actor: Actor
    source: Name  # the authority's account
    account: Name
    year: int
    industry: Name
    output: int  # units of the industry's output (MWh, tonnes of clinker, ...)
    ref: Coid = ""  # the client's reference, echoed in the answer
    seq: int = 0
    ts: int = 0


class SubmitVerification(Command, tag=32):
    """A verifier's figures for an entity's year: output and emissions. A later
    submission replaces an earlier one until the authority approves; every one is kept
    in the postings (who, when)."""

    actor: Actor
    account: Name
    year: int
    output: int
    emissions: int  # tonnes of CO2
    ref: Coid = ""  # the client's reference, echoed in the answer
    seq: int = 0
    ts: int = 0


class ApproveVerification(Command, tag=33):
    """The authority approves the submitted figures: the year's obligation becomes the
    verified emissions and the allocation is trued up to output times benchmark
    (up or down). Approving again after a new submission is a correction."""

    actor: Actor
    source: Name  # the authority's account
    account: Name
    year: int
    ref: Coid = ""  # the client's reference, echoed in the answer
    seq: int = 0
    ts: int = 0


class CloseCompliance(Command, tag=34):
    """The year's deadline: each entity's shortfall is recorded with its penalty and
    deducted from the next year's allocation, and allowances above the banking cap
    expire. Refused before the deadline (by the exchange's clock)."""

    actor: Actor
    source: Name  # the authority's account
    year: int
    ref: Coid = ""  # the client's reference, echoed in the answer
    seq: int = 0
    ts: int = 0


REGISTRY_COMMANDS = (
    OpenAccount, SuspendAccount, ReinstateAccount, Deposit, Withdraw, Allocate, Transfer, Surrender,
    Retire, SettleDay, SetObligation, PreAllocate, SubmitVerification, ApproveVerification, CloseCompliance,
)

AnyRegistryCommand = (
    OpenAccount | SuspendAccount | ReinstateAccount | Deposit | Withdraw | Allocate | Transfer | Surrender
    | Retire | SettleDay | SetObligation | PreAllocate | SubmitVerification | ApproveVerification | CloseCompliance
)

COMMAND_KINDS: dict[type, str] = {
    OpenAccount: "open", SuspendAccount: "suspend", ReinstateAccount: "reinstate", Deposit: "deposit",
    Withdraw: "withdraw", Allocate: "allocate", Transfer: "transfer", Surrender: "surrender",
    Retire: "retire", SettleDay: "eod", SetObligation: "obligation", PreAllocate: "preallocate",
    SubmitVerification: "submit", ApproveVerification: "approve", CloseCompliance: "close",
}

# --- events -----------------------------------------------------------------------


class RegistryDone(Event, tag=120):
    seq: int
    ts: int
    actor: str
    kind: str  # the command's kind: "deposit", "transfer", ...
    posting_id: str  # the posting it made; "" when none
    text: str
    ref: str = ""  # the command's ref: which command this answers


class RegistryRejected(Event, tag=121):
    seq: int
    ts: int
    actor: str
    kind: str
    reason: int  # a RegistryReason
    text: str
    ref: str = ""  # the command's ref


# --- records ----------------------------------------------------------------------

Leg = tuple[str, str, int, int]  # (account, asset, delta, pending_delta)


class AccountState(msgspec.Struct, array_like=True, gc=False):
    """An account's registration after the posting (absolute values, not deltas)."""

    account: str
    holder_type: int
    name: str
    status: int


class ObligationState(msgspec.Struct, array_like=True, gc=False):
    """An account's obligation for one year after the posting (absolute values)."""

    account: str
    year: int
    required: int  # tonnes to surrender
    surrendered: int  # tonnes surrendered so far, CCER included
    ccer: int  # the CCER part of ``surrendered``


class ComplianceState(msgspec.Struct, array_like=True, gc=False):
    """A covered entity's compliance year, as the registry records it. Tonnes unless
    named; the obligation itself (required, surrendered) is its ObligationState."""

    account: str
    year: int
    industry: str = ""
    base_output: int = 0  # the output the pre-allocation was computed from
    pre_allocated: int = 0  # tonnes allocated before verification (net of the deduction)
    trued_up: int = 0  # tonnes allocated (+) or taken back (-) at the true-up(s)
    owed: int = 0  # a downward true-up the account could not give back: added to the obligation
    deducted: int = 0  # tonnes deducted from this year's allocation for the last year's shortfall
    submitted_output: int = 0  # the verifier's last submission, waiting for approval
    submitted_emissions: int = 0
    submitted_by: str = ""  # "" when nothing waits
    verified_output: int = 0
    verified_emissions: int = 0
    verified_by: str = ""  # the submitting verifier and the approving authority user, "verifier/authority"
    closed: bool = False
    shortfall: int = 0  # tonnes missing at the deadline
    penalty: int = 0  # fen: shortfall * penalty multiple * the year's average price
    expired: int = 0  # tonnes above the banking cap cancelled at the close

    @property
    def allocated(self) -> int:
        return self.pre_allocated + self.trued_up


class Posting(msgspec.Struct, array_like=True, gc=False, tag=90):
    posting_id: str
    seq: int  # the engine sequence number of the command that caused it (0: genesis)
    ts: int
    kind: str  # "trade", "eod", "genesis" or a registry command's kind
    ref: str  # trade id for a trade, else the command's seq
    actor: str  # the user who ran the command; "" for trades and the end of day
    legs: tuple[Leg, ...]
    subject: str = ""  # the account a command concerned ("" for trades and days)
    text: str = ""  # human-readable detail
    account: AccountState | None = None
    obligation: ObligationState | None = None
    compliance: tuple[ComplianceState, ...] = ()  # compliance-year records the command changed


class TradePosting(msgspec.Struct, array_like=True, gc=False, tag=91):
    """The posting of one trade (one fill), delivery versus payment with fees.

    Its legs, derived by ``legs``: the buyer pays the notional plus both fees (and
    ``buyer_pending`` of today's sale proceeds are spent first), the seller receives the
    notional less both fees (not withdrawable until the end of day), the seller delivers
    ``qty``, the buyer receives it (not sellable until the next trading day), and the fee
    accounts receive both sides' fees: the exchange the trading fees less ``reserve``,
    the risk reserve ``reserve``, the registry the settlement fees. A fee leg of zero is
    left out. Only numbers and names the ledger already holds are stored: nothing is
    formatted and no container is built when a trade settles.
    """

    trade_id: int
    seq: int  # the engine sequence number of the command that made the trade
    ts: int
    instrument: str
    price: int  # fen per tonne
    qty: int  # tonnes
    buyer: str
    seller: str
    buyer_pending: int  # change of the buyer's unwithdrawable cash (<= 0): today's proceeds spent
    trading_fee: int  # fen, paid by each side
    settlement_fee: int  # fen, paid by each side
    reserve: int  # fen: the part of the two trading fees that goes to the risk reserve
    exchange_account: str
    reserve_account: str
    registry_account: str

    kind: ClassVar[str] = "trade"
    actor: ClassVar[str] = ""
    subject: ClassVar[str] = ""
    text: ClassVar[str] = ""
    account: ClassVar[AccountState | None] = None
    obligation: ClassVar[ObligationState | None] = None
    compliance: ClassVar[tuple[ComplianceState, ...]] = ()

    @property
    def posting_id(self) -> str:
        return f"T{self.trade_id}"

    @property
    def ref(self) -> str:
        return str(self.trade_id)

    @property
    def legs(self) -> tuple[Leg, ...]:
        buyer, seller, instrument, qty = self.buyer, self.seller, self.instrument, self.qty
        notional = self.price * qty
        trading, settlement, reserve = self.trading_fee, self.settlement_fee, self.reserve
        net = notional - trading - settlement
        legs: list[Leg] = [(buyer, CASH, -(notional + trading + settlement), self.buyer_pending),
                           (seller, CASH, net, net), (seller, instrument, -qty, 0), (buyer, instrument, qty, qty)]
        if 2 * trading - reserve:
            legs.append((self.exchange_account, CASH, 2 * trading - reserve, 0))
        if reserve:
            legs.append((self.reserve_account, CASH, reserve, 0))
        if settlement:
            legs.append((self.registry_account, CASH, 2 * settlement, 0))
        return tuple(legs)


AnyPosting = Posting | TradePosting

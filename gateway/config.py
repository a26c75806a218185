"""The exchange's configuration: a TOML file read into msgspec Structs.

Contract: ``load(path)`` or ``loads(text)`` returns a checked ``Config`` or raises
``ConfigError`` naming the key that is wrong. Prices are written in yuan and fee rates
as decimal fractions; TOML floats are read as exact decimals (never binary floats) and
converted to integers (fen, basis points) here, at the edge, refusing inf, nan and any
value that does not convert exactly; messages quote a value as the file wrote it.
``etx.example.toml`` documents every key.
"""

from __future__ import annotations

import re
import tomllib
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import msgspec

from engine.instrument import ALWAYS_OPEN, NATIONAL_WINDOWS, Instrument, Schedule
from engine.messages import NAME_MAX, Stp
from gateway.auth import User, parse_hash
from gateway.protocol import ROLE_NAMES
from settlement.structs import Benchmark, ComplianceRules

FEN_PER_YUAN = 100
FEN = "a fen (0.01 yuan)"  # the units values convert to, as the messages name them
BASIS_POINT = "a basis point (0.01 %)"
PPM = "a part per million (0.000001)"
SCALED_DIGITS_MAX = 18  # a value in its unit (fen, basis points, ppm) below 10**18 fits an int64
EXCHANGE_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")  # exchange.id: it names the exchange in topics
MD_DEPTH_MAX = 50  # book levels per side in market data
MD_INTERVAL_MS_MAX = 60_000
MD_HEALTH_INTERVAL_MS_MAX = 3_600_000
MD_ROOT_MAX = 200  # characters of a market data topic root
MD_USERNAME_MAX = 256


class ConfigError(ValueError):
    pass


class ExchangeSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    listen: str = "127.0.0.1:7400"
    registry: str = "etx-registry.sqlite"  # a SQLite path, or a postgresql:// URL
    journal: str = ""  # a journal path; "" = none
    schedule: str | list[str] = "national"  # "national", "always", or ["09:30-11:30", ...]
    utc_offset_minutes: int = 8 * 60
    stp_default: str = "cancel_resting"
    tls_cert: str = ""
    tls_key: str = ""
    operator_member: str = "EXCH"  # the member that the exchange's own staff belong to
    id: str = "etx"  # names this exchange where it shares a service with others (the market data root)


class SessionSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    heartbeat_ms: int = 1000
    timeout_heartbeats: int = 3  # a peer silent this many intervals is disconnected
    orders_per_second: int = 200_000  # each session's token rate for commands ...
    burst: int = 400_000  # ... and its bucket size
    queries_per_second: int = 100  # each session's rate (and bucket size) for queries
    flood_factor: int = 4  # more than factor x orders_per_second messages in a second close the session
    max_frame: int = 64 * 1024
    malformed_max: int = 10  # malformed frames a session may send before it is closed
    failures_max: int = 5
    failure_window_s: int = 60
    lockout_s: int = 300
    sessions_max: int = 1000  # logged-on sessions
    prelogon_max: int = 1000  # connections not logged on yet (TLS handshakes included), in all ...
    prelogon_per_address: int = 16  # ... and from one address
    frame_deadline_ms: int = 5000  # a frame begun must be complete within this
    history_max: int = 2_000_000  # reports kept in memory per member for replay
    write_buffer_max: int = 64 * 1024 * 1024  # a peer not reading beyond this is closed


class FeesSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    trading_rate: Decimal = Decimal("0")  # fraction of the trade value, e.g. 0.0003
    registry_rate: Decimal = Decimal("0")


class MarketDataSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    host: str = "127.0.0.1"  # the MQTT broker
    port: int = 1883
    root: str = ""  # "" = md_root(exchange.id)
    depth: int = 5  # book levels per side, as the national market shows
    interval_ms: int = 100  # conflation: at most one snapshot per instrument and interval
    health_interval_ms: int = 5000
    username: str = ""  # "" = connect anonymously
    password_file: str = ""  # a file, readable by its owner only, holding the broker password
    tls: bool = False
    tls_ca: str = ""  # CA file the broker's certificate is checked against; "" = the system's
    tls_cert: str = ""  # a client certificate and its key, both or neither
    tls_key: str = ""


class InstrumentSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    symbol: str
    ref_price: Decimal  # yuan per tonne (the previous close)
    tick: Decimal = Decimal("0.01")  # yuan
    lot: int = 1
    qty_min: int = 1
    qty_max: int = 99_999
    band_pct: Decimal = Decimal("10")  # +- percent of the reference price; 0 = none
    price_min: Decimal = Decimal("0.01")  # yuan, only without a band
    price_max: Decimal = Decimal("0")  # yuan, only without a band
    position_max: int = 0  # tonnes a member may hold and have open to buy; 0 = no limit
    large_holder: int = 0  # tonnes: a member's holding reaching it raises a surveillance alert; 0 = none
    block_min: int = 100_000  # tonnes: the smallest block agreement offer
    block_band_pct: Decimal = Decimal("30")  # a block offer's price within +- this percent of the previous close


class SurveillanceSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The thresholds of the operators' alerts (gateway.surveillance)."""

    cancel_ratio_max: Decimal = Decimal("20")  # cancels per trade a member may reach in a day ...
    cancel_ratio_min: int = 200  # ... once it has cancelled this many
    settlement_lag_max: int = 100_000  # commands applied but not settled before an alert
    repeat_s: int = 60  # the same alert again within this is counted, not raised


class BenchmarkSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    industry: str
    year: int
    intensity: Decimal  # tonnes of allowances per unit of output, e.g. 0.8218 (t CO2/MWh)
    factors: list[Decimal] = msgspec.field(default_factory=list)  # adjustment factors, each e.g. 0.985


class ComplianceSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    industries: list[str] = msgspec.field(default_factory=lambda: ["power", "cement", "steel", "aluminium"])
    pre_allocation_pct: int = 70
    penalty_multiple: Decimal = Decimal("3")  # times the average price, per missing tonne
    banking_base: int = 10_000  # tonnes
    banking_sold_multiple: Decimal = Decimal("1.5")  # times the net allowances sold
    deadline: str = "12-31"  # MM-DD of the year after the compliance year
    benchmark: list[BenchmarkSection] = msgspec.field(default_factory=list)


class ReplicationSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The replicated journal on NATS JetStream (gateway/replication.py); off by default."""

    enabled: bool = False
    servers: list[str] = msgspec.field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    stream: str = ""  # "" = ETX-<exchange id>
    replicas: int = 1  # 3 in production: the stream and the lease survive one server lost
    node: str = ""  # this machine's name in the lease; "" = the host name
    lease_s: float = 3.0  # a standby takes over this long after the primary's last renewal
    confirm_s: float = 10.0  # a batch the stream has not confirmed by then stops the primary
    check_s: float = 1.0  # how often the primary marks a batch for a state-hash check


class MemberSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    id: str
    name: str = ""
    stp: str = ""  # "" = the exchange default


class UserSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    member: str
    user: str
    role: str
    secret_hash: str

    def __repr__(self) -> str:
        # The hash stays out of logs and tracebacks (and so out of any repr of Config).
        return f"UserSection(member={self.member!r}, user={self.user!r}, role={self.role!r}, secret_hash=<hidden>)"

    __str__ = __repr__


class Config(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    exchange: ExchangeSection = msgspec.field(default_factory=ExchangeSection)
    session: SessionSection = msgspec.field(default_factory=SessionSection)
    fees: FeesSection = msgspec.field(default_factory=FeesSection)
    market_data: MarketDataSection = msgspec.field(default_factory=MarketDataSection)
    surveillance: SurveillanceSection = msgspec.field(default_factory=SurveillanceSection)
    compliance: ComplianceSection = msgspec.field(default_factory=ComplianceSection)
    replication: ReplicationSection = msgspec.field(default_factory=ReplicationSection)
    instrument: list[InstrumentSection] = msgspec.field(default_factory=list)
    member: list[MemberSection] = msgspec.field(default_factory=list)
    user: list[UserSection] = msgspec.field(default_factory=list)

    # --- derived, integer forms ----------------------------------------------------

    def instruments(self) -> list[Instrument]:
        out: dict[str, Instrument] = {}
        for i in self.instrument:
            where = f"instrument {i.symbol}"
            if not i.symbol:
                raise ConfigError("instrument: symbol is empty")
            if i.symbol in out:
                raise ConfigError(f"{where}: the symbol is configured twice (each [[instrument]] needs its own)")
            band_bps = _exact(i.band_pct, 2, f"{where}: band_pct", BASIS_POINT)
            if not 0 <= band_bps < 10_000:
                raise ConfigError(f"{where}: band_pct {_written(i.band_pct)} must be at least 0 and below 100 "
                                  "(0 = no band)")
            block_bps = _exact(i.block_band_pct, 2, f"{where}: block_band_pct", BASIS_POINT)
            if not 0 < block_bps < 10_000:
                raise ConfigError(f"{where}: block_band_pct {_written(i.block_band_pct)} must be above 0 and below 100")
            if i.block_min <= 0:
                raise ConfigError(f"{where}: block_min {i.block_min} must be a positive number of tonnes")
            rules = Instrument(
                symbol=i.symbol,
                ref_price=fen(i.ref_price, f"{where}: ref_price"),
                tick=fen(i.tick, f"{where}: tick"),
                lot=i.lot, qty_min=i.qty_min, qty_max=i.qty_max, band_bps=band_bps,
                price_min=fen(i.price_min, f"{where}: price_min"),
                price_max=fen(i.price_max, f"{where}: price_max"),
                position_max=i.position_max,
                block_min=i.block_min,
                block_band_bps=block_bps,
            )
            # Said here in yuan as written; the engine's own check would say it in fen.
            for name, written in (("ref_price", i.ref_price), ("tick", i.tick)):
                if getattr(rules, name) <= 0:
                    raise ConfigError(f"{where}: {name} {_written(written)} must be positive")
            try:
                rules.check()
            except ValueError as e:
                raise ConfigError(f"instrument {e}") from None  # the engine's messages start with the symbol
            out[i.symbol] = rules
        return list(out.values())

    def schedule(self) -> Schedule:
        s = self.exchange.schedule
        if s == "always":
            return ALWAYS_OPEN
        if s == "national":
            windows = list(NATIONAL_WINDOWS)
        elif isinstance(s, list):
            windows = [_window(w) for w in s]
        else:
            raise ConfigError(f"exchange.schedule: expected 'national', 'always' or a list of 'HH:MM-HH:MM', got {s!r}")
        sched = Schedule(windows=windows, utc_offset_minutes=self.exchange.utc_offset_minutes)
        try:
            sched.check()
        except ValueError as e:
            raise ConfigError(f"exchange.schedule: {e}") from None
        return sched

    def stp_default(self) -> int:
        return _stp(self.exchange.stp_default, "exchange.stp_default")

    def member_stp(self) -> dict[str, int]:
        return {m.id: _stp(m.stp, f"member {m.id}: stp") for m in self.member if m.stp}

    def users(self) -> list[User]:
        return [User(member=u.member, user=u.user, role=ROLE_NAMES[u.role], secret_hash=u.secret_hash)
                for u in self.user]

    def fee_rates_ppm(self) -> tuple[int, int]:
        """(trading, registry) fee rates in parts per million of the trade value."""
        fees = self.fees
        rates = []
        for name, rate in (("trading_rate", fees.trading_rate), ("registry_rate", fees.registry_rate)):
            ppm = _exact(rate, 6, f"fees: {name}", PPM)
            if not 0 <= ppm <= 1_000_000:
                raise ConfigError(f"fees: {name} {_written(rate)} is not between 0 and 1 "
                                  "(a fraction of the trade value: 0.0003 is 0.03 %)")
            rates.append(ppm)
        if sum(rates) >= 1_000_000:
            raise ConfigError(f"fees: trading_rate {_written(fees.trading_rate)} + registry_rate "
                              f"{_written(fees.registry_rate)} must be below 1 (the seller's fees must leave proceeds)")
        return rates[0], rates[1]

    def compliance_rules(self) -> ComplianceRules:
        c = self.compliance
        month, _, day = c.deadline.partition("-")
        if not (month.isdigit() and day.isdigit()):
            raise ConfigError(f"compliance.deadline: expected MM-DD, got {c.deadline!r}")
        benchmarks = []
        for b in c.benchmark:
            where = f"compliance.benchmark {b.industry} {b.year}"
            benchmarks.append(Benchmark(
                industry=b.industry, year=b.year, intensity_ppm=_exact(b.intensity, 6, f"{where}: intensity", PPM),
                factors_ppm=tuple(_exact(f, 6, f"{where}: factors", PPM) for f in b.factors)))
        rules = ComplianceRules(
            industries=tuple(c.industries), benchmarks=tuple(benchmarks), pre_allocation_pct=c.pre_allocation_pct,
            penalty_multiple_ppm=_exact(c.penalty_multiple, 6, "compliance.penalty_multiple", PPM),
            banking_base=c.banking_base,
            banking_sold_ppm=_exact(c.banking_sold_multiple, 6, "compliance.banking_sold_multiple", PPM),
            deadline_month=int(month), deadline_day=int(day), utc_offset_minutes=self.exchange.utc_offset_minutes)
        try:
            rules.check()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return rules

    def stream_name(self) -> str:
        name = self.replication.stream or f"ETX-{self.exchange.id}".upper().replace(".", "-")
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"replication.stream: letters, digits, '-' and '_' only, got {name!r}")
        return name

    def listen(self) -> tuple[str, int]:
        host, _, port = self.exchange.listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ConfigError(f"exchange.listen: expected HOST:PORT, got {self.exchange.listen!r}")
        return host.strip("[]"), int(port)

    def md_root(self) -> str:
        """The market data topic root: market_data.root, or one that names the exchange."""
        return self.market_data.root or md_root(self.exchange.id)

    def check_market_data(self) -> None:
        """Raise ConfigError naming the first key of [market_data] (or exchange.id) that is
        wrong. The files it names are read when the publisher is made, not here."""
        if not EXCHANGE_ID.fullmatch(self.exchange.id):
            raise ConfigError(f"exchange.id: expected 1 to 32 letters, digits, '-' or '_' (it names the exchange "
                              f"in the market data topics), got {self.exchange.id!r}")
        md = self.market_data
        if not md.host or md.host != md.host.strip():
            raise ConfigError(f"market_data.host: expected the MQTT broker's host name or address, got {md.host!r}")
        for name, value, low, high in (("port", md.port, 1, 65535), ("depth", md.depth, 1, MD_DEPTH_MAX),
                                       ("interval_ms", md.interval_ms, 1, MD_INTERVAL_MS_MAX)):
            if not low <= value <= high:
                raise ConfigError(f"market_data.{name} must be between {low} and {high}, got {value}")
        if not md.interval_ms <= md.health_interval_ms <= MD_HEALTH_INTERVAL_MS_MAX:
            raise ConfigError(f"market_data.health_interval_ms must be between market_data.interval_ms "
                              f"({md.interval_ms}) and {MD_HEALTH_INTERVAL_MS_MAX}, got {md.health_interval_ms}")
        if md.root:
            problem = topic_problem(md.root)
            if problem:
                raise ConfigError(f"market_data.root: {problem}")
        if len(md.username) > MD_USERNAME_MAX:
            raise ConfigError(f"market_data.username has more than {MD_USERNAME_MAX} characters")
        if md.password_file and not md.username:
            raise ConfigError("market_data.password_file needs market_data.username (MQTT sends a password only "
                              "with a user name)")
        if not md.tls:
            for name in ("tls_ca", "tls_cert", "tls_key"):
                if getattr(md, name):
                    raise ConfigError(f"market_data.{name} is set but market_data.tls is false: set tls = true "
                                      f"or remove {name}")
        if bool(md.tls_cert) != bool(md.tls_key):
            raise ConfigError("market_data.tls_cert and market_data.tls_key go together (a client certificate and "
                              "its key), both or neither")

    def check(self) -> None:
        """Raise ConfigError naming the first key that is wrong."""
        self.instruments()
        self.schedule()
        self.stp_default()
        self.member_stp()
        self.fee_rates_ppm()
        self.compliance_rules()
        r = self.replication
        if r.enabled:
            self.stream_name()
            if not r.servers or r.replicas not in (1, 3, 5) or min(r.lease_s, r.confirm_s, r.check_s) <= 0:
                raise ConfigError("replication: servers needed, replicas 1, 3 or 5, lease_s, confirm_s and check_s "
                                  "positive")
        self.listen()
        self.check_market_data()
        v = self.surveillance
        if not (v.cancel_ratio_max.is_finite() and v.cancel_ratio_max > 0):
            raise ConfigError(f"surveillance.cancel_ratio_max must be a positive number, got {v.cancel_ratio_max}")
        for name in ("cancel_ratio_min", "settlement_lag_max", "repeat_s"):
            if getattr(v, name) < 0:
                raise ConfigError(f"surveillance.{name} must be at least 0, got {getattr(v, name)}")
        for i in self.instrument:
            if i.large_holder < 0:
                raise ConfigError(f"instrument {i.symbol}: large_holder must be at least 0 t, got {i.large_holder}")
        members = {m.id for m in self.member}
        for name in [*members, self.exchange.operator_member, *(u.user for u in self.user)]:
            if not name or len(name) > NAME_MAX:
                raise ConfigError(f"member ids and user names have at most {NAME_MAX} characters (and at least one), got {name!r}")
        if len(members) != len(self.member):
            raise ConfigError("member: an id is configured twice")
        if not self.member:
            raise ConfigError("member: at least one member is needed")
        if self.exchange.operator_member in members:
            raise ConfigError(f"exchange.operator_member {self.exchange.operator_member!r} must not be a trading member")
        if bool(self.exchange.tls_cert) != bool(self.exchange.tls_key):
            raise ConfigError("exchange.tls_cert and exchange.tls_key go together")
        seen = set()
        for u in self.user:
            where = f"user {u.member}/{u.user}"
            if u.role not in ROLE_NAMES:
                raise ConfigError(f"{where}: role must be one of {sorted(ROLE_NAMES)}, got {u.role!r}")
            staff = u.role in ("operator", "clerk", "authority", "verifier")
            if staff and u.member != self.exchange.operator_member:
                raise ConfigError(f"{where}: role {u.role} belongs to exchange.operator_member {self.exchange.operator_member!r}")
            # A read_only user of the exchange's own member is the staff view (the console's).
            staff_view = u.role == "read_only" and u.member == self.exchange.operator_member
            if not staff and not staff_view and u.member not in members:
                raise ConfigError(f"{where}: unknown member {u.member!r}")
            try:
                parse_hash(u.secret_hash)
            except ValueError as e:
                raise ConfigError(f"{where}: secret_hash: {e} (make one with etx serve --hash-secret)") from None
            if (u.member, u.user) in seen:
                raise ConfigError(f"{where}: configured twice")
            seen.add((u.member, u.user))
        s = self.session
        for name in ("heartbeat_ms", "timeout_heartbeats", "orders_per_second", "burst", "queries_per_second",
                     "flood_factor", "max_frame", "malformed_max", "failures_max", "failure_window_s", "lockout_s",
                     "sessions_max", "prelogon_max", "prelogon_per_address", "frame_deadline_ms", "history_max",
                     "write_buffer_max"):
            if getattr(s, name) <= 0:
                raise ConfigError(f"session.{name} must be positive, got {getattr(s, name)}")


def md_root(exchange_id: str) -> str:
    """The default market data root: the payload version, then the exchange's id, so
    that exchanges sharing a broker never share a topic."""
    return f"etx/v1/{exchange_id}"


def topic_problem(root: str) -> str | None:
    """What keeps ``root`` from being the root of MQTT topic names, if anything."""
    if not root or root.startswith("/") or root.endswith("/") or "//" in root:
        return f"expected topic levels separated by '/', without a leading or trailing '/', got {root!r}"
    if any(c in root for c in ("+", "#", "\x00")):
        return f"a topic cannot hold the wildcards '+' and '#' (or NUL), got {root!r}"
    if len(root) > MD_ROOT_MAX:
        return f"at most {MD_ROOT_MAX} characters, got {len(root)}"
    return None


def fen(yuan: Decimal, where: str) -> int:
    return _exact(yuan, 2, where, FEN)


def _exact(value: Decimal, decimals: int, where: str, unit: str) -> int:
    """``value`` (as written) in whole units of ``10 ** -decimals``; ConfigError quoting
    the value for inf, nan, anything with more decimals than the unit, and magnitudes
    no price or rate has (whose conversion would overflow the decimal context)."""
    if not value.is_finite():
        raise ConfigError(f"{where} {_written(value)} is not a finite number")
    if value and value.adjusted() + decimals >= SCALED_DIGITS_MAX:
        raise ConfigError(f"{where} {_written(value)} is too large")
    if value and value.adjusted() < -decimals:
        raise ConfigError(f"{where} {_written(value)} has more decimals than {unit}")
    # Enough digits that the product is exact: rounding it could make 1.000...001 whole.
    with localcontext(prec=len(value.as_tuple().digits) + decimals + 1):
        scaled = value.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise ConfigError(f"{where} {_written(value)} has more decimals than {unit}")
    return int(scaled)


def _written(value: Decimal) -> str:
    """A decimal as a TOML file writes it (``inf``, ``nan``; not Python's ``Infinity``)."""
    if value.is_nan():
        return "nan"
    if value.is_infinite():
        return "-inf" if value.is_signed() else "inf"
    text = f"{value:f}"  # 0.00000001, not 1E-8 ...
    return text if len(text) <= 40 else str(value)  # ... but 1E-100 rather than a hundred zeros


def _stp(name: str, where: str) -> int:
    try:
        return int(Stp[name.upper()])
    except KeyError:
        modes = [m.name.lower() for m in Stp if m != Stp.DEFAULT]
        raise ConfigError(f"{where}: expected one of {modes}, got {name!r}") from None


def _window(text: str) -> tuple[int, int]:
    try:
        a, b = text.split("-")
        (h1, m1), (h2, m2) = (map(int, x.split(":")) for x in (a, b))
    except ValueError:
        raise ConfigError(f"exchange.schedule: expected 'HH:MM-HH:MM', got {text!r}") from None
    return h1 * 60 + m1, h2 * 60 + m2


def from_dict(raw: dict[str, Any]) -> Config:
    try:
        cfg = msgspec.convert(raw, Config)
    except msgspec.ValidationError as e:
        raise ConfigError(str(e)) from None
    cfg.check()
    return cfg


def loads(text: str) -> Config:
    try:
        raw = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}") from None
    return from_dict(raw)


def load(path: str | Path) -> Config:
    return loads(Path(path).read_text())

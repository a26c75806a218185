"""Order-stream files: a header describing the market, then engine commands in order.

A stream is what ``etx replay`` runs through the engine, what the benchmark generator
writes and what a LOBSTER replay can save. Two encodings of the same content:

- binary (any name but ``*.jsonl``): a sequence of frames, each a 4-byte big-endian
  body length followed by a msgpack body, the same framing as the wire protocol. The
  first frame is a ``StreamHeader`` (a msgpack map); every later frame is one command
  exactly as msgspec encodes ``engine.messages`` commands (an array whose first
  element is the integer tag).
- JSON Lines (``*.jsonl``): the header as a JSON object on the first line, then one
  command per line as msgspec's JSON of the same Struct (``[1, "M01", ...]``). Blank
  lines and lines starting with ``#`` are skipped, for hand-written streams.

Commands carry ``seq`` and ``ts``. A command with ``seq == 0`` is unstamped: the
replay stamps it with the next sequence number and its ``ts`` as the clock. A stamped
command must carry the file's next sequence number and a timestamp no earlier than the
previous command's.

Contract: malformed input never raises anything but ``StreamError``, whose message
names the file, the frame (0 is the header; in JSON Lines, the line number) and what
was expected. ``read_stream`` reads and checks the header eagerly and returns an
iterator of commands; a bad command frame raises ``StreamError`` from the iterator, or
is handed to ``on_error`` and skipped when one is given. A frame whose length cannot
be trusted (truncated file, length over ``FRAME_MAX``) ends the stream: nothing after
it can be found again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Literal, Protocol, cast

import msgspec

from engine.instrument import ALWAYS_OPEN, Instrument, Schedule
from engine.ledger import HoldLedger, SimpleLedger
from engine.matching import Engine
from engine.messages import (
    Accepted,
    Amended,
    AnyCommand,
    Cancelled,
    Command,
    Decremented,
    Event,
    Expired,
    Reason,
    Rejected,
    Stp,
    Trade,
)

STREAM_VERSION = 1
FRAME_MAX = 1 << 20  # bytes of one frame body (or one JSON line): far above any command
HEADER = 4  # bytes of the big-endian length prefix
CHUNK = 1 << 20  # bytes read from the file at a time

Format = Literal["msgpack", "jsonl"]


class StreamHeader(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The first frame of a stream: everything needed to build the engine it replays
    into. ``holds`` lists deposits (account, asset, amount) made into the ledger before
    the first command; the asset is ``CNY`` for cash (fen) or an instrument symbol
    (tonnes)."""

    version: int
    instruments: list[Instrument]
    schedule: Schedule | None = None  # None: always open
    holds: list[tuple[str, str, int]] = msgspec.field(default_factory=list)
    stp_default: int = Stp.CANCEL_RESTING
    description: str = ""

    def check(self) -> None:
        """Raise ValueError naming the first thing that is wrong."""
        if self.version != STREAM_VERSION:
            raise ValueError(f"stream version {self.version} is not supported (expected {STREAM_VERSION})")
        if not self.instruments:
            raise ValueError("the header lists no instruments")
        seen: set[str] = set()
        for rules in self.instruments:
            rules.check()
            if rules.symbol in seen:
                raise ValueError(f"instrument {rules.symbol} listed twice")
            seen.add(rules.symbol)
        if self.schedule is not None:
            self.schedule.check()
        for i, (account, asset, amount) in enumerate(self.holds):
            if not account or not asset or amount < 0:
                raise ValueError(f"holds[{i}]: expected (account, asset, amount >= 0), got {(account, asset, amount)}")
        if self.stp_default not in (Stp.CANCEL_RESTING, Stp.CANCEL_INCOMING, Stp.CANCEL_BOTH, Stp.DECREMENT):
            raise ValueError(f"stp_default must be 1-4, got {self.stp_default}")


class StreamError(Exception):
    """A malformed stream file. ``frame`` is the frame (or line) number, -1 for the
    file as a whole; ``fatal`` says whether reading stopped there."""

    def __init__(self, path: str, frame: int, message: str, *, fatal: bool = True, line: bool = False) -> None:
        if frame < 0:
            where = ""
        elif line:
            where = f"line {frame}: "
        else:
            where = "frame 0 (header): " if frame == 0 else f"frame {frame}: "
        super().__init__(f"{path}: {where}{message}")
        self.path = path
        self.frame = frame
        self.message = message
        self.fatal = fatal


class FundableLedger(Protocol):
    """A hold ledger (a ``HoldLedger``) that can be funded before a replay (SimpleLedger)."""

    def deposit(self, account: str, asset: str, amount: int) -> None: ...


def build_engine(header: StreamHeader, ledger: FundableLedger | None = None) -> Engine:
    """The engine a stream replays into: its instruments, schedule and STP default, and
    a ledger (a new SimpleLedger unless one is given) holding the header's deposits."""
    header.check()
    book = SimpleLedger() if ledger is None else ledger
    for account, asset, amount in header.holds:
        book.deposit(account, asset, amount)
    return Engine(
        header.instruments, cast(HoldLedger, book),  # the engine refuses anything else
        schedule=header.schedule if header.schedule is not None else ALWAYS_OPEN,
        stp_default=header.stp_default,
    )


def stream_format(path: str | os.PathLike[str]) -> Format:
    """The encoding a file name implies: ``*.jsonl`` is JSON Lines, anything else binary."""
    return "jsonl" if os.fspath(path).endswith(".jsonl") else "msgpack"


class Tally:
    """What a replay did, counted from the engine's events: orders accepted, commands
    rejected (by reason), trades with their volume (t) and value (fen), cancels,
    amends, expiries and self-trade decrements."""

    __slots__ = ("accepted", "rejected", "trades", "volume", "value", "cancelled", "amended", "expired", "decremented")

    def __init__(self) -> None:
        self.accepted = self.trades = self.volume = self.value = 0
        self.cancelled = self.amended = self.expired = self.decremented = 0
        self.rejected: dict[int, int] = {}

    def feed(self, events: Iterable[Event]) -> None:
        for ev in events:
            kind = type(ev)
            if kind is Trade:
                assert isinstance(ev, Trade)
                self.trades += 1
                self.volume += ev.qty
                self.value += ev.qty * ev.price
            elif kind is Accepted:
                self.accepted += 1
            elif kind is Cancelled:
                self.cancelled += 1
            elif kind is Rejected:
                assert isinstance(ev, Rejected)
                self.rejected[ev.reason] = self.rejected.get(ev.reason, 0) + 1
            elif kind is Amended:
                self.amended += 1
            elif kind is Expired:
                self.expired += 1
            elif kind is Decremented:
                self.decremented += 1

    def rejected_by_name(self) -> dict[str, int]:
        """Rejections by reason name, most frequent first."""
        named = {_reason_name(code): n for code, n in self.rejected.items()}
        return dict(sorted(named.items(), key=lambda item: (-item[1], item[0])))

    def as_dict(self) -> dict[str, object]:
        return {
            "accepted": self.accepted, "rejected": sum(self.rejected.values()),
            "rejected_by_reason": self.rejected_by_name(), "trades": self.trades, "volume": self.volume,
            "value": self.value, "cancelled": self.cancelled, "amended": self.amended,
            "expired": self.expired, "decremented": self.decremented,
        }


def _reason_name(code: int) -> str:
    try:
        return Reason(code).name
    except ValueError:
        return f"REASON_{code}"


# --- writing -------------------------------------------------------------------------


class StreamWriter:
    """Writes a header, then commands, to a stream file; use as a context manager."""

    def __init__(self, path: str | os.PathLike[str], header: StreamHeader, fmt: Format | None = None) -> None:
        header.check()
        self.path = os.fspath(path)
        self.fmt: Format = fmt or stream_format(path)
        self.count = 0
        self._buf = bytearray()
        self._file: IO[bytes] = open(self.path, "wb")  # closed by close()
        if self.fmt == "jsonl":
            self._encode: Callable[[object], bytes] = msgspec.json.Encoder().encode
        else:
            self._encode = msgspec.msgpack.Encoder().encode
        self._put(header)

    def _put(self, msg: object) -> None:
        body = self._encode(msg)
        if len(body) > FRAME_MAX:
            raise ValueError(f"{self.path}: a frame of {len(body)} bytes exceeds the maximum {FRAME_MAX}")
        if self.fmt == "jsonl":
            self._buf += body
            self._buf += b"\n"
        else:
            self._buf += len(body).to_bytes(HEADER, "big")
            self._buf += body
        if len(self._buf) >= CHUNK:
            self._file.write(self._buf)
            self._buf.clear()

    def write(self, cmd: Command) -> None:
        self._put(cmd)
        self.count += 1

    def write_all(self, cmds: Iterable[Command]) -> None:
        for cmd in cmds:
            self._put(cmd)
            self.count += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.write(self._buf)
            self._buf.clear()
            self._file.close()

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_stream(
    path: str | os.PathLike[str], header: StreamHeader, commands: Iterable[Command], fmt: Format | None = None,
) -> int:
    """Write a whole stream; returns the number of commands written."""
    with StreamWriter(path, header, fmt) as writer:
        writer.write_all(commands)
        return writer.count


def encode_frame(body: bytes) -> bytes:
    """One length-prefixed frame around an encoded body (the wire protocol's framing)."""
    return len(body).to_bytes(HEADER, "big") + body


# --- reading -------------------------------------------------------------------------

_header_msgpack = msgspec.msgpack.Decoder(StreamHeader)
_header_json = msgspec.json.Decoder(StreamHeader)
_command_msgpack = msgspec.msgpack.Decoder(AnyCommand)
_command_json = msgspec.json.Decoder(AnyCommand)

OnError = Callable[[StreamError], None]


def read_stream(
    path: str | os.PathLike[str], fmt: Format | None = None, on_error: OnError | None = None,
) -> tuple[StreamHeader, Iterator[Command]]:
    """Open a stream: its checked header and an iterator of its commands (see the module
    docstring for errors). The file stays open until the iterator is exhausted or
    closed."""
    name = os.fspath(path)
    fmt = fmt or stream_format(name)
    try:
        file = open(name, "rb")  # the iterator closes it
    except OSError as exc:
        raise StreamError(name, -1, f"cannot open: {exc.strerror or exc}") from None
    try:
        if fmt == "jsonl":
            header, commands = _read_jsonl(name, file, on_error)
        else:
            header, commands = _read_frames(name, file, on_error)
    except BaseException:
        file.close()
        raise
    return header, commands


def _check_header(name: str, frame: int, header: StreamHeader, *, line: bool = False) -> StreamHeader:
    try:
        header.check()
    except ValueError as exc:
        raise StreamError(name, frame, f"bad header: {exc}", line=line) from None
    return header


def _read_frames(name: str, file: IO[bytes], on_error: OnError | None) -> tuple[StreamHeader, Iterator[Command]]:
    frames = _frames(name, file)
    try:
        body = next(frames)
    except StopIteration:
        raise StreamError(name, 0, "empty file: expected a header frame") from None
    try:
        header = _header_msgpack.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise StreamError(name, 0, f"expected a stream header (a msgpack map): {exc}") from None
    return _check_header(name, 0, header), _decode_frames(name, file, frames, on_error)


def _frames(name: str, file: IO[bytes]) -> Iterator[bytes]:
    """Frame bodies in order; raises StreamError on a frame that cannot be delimited."""
    buf = b""
    pos = 0
    frame = 0
    while True:
        if len(buf) - pos < HEADER:
            more = file.read(CHUNK)
            if not more:
                if pos == len(buf):
                    return
                raise StreamError(name, frame, f"truncated: {len(buf) - pos} bytes where a 4-byte length was expected")
            buf = buf[pos:] + more
            pos = 0
            continue
        size = int.from_bytes(buf[pos:pos + HEADER], "big")
        if size > FRAME_MAX:
            raise StreamError(name, frame, f"length {size} exceeds the maximum frame of {FRAME_MAX} bytes (not a stream file?)")
        end = pos + HEADER + size
        while end > len(buf):
            more = file.read(max(CHUNK, end - len(buf)))
            if not more:
                raise StreamError(
                    name, frame, f"truncated: expected a body of {size} bytes, the file has {len(buf) - pos - HEADER}",
                )
            buf = buf[pos:] + more
            end -= pos
            pos = 0
        yield buf[pos + HEADER:end]
        pos = end
        frame += 1


def _decode_frames(
    name: str, file: IO[bytes], frames: Iterator[bytes], on_error: OnError | None,
) -> Iterator[Command]:
    decode = _command_msgpack.decode
    frame = 0
    try:
        while True:
            try:
                body = next(frames)
            except StopIteration:
                return
            except StreamError as exc:
                if on_error is None:
                    raise
                on_error(exc)
                return
            frame += 1
            try:
                cmd = decode(body)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                error = StreamError(name, frame, f"expected a command (a tagged msgpack array): {exc}", fatal=False)
                if on_error is None:
                    raise error from None
                on_error(error)
                continue
            yield cmd
    finally:
        file.close()


def _read_jsonl(name: str, file: IO[bytes], on_error: OnError | None) -> tuple[StreamHeader, Iterator[Command]]:
    lines = _lines(name, file)
    for number, line in lines:
        try:
            header = _header_json.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise StreamError(name, number, f"expected a stream header (a JSON object): {exc}", line=True) from None
        return _check_header(name, number, header, line=True), _decode_lines(name, file, lines, on_error)
    raise StreamError(name, 1, "empty file: expected a header line", line=True)


def _lines(name: str, file: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(line number, content) of the lines that are neither blank nor comments."""
    number = 0
    while True:
        line = file.readline(FRAME_MAX + 1)
        if not line:
            return
        number += 1
        if len(line) > FRAME_MAX:
            raise StreamError(name, number, f"longer than the maximum of {FRAME_MAX} bytes", line=True)
        text = line.strip()
        if text and not text.startswith(b"#"):
            yield number, text


def _decode_lines(
    name: str, file: IO[bytes], lines: Iterator[tuple[int, bytes]], on_error: OnError | None,
) -> Iterator[Command]:
    decode = _command_json.decode
    try:
        while True:
            try:
                number, line = next(lines)
            except StopIteration:
                return
            except StreamError as exc:
                if on_error is None:
                    raise
                on_error(exc)
                return
            try:
                cmd = decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                error = StreamError(name, number, f"expected a command (a JSON array starting with its tag): {exc}",
                                    fatal=False, line=True)
                if on_error is None:
                    raise error from None
                on_error(error)
                continue
            yield cmd
    finally:
        file.close()

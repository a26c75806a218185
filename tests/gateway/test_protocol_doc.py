"""docs/protocol.md is true: a stranger writes a client from it alone, so what it shows
is checked against the code and run against a real exchange.

- Every hex dump (a message as an array, then ``frame`` and its bytes) is what the
  encoder makes of that message, and the array is a valid message of the class named.
- Every message, report body and reply row of ``gateway.protocol`` has one table row
  ``| tag | `Name` | fields |`` listing exactly its fields, in order, each with its type
  and default; every member of the enumerations a client meets is in the enumeration
  table with its value, and the Notice codes are the ones the gateway sends.
- The examples drawn as a conversation (a block that starts ``client ... exchange``)
  are run over a real socket against the in-process exchange of ``harness.py``: each
  ``[...]  ->`` line is sent as it is written (consecutive ones in one write), each
  ``<- [...]`` line must be the next message that arrives, every value equal (``ts``
  stands for any timestamp; ``ServerHeartbeat`` messages are skipped), and each line
  in parentheses is an action of the test named by the start of its text.
"""

from __future__ import annotations

import asyncio
import json
import re
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engine.messages import (
    Accepted,
    BlockEnd,
    Cancelled,
    CancelReason,
    OrdType,
    Phase,
    Pricing,
    Reason,
    Side,
    Stp,
    TimeInForce,
)
from gateway.config import SessionSection
from gateway.framing import encode_frame
from gateway.protocol import (
    INBOUND,
    OUTBOUND,
    CodMode,
    GatewayReason,
    Liquidity,
    OrderState,
    ReportBody,
    Role,
    inbound_decoder,
    outbound_decoder,
)
from settlement.messages import HolderType, RegistryReason
from tests.gateway.harness import OPERATOR_MEMBER, SECRET, SYMBOL, Harness, body_of, run

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"
BLOCK = re.compile(r"^```[a-z]*\n(.*?)^```", re.S | re.M)
HEX_LINE = re.compile(r"^(?:frame)?\s+((?:[0-9a-f]{2} ?)+)\s*$")
SHOWN = re.compile(r"^(?P<name>[A-Z][A-Za-z]+) +(?P<array>\[.*\])\s*$")
ROW = re.compile(r"^\|\s*(?P<tag>\d+|–)\s*\|\s*`(?P<name>[A-Z][A-Za-z]*)`\s*\|\s*(?P<fields>[^|]*?)\s*\|")
FIELD = re.compile(r'([a-z_][a-z0-9_]*) `([^`]+)`(?: = ("[^"]*"|-?\d+|true|false))?')
ENUM_ROW = re.compile(r"^\|\s*(?:`(?P<enum>[A-Za-z]+)`)?\s*\|\s*(?P<value>\d+)\s*\|\s*`(?P<name>[A-Z_0-9]+)`\s*\|")
STRING_OR_TS = re.compile(r'("(?:[^"\\]|\\.)*")|\bts\b')
TS = "\0ts"  # what ``ts`` in an example stands for: any timestamp

# The enumerations whose every member the document's table lists, by the name it uses.
ENUMS: dict[str, type[IntEnum]] = {
    e.__name__: e for e in (Phase, Side, OrdType, TimeInForce, Stp, CancelReason, Liquidity, Role, CodMode,
                            OrderState, Reason, GatewayReason, RegistryReason, HolderType, BlockEnd, Pricing)
}


def doc() -> str:
    return DOC.read_text()


def blocks(text: str) -> list[str]:
    return BLOCK.findall(text)


def value(text: str) -> Any:
    """An array as the document writes it (JSON, with ``ts`` for any timestamp)."""
    return json.loads(STRING_OR_TS.sub(lambda m: m.group(1) or json.dumps(TS), text))


# --- hex dumps ----------------------------------------------------------------------------


def hex_dumps(text: str) -> list[tuple[str, Any, bytes]]:
    """(class name, array, bytes) of each dump: a line ``Name  [array]``, then a line
    ``frame  hex ...`` and its indented continuation lines."""
    dumps = []
    for block in blocks(text):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            shown = SHOWN.match(line)
            if not shown or i + 1 >= len(lines) or not lines[i + 1].startswith("frame "):
                continue
            hexes: list[str] = []
            for follow in lines[i + 1:]:
                m = HEX_LINE.match(follow)
                if not m or (hexes and follow.startswith("frame")):
                    break
                hexes.append(m.group(1))
            dumps.append((shown["name"], value(shown["array"]), bytes.fromhex(" ".join(hexes))))
    return dumps


def test_every_hex_dump_is_what_the_encoder_makes() -> None:
    dumps = hex_dumps(doc())
    names = [name for name, _, _ in dumps]
    for must in ("NewOrder", "LogonAck", "Report"):
        assert must in names, f"docs/protocol.md shows no hex dump of a {must}"
    assert names.count("Report") >= 2 and names.count("NewOrder") >= 2, names
    classes = {c.__name__: c for c in (*INBOUND, *OUTBOUND)}
    for name, array, frame in dumps:
        where = f"the hex dump of {name} {array}"
        assert name in classes, f"{where}: no message is called {name}"
        body = msgspec.msgpack.encode(array)
        assert frame == encode_frame(array), f"{where}: shown {frame.hex(' ')}, encoded {encode_frame(array).hex(' ')}"
        decoded: Any = msgspec.msgpack.decode(body, type=classes[name])  # a valid message of that class ...
        decoder = inbound_decoder() if classes[name] in INBOUND else outbound_decoder()
        assert decoder.decode(body) == decoded, where  # ... as the receiving side decodes it
        if len(array) == 1 + len(msgspec.structs.fields(classes[name])):
            assert encode_frame(decoded) == frame, f"{where}: every field is shown, so the Struct encodes the same"


def test_a_hex_dump_that_is_wrong_is_caught() -> None:
    """The dump parser finds a changed byte (the test above can fail)."""
    text = doc()
    name, array, frame = hex_dumps(text)[0]
    first_frame = next(line for line in text.splitlines() if line.startswith("frame "))
    changed = first_frame[:-2] + ("00" if first_frame[-2:] != "00" else "01")
    _, _, wrong = hex_dumps(text.replace(first_frame, changed, 1))[0]
    assert wrong != frame == encode_frame(array)


# --- tables of messages and enumerations -------------------------------------------------


def _strip_remarks(text: str) -> str:
    while True:
        shorter = re.sub(r"\([^()]*\)", "", text)
        if shorter == text:
            return text
        text = shorter


def doc_type(t: Any) -> str:
    """How the document writes the type of a field."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is typing.Annotated:
        return doc_type(args[0])
    if t in (int, str, bool):
        return str(t.__name__)
    if origin is list:
        return f"list[{doc_type(args[0])}]"
    if origin is tuple:
        return "[" + ", ".join(doc_type(a) for a in args) + "]"
    if set(args) == set(typing.get_args(ReportBody)):
        return "ReportBody"
    if isinstance(t, type) and issubclass(t, msgspec.Struct):
        return t.__name__
    raise AssertionError(f"no documented form for the type {t!r}")


def documented_classes() -> list[type]:
    """Every message a client sends or receives, every report body, and every row of a
    reply (the Structs in their lists)."""
    out: list[type] = [*INBOUND, *OUTBOUND, *typing.get_args(ReportBody)]
    for cls in list(out):
        for f in msgspec.structs.fields(cls):
            if typing.get_origin(f.type) is list:
                (item,) = typing.get_args(f.type)
                if isinstance(item, type) and issubclass(item, msgspec.Struct) and item not in out:
                    out.append(item)
    return out


def table_rows(text: str) -> dict[str, list[tuple[str, str]]]:
    rows: dict[str, list[tuple[str, str]]] = {}
    for line in text.splitlines():
        m = ROW.match(line)
        if m:
            rows.setdefault(m["name"], []).append((m["tag"], m["fields"]))
    return rows


def field_problems(cls: type, tag: str, fields: str) -> list[str]:
    name = cls.__name__
    problems = []
    want_tag = cls.__struct_config__.tag  # type: ignore[attr-defined]
    if (str(want_tag) if want_tag is not None else "–") != tag:
        problems.append(f"{name}: tag {tag!r} in the table, {want_tag} in the code")
    shown = FIELD.findall(_strip_remarks(fields))
    want = [(f.name, doc_type(f.type), "" if f.default is msgspec.NODEFAULT else json.dumps(f.default))
            for f in msgspec.structs.fields(cls)]
    if [s[0] for s in shown] != [w[0] for w in want]:
        problems.append(f"{name}: fields {[s[0] for s in shown]} in the table, {[w[0] for w in want]} in the code")
        return problems
    for (field_name, typ, default), (_, want_typ, want_default) in zip(shown, want, strict=True):
        if typ != want_typ:
            problems.append(f"{name}.{field_name}: type `{typ}` in the table, `{want_typ}` in the code")
        if default != want_default:
            problems.append(f"{name}.{field_name}: default {default or 'none'} in the table, "
                            f"{want_default or 'none'} in the code")
    return problems


def test_every_message_and_row_has_its_table_row_with_its_fields_types_and_defaults() -> None:
    rows = table_rows(doc())
    problems = []
    for cls in documented_classes():
        found = rows.get(cls.__name__, [])
        if len(found) != 1:
            problems.append(f"{cls.__name__}: {len(found)} table rows, expected one")
            continue
        problems += field_problems(cls, *found[0])
    assert not problems, "docs/protocol.md disagrees with gateway/protocol.py:\n" + "\n".join(problems)


def test_a_field_left_out_of_a_row_is_caught() -> None:
    """The row check can fail: a field left out, a wrong type, a wrong default."""
    rows = table_rows(doc())
    fill, logon = _cls("Fill"), _cls("Logon")
    tag, fields = rows["Fill"][0]
    assert field_problems(fill, tag, fields) == []
    assert field_problems(fill, tag, fields.replace("leaves `int`", ""))
    assert field_problems(fill, tag, fields.replace("qty `int`", "qty `str`"))
    assert field_problems(fill, "171", fields)
    tag, fields = rows["Logon"][0]
    assert field_problems(logon, tag, fields) == []
    assert field_problems(logon, tag, fields.replace("= 0", "= 1", 1))


def _cls(name: str) -> type:
    return next(c for c in documented_classes() if c.__name__ == name)


def enum_rows(text: str) -> dict[str, dict[int, str]]:
    """Enumeration name -> {value: member name}; a row whose first cell is empty
    continues the enumeration above it."""
    out: dict[str, dict[int, str]] = {}
    current = ""
    for line in text.splitlines():
        m = ENUM_ROW.match(line)
        if not m:
            if not line.startswith("|"):
                current = ""
            continue
        current = m["enum"] or current
        assert current, f"an enumeration row names no enumeration: {line}"
        out.setdefault(current, {})[int(m["value"])] = m["name"]
    return out


def test_every_enumeration_member_is_in_the_enumeration_table() -> None:
    table = enum_rows(doc())
    for name, enum in ENUMS.items():
        assert table.get(name) == {int(e): e.name for e in enum}, (
            f"docs/protocol.md lists {name} as {table.get(name)}, the code has {({int(e): e.name for e in enum})}")
    # The codes a Notice carries: exactly those the gateway sends one with.
    sent = set()
    for path in (ROOT / "gateway").glob("*.py"):
        sent |= set(re.findall(r"Notice\(\s*GatewayReason\.([A-Z_]+)", path.read_text()))
    assert sent and table.get("Notice") == {int(GatewayReason[n]): n for n in sent}, (table.get("Notice"), sent)


# --- the worked examples -------------------------------------------------------------------


def conversations(text: str) -> list[str]:
    return [b for b in blocks(text) if re.match(r"client +exchange\n", b)]


def _array_end(text: str) -> int:
    """The index just past the array that ``text`` starts with."""
    depth, in_string, escaped = 0, False, False
    for i, ch in enumerate(text):
        if in_string:
            escaped = not escaped and ch == "\\"
            if ch == '"' and not escaped:
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                return i + 1
    raise AssertionError(f"no complete array in {text!r}")


def parse_line(line: str) -> tuple[str, Any]:
    """("send", array), ("recv", array), ("note", text) or ("", None) for a blank line."""
    text = line.strip()
    if not text:
        return "", None
    if text.startswith("<-"):
        rest = text[2:].strip()
        return "recv", value(rest[:_array_end(rest)])
    if text.startswith("["):
        end = _array_end(text)
        assert text[end:].strip().startswith("->"), f"a client line must end its array with ->: {line!r}"
        return "send", value(text[:end])
    assert text.startswith("(") and text.endswith(")"), f"not a message nor an action: {line!r}"
    return "note", text


def same(shown: Any, got: Any) -> bool:
    if shown == TS:
        return type(got) is int and got > 10**18  # nanoseconds since the epoch: after 2001
    if isinstance(shown, list):
        return isinstance(got, list) and len(got) == len(shown) and all(map(same, shown, got))
    return type(shown) is type(got) and shown == got


class Wire:
    """A bare socket: frames out exactly as given, every message in as its raw array."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buf = b""
        self.decode = outbound_decoder().decode

    @classmethod
    async def open(cls, port: int) -> Wire:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv(self, timeout: float = 5.0) -> Any:
        """The next message but a ServerHeartbeat, as its array; None when closed."""
        while True:
            if len(self.buf) >= 4:
                n = int.from_bytes(self.buf[:4], "big")
                if len(self.buf) >= 4 + n:
                    body, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                    self.decode(body)  # a valid outbound message
                    msg = msgspec.msgpack.decode(body)
                    if msg[0] == 152:
                        continue
                    return msg
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                return None
            self.buf += data


@dataclass
class Ctx:
    h: Harness
    wire: Wire
    others: dict[str, Any] = field(default_factory=dict)


Action = Callable[[Ctx], Awaitable[None]]


async def converse(block: str, ctx: Ctx, actions: dict[str, Action]) -> None:
    lines = block.splitlines()[1:]
    pending: list[bytes] = []
    used = set()
    for n, line in enumerate(lines, 2):
        kind, what = parse_line(line)
        if kind == "send":
            assert TS not in json.dumps(what), f"line {n}: a client sends no placeholder"
            pending.append(encode_frame(what))
            continue
        if pending:  # the client lines above, in one write
            ctx.wire.send(b"".join(pending))
            pending = []
        if kind == "recv":
            got = await ctx.wire.recv()
            assert same(what, got), f"line {n} of the example: shown {line.strip()}\n  arrived {got}"
        elif kind == "note":
            keys = [k for k in actions if what.startswith(k)]
            assert len(keys) == 1, f"line {n}: no action of the test (or several) for {what!r}"
            used.add(keys[0])
            await actions[keys[0]](ctx)
    assert not pending, "the example ends with frames nobody answers"
    assert used == set(actions), f"actions the example no longer has: {set(actions) - used}"


EXAMPLE_MEMBERS = ("M001", "M002")
EXAMPLE_USERS = [("M001", "trader1", Role.TRADER), ("M002", "trader2", Role.TRADER),
                 (OPERATOR_MEMBER, "op", Role.OPERATOR)]


async def _until(check: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within 5 s: {what}")


@run
async def test_the_step_by_step_session_is_what_happens() -> None:
    (block,) = [b for b in conversations(doc()) if '"A-4"' in b]
    assert "s3cret-pass" in block and SECRET == "s3cret-pass"
    cfg = SessionSection(orders_per_second=1, burst=2, flood_factor=100)

    async def m002_sells(ctx: Ctx) -> None:
        m2 = await ctx.h.client("M002", "trader2")
        m2.new_order(SYMBOL, Side.SELL, 60, 10_020)
        acc = await body_of(m2, Accepted)
        assert acc.order_id == 2

    async def connection_lost(ctx: Ctx) -> None:
        stream = ctx.h.server.streams["M001"]
        ctx.wire.writer.transport.abort()
        await _until(lambda: stream.seq == 3, "the cancel on disconnect")
        assert type(stream.history[-1].body) is Cancelled
        ctx.wire = await Wire.open(ctx.h.port)

    async def logged_out(ctx: Ctx) -> None:
        assert await ctx.wire.recv() is None  # the connection ends after the SessionClosed
        stream = ctx.h.server.streams["M001"]
        await _until(lambda: stream.seq == 7, "the cancel on disconnect after the logout")
        last: list[tuple[int, Any]] = [(r.seq_out, r.body) for r in stream.history[-2:]]
        assert [(seq_out, type(b), b.order_id, b.qty, b.reason) for seq_out, b in last] == [
            (6, Cancelled, 3, 5, CancelReason.DISCONNECT), (7, Cancelled, 4, 5, CancelReason.DISCONNECT)]

    actions: dict[str, Action] = {
        "(member M002 sells 60 t at 100.20": m002_sells,
        "(the connection is lost": connection_lost,
        "(logged out:": logged_out,
    }
    async with Harness(cfg, members=EXAMPLE_MEMBERS, users=EXAMPLE_USERS) as h:
        assert h.server.sequencer.seq == 6  # the set-up's registry commands: the first order is seq 7
        await converse(block, Ctx(h, await Wire.open(h.port)), actions)
        h.check()


@run
async def test_the_order_of_answers_example_is_what_happens() -> None:
    (block,) = [b for b in conversations(doc()) if '"B-1"' in b]
    async with Harness(members=EXAMPLE_MEMBERS, users=EXAMPLE_USERS) as h:
        ctx = Ctx(h, await Wire.open(h.port))
        await converse(block, ctx, {})
        assert await ctx.wire.recv() is None
        h.check()


def test_the_conversation_parser_catches_a_wrong_value() -> None:
    block = next(b for b in conversations(doc()) if '"A-4"' in b)
    shown = next(parse_line(line)[1] for line in block.splitlines() if line.strip().startswith("<- [160, 1,"))
    body = shown[2]
    got = [160, 1, [101, body[1], 1_800_000_000_000_000_000, *body[3:]], 0]
    assert same(shown, got)
    assert not same(shown, [160, 1, [101, body[1], 1_800_000_000_000_000_000, *body[3:-1], 2], 0])
    assert not same(shown, [160, 1, [101, body[1], 5, *body[3:]], 0])  # ts is a timestamp
    assert not same([1, True], [1, 1]) and not same([1], [True])


@pytest.mark.parametrize("line, parsed", [
    ('[1, "M001", "A-1", "CEA24", 1, 100, 10025]      ->  (sent again)', ("send", [1, "M001", "A-1", "CEA24", 1, 100, 10025])),
    ('         <- [156, 3]     (the replay ends)', ("recv", [156, 3])),
    ('     <- [102, 0, ts, "a [b] \\"ts\\" (c)"]', ("recv", [102, 0, TS, 'a [b] "ts" (c)'])),
    ("   (a note)", ("note", "(a note)")),
])
def test_conversation_lines_parse(line: str, parsed: tuple[str, Any]) -> None:
    assert parse_line(line) == parsed

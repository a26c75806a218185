"""pytest-benchmark suite for the member wire codec: msgpack frames of the gateway
protocol (``gateway.framing``, ``gateway.protocol``) encoded and decoded as the server
and the member client do it, with no sockets.

Run: ``.venv/bin/pytest benchmarks/test_codec.py --benchmark-only -p no:cacheprovider``
(``ETX_BENCH_CODEC_N`` sets the commands of the flow, default 20,000).

The flow is ``benchmarks.generator``'s mixed stream (seed 1, 20 members): about 70 %
new orders and 30 % cancels, which the engine answers with about two reports per
command (acceptances, one fill per side of each trade, cancellations). The reports are
made by the gateway's own routing (``gateway.streams.Router``) from the engine's
events, 128 commands per batch. Everything is built once; a round only encodes or
decodes, and every decoded message is checked equal to the original before anything is
timed.

- ``test_encode_reports``: one round frames every report as the server's ``_encode``
  does after each batch: one ``FrameWriter.frames`` call per member stream with new
  reports in that batch.
- ``test_decode_commands``: one round splits the members' command frames (as a client
  sends them: ``seq``/``ts`` 0) in reads of 256 KiB and decodes each with the server's
  inbound decoder, as a session's ``data_received`` does.
- ``test_decode_reports``: one round splits the encoded reports in reads of
  ``gateway.client.READ_CHUNK`` and decodes each with the client's outbound decoder.

``extra_info`` has messages per second and bytes of the median round.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, NamedTuple

import msgspec
import pytest

from benchmarks.generator import generate, member_names
from engine.stream import build_engine
from gateway.client import READ_CHUNK
from gateway.framing import MAX_FRAME_DEFAULT, MAX_OUTBOUND_FRAME, FrameSplitter, FrameWriter
from gateway.protocol import Report, inbound_decoder, outbound_decoder
from gateway.streams import Router

N = int(os.environ.get("ETX_BENCH_CODEC_N", "20000"))
SEED = 1
MEMBERS = 20
BATCH = 128  # commands per core batch when the reports are made
SERVER_READ = 256 * 1024  # what asyncio's socket transport reads at most per data_received
ROUNDS = 20


class Flow(NamedTuple):
    commands: list[Any]  # as members send them: unstamped
    parts: list[list[Report]]  # each batch's new reports of one member stream
    reports: list[Report]  # the parts in order


@pytest.fixture(scope="module")
def flow() -> Flow:
    work = generate("mixed", N, SEED, members=MEMBERS)
    engine = build_engine(work.header)
    router = Router(engine, member_names(MEMBERS), [])
    engine.apply_batch(work.warmup)
    engine.out.clear()
    for stream in router.streams.values():
        stream.history.clear()
    parts: list[list[Report]] = []
    for i in range(0, len(work.commands), BATCH):
        batch = work.commands[i:i + BATCH]
        marks = {m: len(s.history) for m, s in router.streams.items()}
        engine.apply_batch(batch)
        router.rebuild(batch, engine.out)
        engine.out.clear()
        parts += [s.history[marks[m]:] for m, s in router.streams.items() if len(s.history) > marks[m]]
    commands = [msgspec.structs.replace(c, seq=0, ts=0) for c in work.commands]
    return Flow(commands, parts, [r for part in parts for r in part])


def split_decode(blob: bytes, read: int, max_frame: int, decode: Any) -> list[Any]:
    """Every message in ``blob``, taken in reads of ``read`` bytes as a socket gives them."""
    splitter = FrameSplitter(max_frame)
    msgs: list[Any] = []
    for i in range(0, len(blob), read):
        msgs += map(decode, splitter.split(blob[i:i + read]))
    assert not splitter.rest
    return msgs


def _rates(benchmark: Any, messages: int, size: int) -> None:
    benchmark.extra_info["messages"] = messages
    benchmark.extra_info["bytes"] = size
    benchmark.extra_info["messages_per_s"] = round(messages / benchmark.stats.stats.median)


def test_encode_reports(benchmark: Any, flow: Flow) -> None:
    frames = FrameWriter().frames
    parts = flow.parts

    def encode() -> int:
        return sum(len(frames(part)) for part in parts)

    size = encode()
    decoded = split_decode(b"".join(map(frames, parts)), READ_CHUNK, MAX_OUTBOUND_FRAME, outbound_decoder().decode)
    assert decoded == flow.reports
    benchmark.pedantic(encode, rounds=ROUNDS, iterations=1, warmup_rounds=2)
    _rates(benchmark, len(flow.reports), size)
    benchmark.extra_info["bodies"] = dict(Counter(type(r.body).__name__ for r in flow.reports))


def test_decode_commands(benchmark: Any, flow: Flow) -> None:
    blob = FrameWriter().frames(flow.commands)
    decode = inbound_decoder().decode
    assert split_decode(blob, SERVER_READ, MAX_FRAME_DEFAULT, decode) == flow.commands
    benchmark.pedantic(split_decode, args=(blob, SERVER_READ, MAX_FRAME_DEFAULT, decode), rounds=ROUNDS,
                       iterations=1, warmup_rounds=2)
    _rates(benchmark, len(flow.commands), len(blob))


def test_decode_reports(benchmark: Any, flow: Flow) -> None:
    blob = FrameWriter().frames(flow.reports)
    decode = outbound_decoder().decode
    assert split_decode(blob, READ_CHUNK, MAX_OUTBOUND_FRAME, decode) == flow.reports
    benchmark.pedantic(split_decode, args=(blob, READ_CHUNK, MAX_OUTBOUND_FRAME, decode), rounds=ROUNDS,
                       iterations=1, warmup_rounds=2)
    _rates(benchmark, len(flow.reports), len(blob))

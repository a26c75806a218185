"""Length-prefixed framing: a 4-byte big-endian body length, then the msgpack body.

``FrameSplitter`` turns whatever bytes a socket read returned into complete frame
bodies (keeping a partial frame for the next read) and refuses a length above the
maximum before buffering it, so a peer cannot make the reader hold more than one
maximum frame. ``FrameWriter`` encodes many messages into one buffer with one encoder,
so that a batch of replies costs one socket write; ``FrameWriter.frames`` frames a
whole list with no Python step per message (the server's outbound hot path).
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

HEADER_SIZE = 4
MAX_FRAME_DEFAULT = 64 * 1024  # inbound body limit; far above any valid inbound message
MAX_OUTBOUND_FRAME = 4 * 1024 * 1024  # query replies are bounded well below this

_unpack_from = struct.Struct(">I").unpack_from
_pack_into = struct.Struct(">I").pack_into
_pack = struct.Struct(">I").pack


class FrameTooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the maximum of {limit}")
        self.size = size
        self.limit = limit


class FrameSplitter:
    """Splits a byte stream into frame bodies."""

    __slots__ = ("rest", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME_DEFAULT) -> None:
        self.rest = b""
        self.max_frame = max_frame

    def split(self, data: bytes) -> list[bytes]:
        """The complete frame bodies in ``rest + data``, in order. Raises FrameTooLarge
        when a length prefix exceeds the maximum; the frames before it are lost with it
        (the caller closes the session)."""
        # Bodies are bytes slices, not memoryviews: a small copy costs less than a view
        # (and a bytes object is no work for the garbage collector).
        if self.rest:
            data = self.rest + data
        end = len(data)
        pos = 0
        frames: list[bytes] = []
        limit = self.max_frame
        append = frames.append  # bound once: runs per frame
        while end - pos >= HEADER_SIZE:
            (size,) = _unpack_from(data, pos)
            if size > limit:
                self.rest = b""
                raise FrameTooLarge(size, limit)
            start = pos + HEADER_SIZE
            stop = start + size
            if stop > end:
                break
            append(data[start:stop])
            pos = stop
        self.rest = data[pos:] if pos < end else b""
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame kept for the next read."""
        return len(self.rest)


class FrameWriter:
    """Appends framed messages to a bytearray with one shared encoder."""

    __slots__ = ("encoder",)

    def __init__(self, encoder: msgspec.msgpack.Encoder | None = None) -> None:
        self.encoder = encoder or msgspec.msgpack.Encoder()

    def append(self, buf: bytearray, msg: Any) -> None:
        off = len(buf)
        buf += b"\0\0\0\0"
        self.encoder.encode_into(msg, buf, off + HEADER_SIZE)
        _pack_into(buf, off, len(buf) - off - HEADER_SIZE)

    def frames(self, msgs: list[Any]) -> bytes:
        """Every message framed, in order, as one buffer. The loops run in C (map,
        zip, join): no Python step per message, which is what the per-report cost of
        the gateway's output came down to."""
        bodies = list(map(self.encoder.encode, msgs))
        parts: list[bytes] = [b""] * (2 * len(bodies))
        parts[::2] = map(_pack, map(len, bodies))
        parts[1::2] = bodies
        return b"".join(parts)

    def frame(self, msg: Any) -> bytes:
        buf = bytearray()
        self.append(buf, msg)
        return bytes(buf)


def encode_frame(msg: Any, encoder: msgspec.msgpack.Encoder | None = None) -> bytes:
    """One framed message (convenience for clients and tests)."""
    body = (encoder or _ENCODER).encode(msg)
    return len(body).to_bytes(HEADER_SIZE, "big") + body


_ENCODER = msgspec.msgpack.Encoder()

"""A private Mosquitto broker for tests: its own free port on 127.0.0.1, its own
temporary directory, started and stopped by the test (so a test can also restart it).

Use the ``mosquitto_broker`` fixture (import it into the test module), or the
``Mosquitto`` class directly; ``Subscriber`` records what a subscriber receives. ``users`` turns on password authentication (a password
file made with ``mosquitto_passwd -b``, ``allow_anonymous false``); ``tls`` serves TLS
with a certificate, its key and the CA file clients are checked against
(``require_certificate``: clients must present a certificate that CA signed). A
missing ``mosquitto`` binary fails the test loudly with how to install it: tests that
need a broker never skip.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import msgspec
import pytest

START_TIMEOUT_S = 5.0
WAIT_S = 5.0  # how long a Subscriber waits for a message before the test fails


def mosquitto_binary() -> str:
    """The broker's path; raises with the remedy when it is not installed."""
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise RuntimeError("mosquitto is not installed: apt-get install mosquitto (./dev test does it)")
    return found


def mosquitto_passwd_binary() -> str:
    found = shutil.which("mosquitto_passwd")
    if found is None:
        raise RuntimeError("mosquitto_passwd is not installed: apt-get install mosquitto (./dev test does it)")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """One broker process on 127.0.0.1:``port``; ``start()`` again after ``stop()``
    reuses the same port, as a restarted production broker would."""

    def __init__(self, directory: Path, port: int | None = None, *, users: dict[str, str] | None = None,
                 tls: tuple[Path, Path, Path] | None = None, require_certificate: bool = False) -> None:
        """``tls``: (certificate, key, CA file for client certificates)."""
        self.binary = mosquitto_binary()
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.directory = directory
        self.config = directory / "mosquitto.conf"
        self.log = directory / "mosquitto.log"
        # Started as root, mosquitto would drop to the user "mosquitto", who cannot read
        # the test's private directory (its log, certificates and password file).
        lines = ["user root"] if os.geteuid() == 0 else []
        lines += [f"listener {self.port} {self.host}"]
        if tls is not None:
            cert, key, cafile = tls
            lines += [f"certfile {cert}", f"keyfile {key}", f"cafile {cafile}",
                      f"require_certificate {'true' if require_certificate else 'false'}"]
        if users:
            passwords = directory / "mosquitto.passwd"
            passwords.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run([mosquitto_passwd_binary(), "-b", str(passwords), user, password], check=True,
                               capture_output=True, timeout=30)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines += ["allow_anonymous true"]
        lines += ["persistence false", f"log_dest file {self.log}", "log_type error", "log_type warning",
                  "log_type notice"]
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.process is None, "already running"
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                self.process = None
                log = self.log.read_text(errors="replace") if self.log.exists() else ""
                raise RuntimeError(f"mosquitto exited at start on port {self.port}: {err}{log}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} "
                                       f"within {START_TIMEOUT_S} s") from None
                time.sleep(0.02)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.stderr:
            process.stderr.close()

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running private broker; stopped (if still running) after the test."""
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


class Subscriber:
    """Collects every message under ``topic`` (``etx/v1/#``) from the moment it is
    connected, as (topic, payload, retain flag); ``client``: aiomqtt.Client's username,
    password, tls_context. ``async with Subscriber(port) as feed: await feed.wait(...)``."""

    def __init__(self, port: int, topic: str = "etx/v1/#", host: str = "127.0.0.1", **client: Any) -> None:
        self.host, self.port, self.topic, self.options = host, port, topic, client
        self.messages: list[tuple[str, bytes, bool]] = []

    async def __aenter__(self) -> Subscriber:
        self.client = aiomqtt.Client(self.host, self.port, timeout=WAIT_S, **self.options)
        await self.client.__aenter__()
        await self.client.subscribe(self.topic, qos=1)
        self.task = asyncio.create_task(self._collect())
        return self

    async def _collect(self) -> None:
        async for m in self.client.messages:
            assert isinstance(m.payload, bytes)
            self.messages.append((str(m.topic), m.payload, bool(m.retain)))

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.client.__aexit__(None, None, None)

    def on(self, topic: str) -> list[Any]:
        """The messages on ``topic`` so far, decoded (an empty payload, a cleared
        retained message, is left out)."""
        return [msgspec.json.decode(p) for t, p, _ in self.messages if t == topic and p]

    async def wait(self, topic: str, pred: Callable[[Any], bool] = lambda _: True, since: int = 0) -> Any:
        """The first message on topic that satisfies pred, from the ``since``-th message
        received (``len(messages)`` earlier: only what came after); fails after WAIT_S."""
        seen = since
        async with asyncio.timeout(WAIT_S):
            while True:
                for t, p, _ in self.messages[seen:]:
                    seen += 1
                    if t == topic and p:
                        msg = msgspec.json.decode(p)
                        if pred(msg):
                            return msg
                await asyncio.sleep(0.005)

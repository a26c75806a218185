"""A real ``etx serve`` process for integration tests, and the tools run as commands.

``Exchange(tmp_path)`` writes a configuration (members M1-M4 trading CEA24, a clerk, the
authority and an operator; small scrypt cost), credentials files for the staff, and
runs ``etx serve`` on a free port with its data folder in ``tmp_path/data``.
``etx(...)`` runs the installed command line as a subprocess.
"""

from __future__ import annotations

import asyncio
import atexit
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.crash_soak import SECRET, TRADERS, Serve, free_port, write_config
from gateway.client import Client
from gateway.credentials import Credentials, write_file
from gateway.protocol import CodMode, Report
from settlement import RegistryDone, RegistryRejected

ROOT = Path(__file__).resolve().parents[2]
STAFF = {"clerk": "clerk", "auth": "authority", "ops": "operator"}


_STARTED: list[Serve] = []


@atexit.register
def _kill_leftovers() -> None:
    """A test that fails before stopping its exchange must not leave it running."""
    for serve in _STARTED:
        if serve.proc is not None and serve.proc.poll() is None:
            serve.proc.kill()


class Exchange:
    def __init__(self, tmp_path: Path, *serve_args: str, registry: str = "registry.sqlite", extra: str = "",
                 staff: dict[str, str] | None = None) -> None:
        """``staff``: more staff users of the exchange's member, user -> role."""
        self.dir = tmp_path
        self.port = free_port()
        self.data = tmp_path / "data"
        self.data.mkdir(exist_ok=True)
        more = staff or {}
        self.config = write_config(tmp_path, self.port, registry=registry, extra=extra,
                                   users=tuple(("EXCH", user, role) for user, role in more.items()))
        self.creds = {user: write_file(tmp_path / f"{user}.cred", Credentials("EXCH", user, SECRET))
                      for user in {**STAFF, **more}}
        self.serve = Serve(self.config, self.data, self.port, ROOT, ("--log-level", "INFO", *serve_args))
        _STARTED.append(self.serve)

    async def start(self) -> None:
        self.serve.start()
        await self.serve.ready()

    def stop(self) -> int:
        return self.serve.stop()

    def kill(self) -> None:
        self.serve.kill()

    def etx(self, *argv: str, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return etx(*argv, timeout=timeout, input=input)

    def registry(self, user: str, *argv: str) -> subprocess.CompletedProcess[str]:
        """``etx registry --data DATA --credentials USER.cred ARGV`` (a staff user)."""
        return self.etx("registry", "--data", str(self.data), "--credentials", str(self.creds[user]), *argv)

    async def fund(self, members: tuple[str, ...], cash: int, allowances: int, symbol: str = "CEA24") -> None:
        """Open each member's account, deposit ``cash`` fen and allocate ``allowances`` t of
        ``symbol``, through the running exchange as its clerk and authority."""
        from settlement import Allocate, Deposit, HolderType, OpenAccount

        clerk, auth = self.client("EXCH", "clerk"), self.client("EXCH", "auth")
        await clerk.connect()
        await auth.connect()
        try:
            for m in members:
                for who, cmd in ((clerk, OpenAccount("", m, int(HolderType.COMPLIANCE), m)), (clerk, Deposit("", m, cash)),
                                 (auth, Allocate("", "AUTHORITY", m, symbol, allowances))):
                    done = await staff_command(who, cmd)
                    assert type(done) is RegistryDone, done
        finally:
            await clerk.close()
            await auth.close()

    def client(self, member: str, user: str = "") -> Client:
        return Client("127.0.0.1", self.port, member, user or f"t{member}", SECRET, cod=CodMode.OFF)


def etx(*argv: str, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, input=input)


async def staff_command(client: Client, cmd: Any, timeout: float = 10) -> Any:
    """Send a registry command as a logged-on staff user; its RegistryDone or
    RegistryRejected (or the gateway's refusal)."""
    client.send(cmd)
    rep = await client.wait_for(
        lambda m: isinstance(m, Report) and isinstance(m.body, (RegistryDone, RegistryRejected))
        or (isinstance(m, Report) and m.seq_out == 0), timeout)
    return rep.body


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 240))


__all__ = ["ROOT", "SECRET", "TRADERS", "Exchange", "etx", "run", "staff_command"]

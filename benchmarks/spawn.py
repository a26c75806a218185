"""An exchange for a load test: ``etx serve`` in a subprocess on a fresh folder (journal,
snapshots, SQLite registry), its load members funded through the registry clerk and the
authority, removed afterwards unless kept."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from engine import Side
from gateway.auth import hash_secret
from gateway.client import Client
from gateway.protocol import Report

SYMBOL = "CEA24"
REF = 10_000
_ACCEPTED, _REJECTED, _FILL = 101, 102, 170


class Spawned:
    """``etx serve`` in a subprocess on a fresh folder, with funded load members."""

    def __init__(self, pairs: int, folder: str | None = None, serve_args: list[str] | None = None,
                 log_path: str | None = None, market_data: bool = False, members: int = 0,
                 instruments: list[str] | None = None, extra_config: str = "") -> None:
        """``pairs`` buyer/seller member pairs, or ``members`` members; ``instruments``
        as ``[[instrument]]`` TOML bodies (default: CEA24 at CNY 100.00, band +-10 %)."""
        self.folder = Path(folder or tempfile.mkdtemp(prefix="etx-load-"))
        self.made_folder = folder is None
        self.log_path = log_path  # the exchange's output is appended to it at stop
        self.pairs = pairs
        self.market_data = market_data  # publish to the broker --mqtt names (serve_args), else none
        self.serve_args = list(serve_args or [])  # more options for etx serve
        self.secret = secrets.token_urlsafe(12)
        self.members = [f"L{i:02d}" for i in range(members or 2 * pairs)]
        self.instruments = instruments or [f'symbol = "{SYMBOL}"\nref_price = 100.00']
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.extra_config = extra_config  # appended to the configuration (e.g. a [replication] section)

    def config(self) -> str:
        h = hash_secret(self.secret, n=1 << 12)
        lines = ['[exchange]', 'listen = "127.0.0.1:0"', 'schedule = "always"', 'operator_member = "EXCH"',
                 'registry = "registry.sqlite"',
                 '[fees]', 'trading_rate = 0.0003', 'registry_rate = 0.00005',
                 '[session]', 'orders_per_second = 10000000', 'burst = 10000000',
                 ]
        for body in self.instruments:
            lines += ['[[instrument]]', body]
        for m in self.members:
            lines += ['[[member]]', f'id = "{m}"', '[[user]]', f'member = "{m}"', 'user = "load"', 'role = "trader"',
                      f'secret_hash = "{h}"']
        for u, role in (("clerk", "clerk"), ("authority", "authority"), ("ops", "operator")):
            lines += ['[[user]]', 'member = "EXCH"', f'user = "{u}"', f'role = "{role}"', f'secret_hash = "{h}"']
        return "\n".join(lines) + "\n" + self.extra_config

    async def start(self) -> int:
        cfg = self.folder / "etx.toml"
        cfg.write_text(self.config())
        self.proc = subprocess.Popen(
            [sys.executable, *os.environ.get("ETX_LOAD_PYFLAGS", "").split(), "-m", "tools.cli", "serve", "--config", str(cfg), "--data", str(self.folder / "data"),
             *([] if self.market_data else ["--no-market-data"]), "--log-level", "WARNING", *self.serve_args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, self.proc.stdout.readline)
            if not line:
                raise RuntimeError("etx serve exited before listening")
            if line.startswith("etx serving on "):
                self.port = int(line.split()[3].rstrip(";").rpartition(":")[2])
                break
        await self.fund()
        return self.port

    async def fund(self) -> None:
        from settlement import Allocate, Deposit, HolderType, OpenAccount, RegistryDone

        clerk = Client("127.0.0.1", self.port, "EXCH", "clerk", self.secret)
        auth = Client("127.0.0.1", self.port, "EXCH", "authority", self.secret)
        await clerk.connect()
        await auth.connect()
        for m in self.members:
            clerk.send(OpenAccount("", m, int(HolderType.INSTITUTION), m))
            clerk.send(Deposit("", m, 10**13))
            for symbol in self.symbols():
                auth.send(Allocate("", "AUTHORITY", m, symbol, 10**9))
        from settlement import RegistryRejected

        # Each staff user has its own stream: each reads the answers to its commands.
        for client, answers in ((clerk, 2 * len(self.members)), (auth, len(self.members) * len(self.symbols()))):
            for _ in range(answers):
                msg = await client.wait_for(
                    lambda x: isinstance(x, Report) and isinstance(x.body, RegistryDone | RegistryRejected), 30)
                if not isinstance(msg.body, RegistryDone):
                    raise RuntimeError(f"funding refused: {msg.body}")
        await clerk.close()
        await auth.close()

    def symbols(self) -> list[str]:
        return [body.split('"')[1] for body in self.instruments]

    def remove(self) -> None:
        """Delete the folder (journal, snapshots, registry) if this made it."""
        if self.made_folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def creds(self) -> list[tuple[str, str, str, int]]:
        return [(m, "load", self.secret, int(Side.BUY if i % 2 == 0 else Side.SELL)) for i, m in enumerate(self.members)]

    def stop(self) -> str:
        if self.proc is None:
            return ""
        self.proc.send_signal(2)  # SIGINT: graceful
        try:
            out, _ = self.proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(out)
        return out

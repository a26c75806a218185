"""A private NATS JetStream cluster for tests: ``nats-server`` (Debian's package) on free
loopback ports, each node with its own folder, started and stopped by the fixture."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NatsCluster:
    def __init__(self, directory: Path, nodes: int = 3) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not Path(binary).exists():
            raise AssertionError("the replication tests need nats-server (Debian: apt-get install nats-server)")
        self.binary = binary
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ports = [_free_port() for _ in range(nodes)]
        self.cluster_ports = [_free_port() for _ in range(nodes)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * nodes
        for i in range(nodes):
            self.start(i)
        self.wait_ready()

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.ports]

    def _config(self, i: int) -> Path:
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for j, p in enumerate(self.cluster_ports) if j != i)
        store = self.directory / f"n{i}"
        store.mkdir(parents=True, exist_ok=True)
        text = (f"server_name: n{i}\nlisten: 127.0.0.1:{self.ports[i]}\n"
                f"jetstream {{ store_dir: \"{store}\", max_memory_store: 64MB, max_file_store: 1GB }}\n")
        if len(self.ports) > 1:
            text += (f"cluster {{ name: etxtest, listen: 127.0.0.1:{self.cluster_ports[i]}, "
                     f"routes: [{routes}] }}\n")
        path = self.directory / f"n{i}.conf"
        path.write_text(text)
        return path

    def start(self, i: int) -> None:
        log = open(self.directory / f"n{i}.log", "ab")
        self.procs[i] = subprocess.Popen([self.binary, "-c", str(self._config(i))], stdout=log, stderr=log)

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        self.procs[i] = None

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until JetStream answers on every running node (the cluster has a meta leader)."""
        import nats

        async def ready(url: str, i: int) -> bool:
            try:
                nc = await nats.connect(url, connect_timeout=1, max_reconnect_attempts=0)
            except Exception:
                return False
            try:
                js = nc.jetstream(timeout=2)
                await js.account_info()
                if len(self.ports) > 1:  # the cluster places a replicated stream: it is formed
                    name = f"READY{i}"
                    await js.add_stream(name=name, subjects=[f"ready{i}.x"], num_replicas=len(self.ports))
                    await js.delete_stream(name)
                return True
            except Exception:
                return False
            finally:
                await nc.close()

        deadline = time.monotonic() + timeout_s
        for i, url in enumerate(self.urls):
            if self.procs[i] is None:
                continue
            while not asyncio.run(ready(url, i)):
                if time.monotonic() > deadline:
                    raise AssertionError(f"nats-server {url} did not get JetStream ready in {timeout_s} s; see "
                                         f"{self.directory}/n{i}.log")
                time.sleep(0.2)

    def stop(self) -> None:
        for i in range(len(self.procs)):
            proc = self.procs[i]
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            self.procs[i] = None

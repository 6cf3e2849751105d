"""The cluster's network on loopback: a pod IP per pod, a Service IP per Service, kube-proxy and DNS.

- Pods get 127.0.1.x, Services 127.0.2.x (all of 127/8 is local on Linux).
- DNS: ``svc``, ``svc.ns``, ``svc.ns.svc`` and ``svc.ns.svc.cluster.local`` in ``/etc/hosts`` (a marked
  block, removed at the end), so clients send the in-cluster Host headers. Headless Services name their pod.
- kube-proxy: one TCP forwarder per Service port to the *ready* endpoints' targetPort (named ports resolved
  on the pod), so a pod that fails its readinessProbe gets no traffic, as in a cluster. Forwarders set
  SO_REUSEPORT: a server that binds the wildcard address itself (Feast's gRPC registry binds ``[::]``) can
  share the port, and Linux hands connections to the Service address to the more specific listener.
- Audit: for the Services in ``Network.audited``, each connection's client is looked up (the process
  holding the other end of the socket, :func:`socket_owner`) and named by ``Network.audit`` (its pod), so
  a test can check every client against the NetworkPolicies (rehearsal.netpol).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import os
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HOSTS = Path("/etc/hosts")
MARK = "# relearn rehearsal"


def dns_names(name: str, namespace: str) -> list[str]:
    """The names a Service answers to inside the cluster."""
    return [name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]


class Hosts:
    """A marked block of ``/etc/hosts`` entries (CI runs as root), removed on close.

    The addresses are fixed, so one rehearsal runs at a time on a machine: a lock file serialises them.
    """

    def __init__(self, path: Path = HOSTS) -> None:
        self.path = path
        self.entries: list[tuple[str, str]] = []
        self.lock = Path("/tmp/relearn-rehearsal.lock").open("w")  # noqa: SIM115 - held until release()
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        self.close()  # a previous run killed with -9 left its block behind

    def add(self, ip: str, names: list[str]) -> None:
        self.entries += [(ip, n) for n in names]
        self._write()

    def _without_block(self) -> list[str]:
        return [line for line in self.path.read_text().splitlines() if not line.endswith(MARK)]

    def _write(self) -> None:
        lines = self._without_block() + [f"{ip} {name} {MARK}" for ip, name in self.entries]
        self.path.write_text("\n".join(lines) + "\n")

    def close(self) -> None:
        self.path.write_text("\n".join(self._without_block()) + "\n")

    def release(self) -> None:
        self.close()
        fcntl.flock(self.lock, fcntl.LOCK_UN)
        self.lock.close()


@dataclass
class Endpoint:
    """One pod behind a Service port."""

    pod: str
    ip: str
    port: int
    ready: Callable[[], bool]


@dataclass
class ServicePort:
    """A Service's port, forwarded to its endpoints' target port."""

    service: str
    ip: str
    port: int
    endpoints: list[Endpoint] = field(default_factory=list)
    connections: int = 0
    refused: int = 0
    clients: list[str | None] = field(default_factory=list)  # audited Services: who connected


def _proc_address(address: tuple[str, int]) -> str:
    """``ip:port`` as /proc/net/tcp prints it: the IPv4 address as a native-endian u32, both in hex."""
    (number,) = struct.unpack("=I", socket.inet_aton(address[0]))
    return f"{number:08X}:{address[1]:04X}"


def socket_owner(local: tuple[str, int], remote: tuple[str, int]) -> int | None:
    """The pid holding the TCP socket ``local`` → ``remote`` (/proc/net/tcp, then every process's fds)."""
    want = (_proc_address(local), _proc_address(remote))
    inode = next(
        (
            f[9]
            for f in map(str.split, Path("/proc/net/tcp").read_text().splitlines()[1:])
            if (f[1], f[2]) == want
        ),
        None,
    )
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):  # gone meanwhile, or a kernel thread
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == target:
                        return int(proc.name)
    return None


class Network:
    """Addresses, DNS names and the forwarders (an asyncio loop in a thread)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.hosts = Hosts()
        self._pod_ips = (f"127.0.1.{i}" for i in itertools.count(2))
        self._svc_ips = (f"127.0.2.{i}" for i in itertools.count(2))
        self.ports: dict[tuple[str, int], ServicePort] = {}
        self.service_ips: dict[str, str] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[asyncio.AbstractServer] = []
        self._round_robin = itertools.count()
        self.audited: set[str] = set()  # Service names whose clients are looked up
        self.audit: Callable[[tuple[str, int], tuple[str, int]], str | None] = lambda peer, service: None

    def pod_ip(self) -> str:
        return next(self._pod_ips)

    def service(self, name: str, namespace: str | None = None, *, ip: str | None = None) -> str:
        """Give a Service its address and DNS names (``ip``: a headless Service's pod)."""
        ns = namespace or self.namespace
        key = f"{name}.{ns}"
        if key not in self.service_ips:
            self.service_ips[key] = ip or next(self._svc_ips)
            self.hosts.add(self.service_ips[key], dns_names(name, ns))
        return self.service_ips[key]

    def forward(
        self, name: str, port: int, endpoints: list[Endpoint], namespace: str | None = None
    ) -> ServicePort:
        """Listen on the Service's address and port; forward each connection to a ready endpoint."""
        ip = self.service(name, namespace)
        sp = self.ports.get((ip, port))
        if sp is not None:
            sp.endpoints = endpoints
            return sp
        sp = self.ports[(ip, port)] = ServicePort(name, ip, port, endpoints)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            ready = [e for e in sp.endpoints if e.ready()]
            if not ready:  # no endpoints: the connection is refused, as by kube-proxy's REJECT rule
                sp.refused += 1
                writer.close()
                return
            target = ready[next(self._round_robin) % len(ready)]
            try:
                up_reader, up_writer = await asyncio.open_connection(target.ip, target.port)
            except OSError:
                sp.refused += 1
                writer.close()
                return
            sp.connections += 1
            if sp.service in self.audited:
                peer = writer.get_extra_info("peername")[:2]
                loop = asyncio.get_running_loop()
                sp.clients.append(await loop.run_in_executor(None, self.audit, peer, (sp.ip, sp.port)))
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

        server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(handle, ip, port, reuse_port=True), self.loop
        ).result(10)
        self.servers.append(server)
        return sp

    def close(self) -> None:
        for server in self.servers:
            self.loop.call_soon_threadsafe(server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.hosts.release()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()

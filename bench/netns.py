"""Hosts on one machine: network namespaces joined by veth pairs to a bridge (for bench/scaleout.py).

Each host is a namespace (``ip netns``) with its own loopback and one veth
whose other end is on a bridge in the root namespace; the bridge has the
subnet's first address, so this process (in the root namespace) reaches every
host, and every host reaches the others, through the kernel's network stack
instead of loopback. Needs root (CAP_NET_ADMIN) and iproute2.

>>> with Network(["redis", "w1"]) as net:
...     subprocess.Popen(net.prefix("redis") + ["redis-server", "--bind", net.address("redis")])

Everything made is removed on exit (``close``, also from ``atexit`` and after
SIGTERM / Ctrl-C reach the ``with``): processes must be stopped first, since a
namespace's processes outlive its deletion.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
from collections.abc import Sequence

__all__ = ["NetnsUnavailable", "Network", "netns_unavailable_reason"]


class NetnsUnavailable(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def netns_unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (None: they can): not root, no iproute2, or the kernel refuses."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    if os.geteuid() != 0:
        return "not root (network namespaces need CAP_NET_ADMIN)"
    probe = f"lqprobe{os.getpid()}"
    done = _ip("netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"`ip netns add` failed: {done.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class Network:
    """One bridge, one namespace per host name, addresses 10.231.<n>.2, .3, ... in ``hosts`` order."""

    def __init__(self, hosts: Sequence[str], *, delay_ms: float = 0.0) -> None:
        tag = os.getpid() % 100_000
        self.tag = tag
        self.subnet = f"10.231.{20 + tag % 200}"
        self.bridge = f"lqb{tag}"
        self.bridge_address = f"{self.subnet}.1"
        self.hosts = list(hosts)
        self.delay_ms = delay_ms
        self._namespaces: list[str] = []
        self._links: list[str] = []
        self._bridge_made = False
        self._closed = False

    def namespace(self, host: str) -> str:
        return f"lq{self.tag}-{host}"

    def address(self, host: str) -> str:
        return f"{self.subnet}.{2 + self.hosts.index(host)}"

    def prefix(self, host: str) -> list[str]:
        """The command prefix that runs a program on ``host``."""
        return ["ip", "netns", "exec", self.namespace(host)]

    def open(self) -> Network:
        atexit.register(self.close)
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._bridge_made = True
            _ip("addr", "add", f"{self.bridge_address}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for index, host in enumerate(self.hosts):
                self._add_host(index, host)
        except BaseException:
            self.close()
            raise
        return self

    def _add_host(self, index: int, host: str) -> None:
        ns = self.namespace(host)
        outside, inside = f"lq{self.tag}h{index}", f"lq{self.tag}p{index}"  # at most 15 characters
        _ip("netns", "add", ns)
        self._namespaces.append(ns)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        self._links.append(outside)
        _ip("link", "set", inside, "netns", ns)
        _ip("link", "set", outside, "master", self.bridge)
        _ip("link", "set", outside, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", inside)
        _ip("-n", ns, "link", "set", inside, "up")
        if self.delay_ms > 0:  # each packet leaving a host waits this long: a round trip between hosts costs 2x
            done = subprocess.run(["tc", "-n", ns, "qdisc", "add", "dev", inside, "root", "netem", "delay",
                                   f"{self.delay_ms}ms"], capture_output=True, text=True, check=False)  # fmt: skip
            if done.returncode != 0:
                raise NetnsUnavailable(f"tc netem delay: {done.stderr.strip() or done.returncode}")

    def close(self) -> None:
        """Delete the veth pairs, the namespaces and the bridge. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for link in self._links:  # deleting one end deletes the pair, even while a process holds the namespace
            _ip("link", "del", link, check=False)
        for ns in self._namespaces:
            _ip("netns", "del", ns, check=False)
        self._links, self._namespaces = [], []
        if self._bridge_made:
            _ip("link", "del", self.bridge, check=False)

    def __enter__(self) -> Network:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

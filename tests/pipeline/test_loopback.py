"""Local multi-process runs listen on loopback only (Beam's worker handlers would bind every interface)."""

from __future__ import annotations

import ipaddress
import os
import threading

import pytest

from pipeline.loopback import loopback_address, loopback_grpc
from tests.pipeline.conftest import run_pipeline

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp{,6}


def _tree(root: int) -> set[int]:
    """root and every process below it."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", encoding="utf-8") as f:
                    parents[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the process ended meanwhile
    tree, grown = {root}, True
    while grown:
        below = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree |= below
        grown = bool(below)
    return tree


def _socket_inodes(pids: set[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    return inodes


def _address(hex_address: str) -> tuple[str, int]:
    """'0100007F:1F90' -> ('127.0.0.1', 8080); IPv6 addresses are four little-endian 32-bit words, and an
    IPv4-mapped one (::ffff:127.0.0.1, how gRPC may bind an IPv4 address) is given as IPv4."""
    host, port = hex_address.split(":")
    address = ipaddress.ip_address(b"".join(bytes.fromhex(host[i:i + 8])[::-1] for i in range(0, len(host), 8)))
    return str(getattr(address, "ipv4_mapped", None) or address), int(port, 16)


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket of pid's process tree that listens."""
    inodes = _socket_inodes(_tree(pid))
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="utf-8") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == LISTEN and fields[9] in inodes:
                    found.add(_address(fields[1]))
    return found


def test_wildcard_addresses_become_loopback_and_named_hosts_stay():
    assert loopback_address("[::]:0") == "127.0.0.1:0"
    assert loopback_address("0.0.0.0:8080") == "127.0.0.1:8080"
    assert loopback_address("localhost:0") == "localhost:0"
    assert loopback_address("10.1.2.3:50051") == "10.1.2.3:50051"


def test_a_grpc_server_asked_for_every_interface_listens_on_loopback_inside_the_block_only():
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    original = grpc.server
    with ThreadPoolExecutor(1) as pool, loopback_grpc(), loopback_grpc():  # nested: restored after the outer
        server = grpc.server(pool)
        port = server.add_insecure_port("[::]:0")
        server.start()
        try:
            assert ("127.0.0.1", port) in listening(os.getpid())
            assert not any(p == port and h != "127.0.0.1" for h, p in listening(os.getpid()))
        finally:
            server.stop(0).wait()
    assert grpc.server is original


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's /proc/net/tcp")
def test_a_two_worker_run_listens_on_loopback_only(sample_root, tmp_path):
    seen: set[tuple[str, int]] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen.update(listening(os.getpid()))
            stop.wait(0.05)

    before = listening(os.getpid())
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        stats = run_pipeline(sample_root, str(tmp_path / "out"), "--dry_run", "--local_workers", "2", limit="2")
    finally:
        stop.set()
        watcher.join()
    assert stats["input"] == 20
    beam = seen - before
    assert len(beam) >= 4, beam  # the driver's control, data, state and logging servers at least
    assert all(ipaddress.ip_address(host).is_loopback for host, _ in beam), sorted(beam)

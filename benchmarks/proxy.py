"""What the fault proxy costs with no toxic, measured the way Toxiproxy measures itself.

    .venv/bin/python benchmarks/proxy.py [--quick] [--requests N] [--megabytes M]
                                         [--baseline SRC]

Toxiproxy's README benchmark: an HTTP GET of a 64 KiB body and of an 11-byte body
("hello world"), direct and through the proxy, and a large stream's throughput. Here:

* an upstream HTTP/1.1 server (keep-alive, fixed bodies) runs in its own process;
* ``stoic proxy`` runs in its own process, as it would in CI (one Python process, asyncio);
* the client, in this process, does sequential GETs on one keep-alive connection and times
  each one: the added latency is proxied minus direct, at p50 and p99;
* the stream test reads M megabytes (100 by default) on one connection: MB/s, direct and
  proxied (1 MB = 10^6 bytes).

Every target is measured in interleaved rounds (a fifth of the GETs each, round by round), so
a machine whose load drifts during the run hurts them alike. ``--baseline SRC`` adds a second
``stoic proxy`` run from another source tree (e.g. ``git archive main src | tar -x -C /tmp/b``
then ``--baseline /tmp/b/src``): before/after in one run.

A Toxiproxy binary (``toxiproxy-server``) on the PATH is measured in the same run as a peer;
otherwise its published figures are printed for reference (Go: under 100 us added per
request, about 1000-2400 MB/s on the hardware of its README).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

from stoic.chaos import Supervisor

UPSTREAM = textwrap.dedent("""\
    import socket, sys, threading
    BODIES = {b"/64k": b"x" * 65536, b"/11b": b"hello world"}
    CHUNK = b"s" * (1 << 20)

    def handle(conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        while True:
            while b"\\r\\n\\r\\n" not in buffer:
                data = conn.recv(65536)
                if not data:
                    conn.close(); return
                buffer += data
            head, buffer = buffer.split(b"\\r\\n\\r\\n", 1)
            path = head.split(b" ", 2)[1]
            if path.startswith(b"/stream/"):
                remaining = int(path[8:])
                conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % remaining)
                while remaining > 0:
                    piece = CHUNK if remaining >= len(CHUNK) else CHUNK[:remaining]
                    conn.sendall(piece)
                    remaining -= len(piece)
                continue
            body = BODIES[path]
            conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", int(sys.argv[1])))
    server.listen(64)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()
""")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Client:
    """A minimal keep-alive HTTP/1.1 client: just enough to time a GET precisely."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray(1 << 20)
        self.view = memoryview(self.buffer)

    def get(self, path: str) -> int:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            head += chunk
        header, body = head.split(b"\r\n\r\n", 1)
        length = int(header.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        remaining = length - len(body)
        while remaining > 0:
            got = self.sock.recv_into(self.view, min(remaining, len(self.buffer)))
            if not got:
                raise ConnectionError("closed")
            remaining -= got
        return length

    def close(self) -> None:
        self.sock.close()


ROUNDS = 5


def latencies(port: int, path: str, requests: int) -> list[float]:
    client = Client(port)
    try:
        for _ in range(min(200, requests)):  # warm up the connection and both processes
            client.get(path)
        samples = []
        for _ in range(requests):
            start = time.perf_counter()
            client.get(path)
            samples.append(time.perf_counter() - start)
        return samples
    finally:
        client.close()


def interleaved_latencies(targets: dict[str, int], path: str, requests: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(ROUNDS):
        for name, port in targets.items():
            samples[name] += latencies(port, path, max(1, requests // ROUNDS))
    return samples


def throughput(port: int, megabytes: int) -> float:
    client = Client(port)
    try:
        total = megabytes * 1_000_000
        start = time.perf_counter()
        client.get(f"/stream/{total}")
        return total / (time.perf_counter() - start) / 1e6
    finally:
        client.close()


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def start_stoic_proxy(
    supervisor: Supervisor, upstream: int, work: Path, name: str = "stoic proxy",
    source: str | None = None,
) -> int:
    api, listen = free_port(), free_port()
    config = work / f"proxies-{api}.json"
    config.write_text(json.dumps([{"name": "bench", "listen": f"127.0.0.1:{listen}",
                                   "upstream": f"127.0.0.1:{upstream}"}]))
    # the config's proxies listen before the API answers, so the API port is the one to wait on
    supervisor.start(
        name,
        [sys.executable, "-c", "from stoic.cli import main; main()", "proxy",
         "--port", str(api), "--config", str(config)],
        env={"PYTHONPATH": source} if source else None, ready_port=api, ready_timeout=15.0,
    )
    return listen


def start_toxiproxy(supervisor: Supervisor, upstream: int) -> int | None:
    binary = shutil.which("toxiproxy-server")
    if binary is None:
        return None
    api, listen = free_port(), free_port()
    supervisor.start("toxiproxy", [binary, "-port", str(api)], ready_port=api, ready_timeout=15.0)
    body = json.dumps({"name": "bench", "listen": f"127.0.0.1:{listen}",
                       "upstream": f"127.0.0.1:{upstream}"}).encode()
    urllib.request.urlopen(urllib.request.Request(  # 201 once the proxy listens
        f"http://127.0.0.1:{api}/proxies", data=body, method="POST"))
    return listen


def fault_point_overhead() -> None:
    """What a dormant ``stoic.chaos.fault`` mark costs (faults disabled: one flag check)."""
    import timeit

    from stoic import chaos

    def bare() -> int:
        return 1

    decorated = chaos.fault("bench.decorated", error=ValueError, rate=1.0)(bare)
    point = chaos.fault("bench.block", error=ValueError, rate=1.0)

    def block() -> int:
        with point:
            return 1

    def ns(fn: object) -> float:
        return min(timeit.repeat(fn, number=200_000, repeat=5)) / 200_000 * 1e9  # type: ignore[arg-type]

    base = ns(bare)
    print()
    print(f"{'fault point, disabled':<28} {'ns/call':>8} {'added':>8}")
    print(f"{'bare function':<28} {base:>8.0f}")
    for label, fn in (("@fault decorated", decorated), ("with fault(...) block", block)):
        cost = ns(fn)
        print(f"{label:<28} {cost:>8.0f} {cost - base:>8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, 20 MB stream")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--baseline", metavar="SRC",
                        help="also measure the stoic proxy of this source tree (before/after)")
    args = parser.parse_args()
    requests = 500 if args.quick else args.requests
    megabytes = 20 if args.quick else args.megabytes

    with tempfile.TemporaryDirectory() as tmp, Supervisor(grace=10.0) as supervisor:
        upstream = free_port()
        supervisor.start("upstream", [sys.executable, "-c", UPSTREAM, str(upstream)],
                         ready_port=upstream, ready_timeout=15.0)
        targets = {"direct": upstream}
        if args.baseline:
            targets["baseline"] = start_stoic_proxy(supervisor, upstream, Path(tmp), "baseline",
                                                    args.baseline)
        targets["stoic proxy"] = start_stoic_proxy(supervisor, upstream, Path(tmp))
        toxiproxy = start_toxiproxy(supervisor, upstream)
        if toxiproxy is not None:
            targets["toxiproxy"] = toxiproxy
        report(targets, requests, megabytes)


def report(targets: dict[str, int], requests: int, megabytes: int) -> None:
    print(f"machine: {os.cpu_count()} cpus, Python {sys.version.split()[0]}; "
          f"{requests} sequential GETs per row, {megabytes} MB stream")
    print()
    print(f"{'body':<6} {'path':<12} {'p50 us':>9} {'p99 us':>9} {'added p50':>10} "
          f"{'added p99':>10}")
    for path, label in (("/11b", "11 B"), ("/64k", "64 KiB")):
        base: tuple[float, float] | None = None
        measured = interleaved_latencies(targets, path, requests)
        for name, samples in measured.items():
            p50, p99 = percentile(samples, 50) * 1e6, percentile(samples, 99) * 1e6
            if base is None:
                base = (p50, p99)
                added = ("", "")
            else:
                added = (f"{p50 - base[0]:.0f}", f"{p99 - base[1]:.0f}")
            print(f"{label:<6} {name:<12} {p50:>9.0f} {p99:>9.0f} {added[0]:>10} {added[1]:>10}")
    print()
    print(f"{'stream':<19} {'MB/s':>9} {'vs direct':>10}")
    rates: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(3):
        for name, port in targets.items():
            rates[name].append(throughput(port, megabytes))
    direct = statistics.median(rates["direct"])
    for name, runs in rates.items():
        rate = statistics.median(runs)
        print(f"{name:<19} {rate:>9.0f} {rate / direct:>10.2f}")
    fault_point_overhead()
    if "toxiproxy" not in targets:
        print()
        print("toxiproxy-server not on PATH; its README reports < 100 us added per request "
              "and about 1000-2400 MB/s (Go, its own hardware).")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""New-connection latency through a Service, for testbed/versus.sh.

    connlat.py serve PORT           # in the pod: accept, send one byte, close; forever
    connlat.py measure IP:PORT N    # on the node: N sequential connections; prints
                                    # "p50_us p99_us" of connect + first byte
"""
import socket
import sys
import time


def serve(port):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(512)
    while True:
        conn, _ = listener.accept()
        try:
            conn.sendall(b"x")
        finally:
            conn.close()


def measure(target, count):
    host, port = target.rsplit(":", 1)
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        with socket.create_connection((host, int(port)), timeout=2) as s:
            if s.recv(1) != b"x":
                raise SystemExit("unexpected answer")
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    p50 = samples[len(samples) // 2]
    p99 = samples[min(len(samples) - 1, (len(samples) * 99 + 99) // 100 - 1)]
    print(f"{p50:.0f} {p99:.0f}")


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        measure(sys.argv[2], int(sys.argv[3]))

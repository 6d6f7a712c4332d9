#!/usr/bin/env python3
"""One WebSocket echo through a gateway, from the standard library alone (no websocat here,
and wsload takes loopback URLs only, while the nodes' addresses are not).

    ws_echo.py [--proxy] HOST PORT PATH [SERVER]

Connects to ws://HOST:PORT/PATH (with --proxy, after a PROXY v1 header naming the
connection's own addresses: what a gateway trusting the peer for PROXY headers expects), reads the backend's `connected` message, sends one text
message and reads its `echo`; with SERVER, both must come from that backend. Prints the
backend's id; exits 1 on anything else. Every read is bounded (10 s).
"""
import base64
import json
import os
import socket
import struct
import sys


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data


def read_message(sock):
    """The next text message's payload; pings and pongs skipped (a server's frames are
    unmasked and, for these small messages, unfragmented)."""
    while True:
        first, second = read_exact(sock, 2)
        opcode, length = first & 0x0F, second & 0x7F
        if length == 126:
            length = struct.unpack("!H", read_exact(sock, 2))[0]
        elif length == 127:
            length = struct.unpack("!Q", read_exact(sock, 8))[0]
        payload = read_exact(sock, length)
        if opcode == 0x1:
            return json.loads(payload)
        if opcode == 0x8:
            raise EOFError("closed by the server")


def send_text(sock, text):
    # A client masks every frame (RFC 6455 5.3).
    payload = text.encode()
    mask = os.urandom(4)
    header = bytes([0x81])
    if len(payload) < 126:
        header += bytes([0x80 | len(payload)])
    else:
        header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(header + mask + masked)


def main():
    args = sys.argv[1:]
    proxy = args[:1] == ["--proxy"]
    if proxy:
        args = args[1:]
    host, port, path = args[0], int(args[1]), args[2]
    expected = args[3] if len(args) > 3 else None
    sock = socket.create_connection((host, port), timeout=10)
    sock.settimeout(10)
    if proxy:
        (src, sport), (dst, dport) = sock.getsockname()[:2], sock.getpeername()[:2]
        family = "TCP6" if ":" in src else "TCP4"
        sock.sendall(f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode())
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += read_exact(sock, 1)
    status = head.split(b"\r\n", 1)[0].decode()
    if " 101 " not in status + " ":
        sys.exit(f"no upgrade: {status}")
    hello = read_message(sock)
    if hello.get("type") != "connected":
        sys.exit(f"expected connected, got {hello}")
    server = hello["server"]
    if expected and server != expected:
        sys.exit(f"connected to {server}, expected {expected}")
    send_text(sock, "where am i")
    while True:
        message = read_message(sock)
        if message.get("type") == "echo":
            break
    if message.get("server") != server:
        sys.exit(f"echo from {message.get('server')}, connected to {server}")
    print(server)


if __name__ == "__main__":
    main()

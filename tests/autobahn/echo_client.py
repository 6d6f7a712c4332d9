"""The testee client of `wstest -m fuzzingserver` (Python 3, `websockets`).

Asks the fuzzing server how many cases it has, runs each one (`/runCase?case=N&agent=A`),
echoing every message it receives, then asks it to write its reports
(`/updateReports?agent=A`).

    python echo_client.py --server ws://127.0.0.1:9001 --agent direct
    python echo_client.py --server ws://127.0.0.1:9001 --agent gateway --via 127.0.0.1:7000
    python echo_client.py --server ws://127.0.0.1:9001 --agent gateway-tls \
        --via 127.0.0.1:7443 --via-ca ca.pem

With --via the case connections go to that address (the gateway, whose backend is the fuzzing
server) while their URL, and so their Host header, stays the fuzzing server's: Autobahn
fails a handshake whose Host port is not the one it listens on. /getCaseCount and
/updateReports always go straight to the fuzzing server.

--via-ca ca.pem makes the case connections TLS (to a gateway serving wss://), the certificate
checked against that CA and the --via host (an IP address here). websockets refuses a TLS
context for a ws:// URI, so those connections use the same URL as wss://: the host and port,
and so the Host header (the port is not 443, so it is written out), the path and the query
are the fuzzing server's as before; only the transport changes.

A case whose connection stays silent for --idle-timeout seconds (the fuzzing server's own
waits are at most 2 s, so only a path that never delivers the end of a case gets there), or
that lasts --case-timeout seconds in all, is abandoned: the connection is dropped, the fuzzing
server keeps the verdict it reached, and the run goes on. --update-only just asks for the
reports. --first/--last run only a range of the case numbers (the harness gives 1.* to
10.* to `wsecho client` and the rest to this client), --no-update leaves the reports to the
next client. Exits non-zero only if the fuzzing server itself cannot be reached.
"""

import argparse
import asyncio
import json
import logging
import os
import socket
import ssl
import sys

# 9.3.1 and 9.4.1 send a 4 MiB message in 64-byte fragments (65536 of them); websockets
# refuses more than 4096 fragments per message unless told otherwise.
os.environ.setdefault("WEBSOCKETS_MAX_FRAGMENTS", "1000000")

from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException


def split_host_port(via):
    host, _, port = via.rpartition(":")
    return host.strip("[]"), int(port)


def open_socket(via):
    sock = socket.create_connection(split_host_port(via), timeout=10)
    sock.setblocking(False)
    return sock


def tls_context(ca):
    """A client context trusting `ca` and nothing else (given a cafile, Python loads no
    system roots), checking the chain and the name as a browser would."""
    return ssl.create_default_context(cafile=ca)


async def get_case_count(server):
    async with connect(f"{server}/getCaseCount", open_timeout=10) as ws:
        return json.loads(await asyncio.wait_for(ws.recv(), 10))


class Abandoned(Exception):
    pass


async def run_case(server, agent, case, via, idle, tls=None, seen_tls=None):
    """Runs one case; with `tls` (a context) the connection to `via` is TLS, and the first
    one adds its protocol and cipher to `seen_tls`."""
    kwargs = {}
    url = f"{server}/runCase?case={case}&agent={agent}"
    if via:
        kwargs["sock"] = open_socket(via)
    if tls is not None:
        url = "wss://" + url.removeprefix("ws://")
        kwargs.update(ssl=tls, server_hostname=split_host_port(via)[0])
    async with connect(
        url,
        max_size=2**25,  # 9.* sends messages of up to 16 MiB
        max_queue=None,
        ping_interval=None,  # no pings of our own: the suite counts every frame
        open_timeout=10,
        close_timeout=5,
        **kwargs,
    ) as ws:
        ssl_object = ws.transport.get_extra_info("ssl_object")
        if ssl_object is not None and seen_tls is not None and not seen_tls:
            seen_tls.append(f"{ssl_object.version()} {ssl_object.cipher()[0]}")
            print(f"{agent}: TLS to {via}: {seen_tls[0]} ({ssl.OPENSSL_VERSION})", flush=True)
        while True:
            try:
                message = await asyncio.wait_for(ws.recv(), idle)
            except asyncio.TimeoutError:
                ws.transport.abort()
                raise Abandoned(f"nothing for {idle:.0f} s") from None
            except WebSocketException:
                return
            try:
                await ws.send(message)
            except WebSocketException:
                return


async def update_reports(server, agent):
    async with connect(f"{server}/updateReports?agent={agent}", open_timeout=120):
        pass


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True, help="the fuzzing server's ws:// URL")
    parser.add_argument("--agent", required=True)
    parser.add_argument("--via", help="host:port to open the case connections to")
    parser.add_argument(
        "--via-ca", help="open the --via connections in TLS, trusting this CA (PEM)"
    )
    parser.add_argument("--idle-timeout", type=float, default=4)
    parser.add_argument("--case-timeout", type=float, default=120)
    parser.add_argument("--update-only", action="store_true")
    parser.add_argument("--no-update", action="store_true")
    parser.add_argument("--first", type=int, default=1, help="first case number (1-based)")
    parser.add_argument("--last", type=int, help="last case number (default: the count)")
    args = parser.parse_args()
    server = args.server.rstrip("/")
    if args.via_ca and not args.via:
        parser.error("--via-ca needs --via")
    if not server.startswith("ws://"):
        parser.error("--server is the fuzzing server's ws:// URL")
    tls = tls_context(args.via_ca) if args.via_ca else None
    seen_tls = []
    if not args.update_only:
        count = await get_case_count(server)
        via = f" via {args.via}{' in TLS' if tls else ''}" if args.via else ""
        last = min(count, args.last or count)
        print(f"{args.agent}: {count} cases, running {args.first} to {last}{via}", flush=True)
        abandoned = []
        for case in range(args.first, last + 1):
            try:
                await asyncio.wait_for(
                    run_case(server, args.agent, case, args.via, args.idle_timeout, tls,
                             seen_tls),
                    args.case_timeout,
                )
            except Abandoned as why:
                abandoned.append(f"#{case} ({why})")
            except asyncio.TimeoutError:
                abandoned.append(f"#{case} (not over after {args.case_timeout:.0f} s)")
            except (WebSocketException, OSError) as error:
                # The fuzzing server judges the connection; a failed one is its verdict.
                logging.debug("case #%d: %s: %s", case, type(error).__name__, error)
        if abandoned:
            print(f"{args.agent}: {len(abandoned)} cases abandoned: {', '.join(abandoned)}")
    if not args.no_update:
        await update_reports(server, args.agent)
        print(f"{args.agent}: reports updated", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    try:
        asyncio.run(main())
    except (OSError, WebSocketException, asyncio.TimeoutError) as error:
        sys.exit(f"echo_client: the fuzzing server is not reachable: {error}")

"""The echo backend of the Autobahn conformance run (Python 3, `websockets`).

Echoes every message, text or binary, and negotiates permessage-deflate when the client
offers it (the 12.* and 13.* cases). Unlike `wstest -m echoserver` it does not check the
Host header, so it can sit behind the gateway.

    python echo_server.py --port 9100 [--host 127.0.0.1] [--no-deflate]

Prints "ready" on stdout once it listens.
"""

import argparse
import asyncio
import logging
import os
import signal

# 9.3.1 and 9.4.1 send a 4 MiB message in 64-byte fragments (65536 of them); websockets
# refuses more than 4096 fragments per message unless told otherwise.
os.environ.setdefault("WEBSOCKETS_MAX_FRAGMENTS", "1000000")

from websockets.asyncio.server import serve
from websockets.exceptions import WebSocketException


async def echo(ws):
    try:
        async for message in ws:
            await ws.send(message)
    except WebSocketException:
        pass


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--no-deflate", action="store_true")
    args = parser.parse_args()
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(
        echo,
        args.host,
        args.port,
        compression=None if args.no_deflate else "deflate",
        max_size=2**25,  # 9.* sends messages of up to 16 MiB
        max_queue=None,
        ping_interval=None,  # no pings of our own: the suite counts every frame
        close_timeout=5,
    ):
        print("ready", flush=True)
        await stop


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main())

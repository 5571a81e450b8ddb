"""Interop peer for scripts/interop.sh: Python `websockets` with permessage-deflate.

    peer.py server          echo server on 127.0.0.1, port 0; prints "port N", runs until killed
    peer.py client URL      checks a syncws echo server: JSON chat, large text, binary
"""
import asyncio
import json
import sys

import websockets


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def server():
    async with websockets.serve(echo, "127.0.0.1", 0, max_size=None) as s:
        port = s.sockets[0].getsockname()[1]
        print("port %d" % port, flush=True)
        await asyncio.Future()


async def client(url):
    async with websockets.connect(url, max_size=None) as ws:
        agreed = ws.response.headers.get("Sec-WebSocket-Extensions")
        if not agreed or "permessage-deflate" not in agreed:
            sys.exit("syncws server did not agree permessage-deflate: %r" % agreed)
        messages = [json.dumps({"type": "message", "id": i, "room": "general",
                                "user": "user%d" % (i % 7), "text": "hello number %d" % i})
                    for i in range(2000)]
        messages.append("".join("line %d of a long document\n" % j for j in range(20000)))
        messages.append(bytes(range(256)) * 1000)
        messages.append("")
        for m in messages:
            await ws.send(m)
            echoed = await ws.recv()
            if echoed != m:
                sys.exit("echo differs for a message of %d bytes" % len(m))
        print("ok python-client extensions=%r messages=%d" % (agreed, len(messages)))


if __name__ == "__main__":
    if sys.argv[1:] == ["server"]:
        asyncio.run(server())
    elif sys.argv[1] == "client" and len(sys.argv) == 3:
        asyncio.run(client(sys.argv[2]))
    else:
        sys.exit(__doc__)

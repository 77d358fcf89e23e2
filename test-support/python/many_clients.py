"""Opens many concurrent sessions to one server through the Outpost relay with the
official Python `mcp` SDK, each with its own HTTP client, as separate AI clients would.

Run by test-support/tests/many_clients_one_server.rs with:
  OUTPOST_URL, OUTPOST_KEY, OUTPOST_CA   as for sdk_client.py
  CLIENTS     how many sessions to open at once
  GO_FILE     a path: once every session has answered, prints "ALL OPEN" and waits for
              this file to exist before closing them (each close is a DELETE)

Prints one JSON object at the end; exits non-zero on any failure.
"""

import asyncio
import json
import os
import ssl
import sys

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


async def main() -> int:
    url = os.environ["OUTPOST_URL"]
    key = os.environ["OUTPOST_KEY"]
    clients = int(os.environ["CLIENTS"])
    go_file = os.environ["GO_FILE"]
    tls = ssl.create_default_context(cafile=os.environ["OUTPOST_CA"])
    tls.minimum_version = ssl.TLSVersion.TLSv1_3

    answered = 0
    all_open = asyncio.Event()
    session_ids: set[str] = set()
    echoes: list[str] = []

    async def one(n: int) -> None:
        nonlocal answered
        http = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {key}"},
            verify=tls,
            timeout=httpx.Timeout(60.0, read=120.0),
        )
        async with http:
            async with streamable_http_client(url, http_client=http) as (read, write, session_id):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    echo = await session.call_tool("echo", {"message": f"client {n}"})
                    echoes.append(echo.content[0].text)
                    session_ids.add(session_id())
                    answered += 1
                    if answered == clients:
                        all_open.set()
                    await all_open.wait()
                    while not os.path.exists(go_file):
                        await asyncio.sleep(0.05)
                    # A second call after every other client is connected too.
                    again = await session.call_tool("echo", {"message": f"again {n}"})
                    echoes.append(again.content[0].text)

    async def announce() -> None:
        await all_open.wait()
        print("ALL OPEN", file=sys.stderr, flush=True)

    watcher = asyncio.create_task(announce())
    await asyncio.gather(*(one(n) for n in range(clients)))
    await watcher
    expected = sorted([f"Echo: client {n}" for n in range(clients)] + [f"Echo: again {n}" for n in range(clients)])
    print(json.dumps({
        "sessions": len(session_ids),
        "echoes_match": sorted(echoes) == expected,
        "echoes": len(echoes),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

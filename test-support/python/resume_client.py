"""Calls a long tool through the Outpost relay with the official Python `mcp` SDK 1.x and
reports every progress notification and the result, printing each progress as it comes
("progress N") so the test can break the connection mid-call.

Run by test-support/tests/resume_after_a_broken_connection.rs with:
  OUTPOST_URL   the /mcp/{agent}/{server} endpoint (here: through a proxy that cuts)
  OUTPOST_KEY   a client key (sent as Authorization: Bearer)
  OUTPOST_CA    the CA file that signed the relay's certificate
  STEPS         progress steps of server-everything's trigger-long-running-operation
  DURATION      its duration in seconds

Prints one JSON object last; exits non-zero on any failure or after 25 s.
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
    tls = ssl.create_default_context(cafile=os.environ["OUTPOST_CA"])
    tls.minimum_version = ssl.TLSVersion.TLSv1_3
    http = httpx.AsyncClient(
        headers={"Authorization": f"Bearer {os.environ['OUTPOST_KEY']}"},
        verify=tls,
        timeout=httpx.Timeout(30.0, read=60.0),
    )
    report: dict = {}
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)
        print(f"progress {value:g}", flush=True)

    async with http:
        async with streamable_http_client(os.environ["OUTPOST_URL"], http_client=http) as (read, write, _):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                report["protocol_version"] = init.protocolVersion
                result = await session.call_tool(
                    "trigger-long-running-operation",
                    {"duration": float(os.environ["DURATION"]), "steps": int(os.environ["STEPS"])},
                    progress_callback=on_progress,
                )
                report["result"] = result.content[0].text
                report["is_error"] = bool(result.isError)
                report["progress"] = progress
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(asyncio.wait_for(main(), 25)))
    except TimeoutError:
        print("timed out: the call never completed", file=sys.stderr, flush=True)
        sys.exit(1)

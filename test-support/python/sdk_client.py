"""Calls an MCP server through the Outpost relay with the official Python `mcp` SDK.

Run by the Rust integration tests (test-support/tests/python_sdk_through_relay.rs) with:
  OUTPOST_URL   the relay's /mcp/{agent}/{server} endpoint
  OUTPOST_KEY   a client key (sent as Authorization: Bearer)
  OUTPOST_CA    the CA file that signed the relay's certificate
  SCENARIO      "everything" (server-everything) or "rmcp" (the Rust test server)
  CANARY        a string to send as a tool argument

Prints one JSON object describing what happened; exits non-zero on any failure.
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
    scenario = os.environ["SCENARIO"]
    canary = os.environ["CANARY"]
    tls = ssl.create_default_context(cafile=os.environ["OUTPOST_CA"])
    tls.minimum_version = ssl.TLSVersion.TLSv1_3
    http = httpx.AsyncClient(
        headers={"Authorization": f"Bearer {key}"},
        verify=tls,
        timeout=httpx.Timeout(30.0, read=120.0),
    )
    report: dict = {"scenario": scenario}
    async with http:
        async with streamable_http_client(url, http_client=http) as (read, write, session_id):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                report["server"] = init.serverInfo.name
                report["protocol_version"] = init.protocolVersion
                report["session_id_set"] = session_id() is not None

                tools = await session.list_tools()
                report["tools"] = sorted(t.name for t in tools.tools)

                echo = await session.call_tool("echo", {"message": canary})
                report["echo"] = echo.content[0].text
                report["echo_is_error"] = bool(echo.isError)

                progress: list[float] = []

                async def on_progress(value: float, total: float | None, message: str | None) -> None:
                    progress.append(value)

                if scenario == "everything":
                    long = await session.call_tool(
                        "trigger-long-running-operation",
                        {"duration": 1, "steps": 4},
                        progress_callback=on_progress,
                    )
                else:
                    long = await session.call_tool(
                        "slow", {"millis": 800, "steps": 4}, progress_callback=on_progress
                    )
                report["long"] = long.content[0].text
                report["progress"] = progress

                if scenario == "rmcp":
                    # Long enough that the agent and the relay send it on as it arrives.
                    big = await session.call_tool("big", {"bytes": 3 * 1024 * 1024 + 7})
                    text = big.content[0].text
                    report["big_len"] = len(text)
                    report["big_is_error"] = bool(big.isError)
                    after = await session.call_tool("echo", {"message": "after big"})
                    report["after_big"] = after.content[0].text
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

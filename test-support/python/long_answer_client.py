"""Calls the tool `long` through the Outpost relay with the official Python `mcp` SDK and
reports how the call ended: its result's length, or its JSON-RPC error.

Run by test-support/tests/long_answers_go_on_as_they_arrive.rs with OUTPOST_URL,
OUTPOST_KEY and OUTPOST_CA as for sdk_client.py. Prints one JSON object; exits non-zero
if the SDK itself fails.
"""

import asyncio
import json
import os
import ssl
import sys

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import McpError


async def main() -> int:
    tls = ssl.create_default_context(cafile=os.environ["OUTPOST_CA"])
    tls.minimum_version = ssl.TLSVersion.TLSv1_3
    http = httpx.AsyncClient(
        headers={"Authorization": f"Bearer {os.environ['OUTPOST_KEY']}"},
        verify=tls,
        timeout=httpx.Timeout(30.0, read=60.0),
    )
    report: dict = {}
    async with http:
        async with streamable_http_client(os.environ["OUTPOST_URL"], http_client=http) as (
            read,
            write,
            _,
        ):
            async with ClientSession(read, write) as session:
                await session.initialize()
                try:
                    result = await session.call_tool("long", {})
                    report["result_len"] = len(result.content[0].text)
                except McpError as error:
                    report["error_code"] = error.error.code
                    report["error_message"] = error.error.message
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

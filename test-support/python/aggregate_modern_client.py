"""The aggregated endpoint /mcp with a client of the 2026 era (the Python SDK 2.x): one
discovery, merged lists, calls routed by prefixed name to servers of both eras, and a
Multi Round-Trip Request whose retry finds its server again.

Run by test-support/tests/aggregated_endpoint.rs with OUTPOST_URL (the relay's /mcp),
OUTPOST_KEY, OUTPOST_CA. Prints one JSON object; exits non-zero on any failure.
"""

import asyncio
import json
import os
import ssl
import sys

import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


async def main() -> int:
    tls = ssl.create_default_context(cafile=os.environ["OUTPOST_CA"])
    tls.minimum_version = ssl.TLSVersion.TLSv1_3
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {os.environ['OUTPOST_KEY']}"},
        verify=tls,
        timeout=httpx2.Timeout(30.0, read=120.0),
    )

    async def on_elicit(context, params):
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    report: dict = {}
    transport = streamable_http_client(os.environ["OUTPOST_URL"], http_client=http)
    async with http:
        async with Client(transport, elicitation_callback=on_elicit, cache=None) as client:
            report["protocol_version"] = client.protocol_version
            report["server"] = client.server_info.name if client.server_info else None
            tools = await client.list_tools()
            report["tools"] = [t.name for t in tools.tools]
            echoes = {}
            for name in ("alpha__everything__echo", "beta__everything__echo", "fortune__echo"):
                result = await client.call_tool(name, {"message": f"via {name}"})
                echoes[name] = result.content[0].text
            report["echoes"] = echoes
            simple = await client.call_tool("modern__test_simple_text", {})
            report["modern_simple"] = simple.content[0].text
            mrtr = await client.call_tool("modern__test_input_required_result_elicitation", {})
            report["mrtr"] = mrtr.content[0].text
            resources = await client.list_resources()
            report["resources"] = [str(r.uri) for r in resources.resources]
            read_back = await client.read_resource("outpost://alpha/modern/test://static-text")
            report["read_uri"] = str(read_back.contents[0].uri)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""A client of the current MCP era (revision 2026-07-28) through the Outpost relay, with
the official Python SDK 2.x (`.tools/venv-mcp2`). In its default `auto` mode the SDK
probes `server/discover` and falls back to the `initialize` handshake when the server is
of the 2025 era.

Run by test-support/tests/modern_sdk_through_relay.rs with:
  OUTPOST_URL, OUTPOST_KEY, OUTPOST_CA   the relay's /mcp/{agent}/{server}, a key, the CA
  SCENARIO    "modern" (the 2026 conformance target), "legacy" (server-everything), or
              "pinned" (the 2025 conformance target, with the SDK pinned to 2026-07-28)

Prints one JSON object; exits non-zero on any failure.
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
    elicited: list[str] = []

    async def on_elicit(context, params):
        elicited.append(params.message)
        return types.ElicitResult(
            action="accept", content={"name": "Ada", "username": "ada", "email": "ada@example.com"}
        )

    sampled: list[str] = []

    async def on_sample(context, params):
        sampled.append("sampling")
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="Paris"),
            model="outpost-test-model",
            stopReason="endTurn",
        )

    report: dict = {}
    scenario = os.environ["SCENARIO"]
    transport = streamable_http_client(os.environ["OUTPOST_URL"], http_client=http)
    async with http:
        # "pinned": this era only, no fallback to the handshake.
        mode = "2026-07-28" if scenario == "pinned" else "auto"
        async with Client(
            transport,
            mode=mode,
            elicitation_callback=on_elicit,
            sampling_callback=on_sample,
            cache=None,
        ) as client:
            report["protocol_version"] = client.protocol_version
            tools = await client.list_tools()
            report["tools"] = [t.name for t in tools.tools]
            if scenario == "modern":
                simple = await client.call_tool("test_simple_text", {})
                report["simple"] = simple.content[0].text
                # A Multi Round-Trip Request: the server asks for input in its result, the
                # SDK answers it and retries with the responses.
                mrtr = await client.call_tool("test_input_required_result_elicitation", {})
                report["mrtr"] = mrtr.content[0].text
                report["elicited"] = elicited
                prompt = await client.get_prompt("test_simple_prompt", {})
                report["prompt"] = prompt.messages[0].content.text
                resource = await client.read_resource("test://static-text")
                report["resource"] = resource.contents[0].text
            elif scenario == "pinned":
                # A 2025 server's sampling and elicitation requests arrive as Multi
                # Round-Trip input requests.
                sampling = await client.call_tool("test_sampling", {"prompt": "capital of France?"})
                report["sampling"] = sampling.content[0].text
                elicitation = await client.call_tool("test_elicitation", {"message": "who?"})
                report["elicitation"] = elicitation.content[0].text
                report["asked"] = sampled + elicited
                prompt = await client.get_prompt("test_simple_prompt", {})
                report["prompt"] = prompt.messages[0].content.text
            else:
                echo = await client.call_tool("echo", {"message": "from the modern SDK"})
                report["echo"] = echo.content[0].text
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""A client of the 2025 era (the Python SDK 1.x: initialize, sessions) on a server of the
2026 era, through the Outpost relay, which bridges the two: the session is the relay's,
each request reaches the server as a stateless one, and the server's Multi Round-Trip
input requests reach this client as ordinary sampling and elicitation requests.

Run by test-support/tests/bridged_eras.rs with OUTPOST_URL, OUTPOST_KEY, OUTPOST_CA.
Prints one JSON object; exits non-zero on any failure.
"""

import asyncio
import json
import os
import ssl
import sys

import httpx
import mcp.types as types
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


async def main() -> int:
    tls = ssl.create_default_context(cafile=os.environ["OUTPOST_CA"])
    tls.minimum_version = ssl.TLSVersion.TLSv1_3
    http = httpx.AsyncClient(
        headers={"Authorization": f"Bearer {os.environ['OUTPOST_KEY']}"},
        verify=tls,
        timeout=httpx.Timeout(30.0, read=120.0),
    )
    asked: list[str] = []

    async def on_sampling(context, params):
        asked.append("sampling")
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="Paris"),
            model="outpost-test-model",
            stopReason="endTurn",
        )

    async def on_elicit(context, params):
        asked.append("elicitation")
        return types.ElicitResult(action="accept", content={"name": "Ada"})

    progress: list[float] = []

    async def on_progress(value, total, message):
        progress.append(value)

    report: dict = {}
    async with http:
        async with streamable_http_client(os.environ["OUTPOST_URL"], http_client=http) as (read, write, session_id):
            async with ClientSession(
                read, write, sampling_callback=on_sampling, elicitation_callback=on_elicit
            ) as session:
                init = await session.initialize()
                report["protocol_version"] = init.protocolVersion
                report["server"] = init.serverInfo.name
                report["session_id_set"] = session_id() is not None
                tools = await session.list_tools()
                report["tools"] = [t.name for t in tools.tools]
                simple = await session.call_tool("test_simple_text", {})
                report["simple"] = simple.content[0].text
                elicited = await session.call_tool("test_input_required_result_elicitation", {})
                report["elicited"] = elicited.content[0].text
                sampled = await session.call_tool("test_input_required_result_sampling", {})
                report["sampled"] = sampled.content[0].text
                report["asked"] = asked
                with_progress = await session.call_tool(
                    "test_tool_with_progress", {}, progress_callback=on_progress
                )
                report["progress"] = progress
                report["progress_done"] = bool(with_progress.content)
                prompt = await session.get_prompt("test_prompt_with_arguments", {"arg1": "a", "arg2": "b"})
                report["prompt"] = prompt.messages[0].content.text
                resource = await session.read_resource("test://static-text")
                report["resource"] = resource.contents[0].text
                await session.send_ping()
                report["ping"] = True
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

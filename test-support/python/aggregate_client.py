"""Uses the aggregated endpoint /mcp of the Outpost relay with the official Python `mcp`
SDK: lists and calls across agents and servers, then waits for a list_changed notification
when another agent connects.

Run by test-support/tests/aggregated_endpoint.rs with:
  OUTPOST_URL, OUTPOST_KEY, OUTPOST_CA   the relay's /mcp, a client key, the CA file
  GO_FILE     after the first report line, the script waits for this file (the test then
              connects another agent) and for the list_changed notification it causes

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
from mcp.shared.exceptions import McpError


async def main() -> int:
    tls = ssl.create_default_context(cafile=os.environ["OUTPOST_CA"])
    tls.minimum_version = ssl.TLSVersion.TLSv1_3
    http = httpx.AsyncClient(
        headers={"Authorization": f"Bearer {os.environ['OUTPOST_KEY']}"},
        verify=tls,
        timeout=httpx.Timeout(30.0, read=120.0),
    )
    changed = asyncio.Event()

    async def on_message(message) -> None:
        if isinstance(message, types.ServerNotification) and isinstance(
            message.root, types.ToolListChangedNotification
        ):
            changed.set()

    report: dict = {}
    async with http:
        async with streamable_http_client(os.environ["OUTPOST_URL"], http_client=http) as (read, write, _):
            async with ClientSession(read, write, message_handler=on_message) as session:
                init = await session.initialize()
                report["server"] = init.serverInfo.name
                caps = init.capabilities
                report["capabilities"] = sorted(
                    name for name in ("tools", "prompts", "resources", "logging", "completions")
                    if getattr(caps, name, None) is not None
                )
                tools = await session.list_tools()
                report["tools"] = [t.name for t in tools.tools]
                again = await session.list_tools()
                report["tools_stable"] = [t.name for t in again.tools] == report["tools"]
                echoes = {}
                for name in ("alpha__everything__echo", "beta__everything__echo", "fortune__echo"):
                    result = await session.call_tool(name, {"message": f"via {name}"})
                    echoes[name] = result.content[0].text
                report["echoes"] = echoes
                simple = await session.call_tool("conf__test_simple_text", {})
                report["conf_simple"] = simple.content[0].text
                try:
                    await session.call_tool("nowhere__echo", {"message": "x"})
                    report["unknown_error"] = None
                except McpError as err:
                    report["unknown_error"] = err.error.code

                prompts = await session.list_prompts()
                report["prompts"] = [p.name for p in prompts.prompts]
                prompt = await session.get_prompt("conf__test_simple_prompt", {})
                report["prompt_text"] = prompt.messages[0].content.text

                resources = await session.list_resources()
                report["resources"] = [str(r.uri) for r in resources.resources]
                text = next(u for u in report["resources"] if u.endswith("test://static-text"))
                read_back = await session.read_resource(text)
                report["read_uri"] = str(read_back.contents[0].uri)
                report["read_text"] = read_back.contents[0].text
                templates = await session.list_resource_templates()
                report["templates"] = [t.uriTemplate for t in templates.resourceTemplates]

                print(json.dumps({"phase": "listed"}), flush=True)
                print("LISTED", file=sys.stderr, flush=True)
                while not os.path.exists(os.environ["GO_FILE"]):
                    await asyncio.sleep(0.05)
                await asyncio.wait_for(changed.wait(), timeout=30)
                report["list_changed"] = True
                after = await session.list_tools()
                report["tools_after"] = [t.name for t in after.tools]
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

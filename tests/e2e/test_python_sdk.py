"""The official MCP Python SDK drives a running `aop serve` in both protocol eras."""

import asyncio
import json

import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.types import Implementation

KEY = "e2e-secret-key"
ERAS = ["legacy", "2026-07-28"]


def leaves(group):
    for e in group.exceptions:
        yield from (leaves(e) if isinstance(e, BaseExceptionGroup) else [e])


async def with_client(url: str, mode: str, body, key: str = KEY):
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30.0) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(
            transport, mode=mode, client_info=Implementation(name="aop-e2e", version="1.0")
        ) as client:
            return await body(client)


def ok(result):
    assert result.is_error is False, result.content
    return result.structured_content


def error_text(result) -> str:
    assert result.is_error is True, result.structured_content
    return result.content[0].text


@pytest.mark.parametrize("mode", ERAS)
def test_agent_lifecycle_through_the_sdk(start_server, mode):
    server = start_server()

    async def scenario(client: Client):
        expected = "2025-11-25" if mode == "legacy" else "2026-07-28"
        assert client.protocol_version == expected

        tools = {t.name for t in (await client.list_tools()).tools}
        assert {"create_agent", "get_agent", "list_agents", "update_agent",
                "list_agent_versions", "archive_agent"} <= tools

        created = ok(await client.call_tool("create_agent", {
            "name": f"Support ({mode})",
            "domain": "support",
            "instructions": "Answer briefly.",
            "parameters": {"temperature": 0.2},
            "capabilities": [{"name": "refund", "description": "issues refunds"}],
        }))
        agent_id = created["agent"]["agent_id"]
        assert created["version"]["version"] == 1

        for i, text in enumerate(["Answer very briefly.", "Answer in one sentence."], start=2):
            updated = ok(await client.call_tool("update_agent", {
                "agent_id": agent_id, "instructions": text, "change_summary": f"revision {i}",
            }))
            assert updated["version"]["version"] == i
            assert updated["version"]["parents"] == [{"agent_id": agent_id, "version": i - 1}]

        versions = ok(await client.call_tool("list_agent_versions", {"agent_id": agent_id}))
        assert [v["version"] for v in versions["items"]] == [1, 2, 3]
        assert versions["items"][0]["instructions"] == "Answer briefly."

        templates = await client.list_resource_templates()
        assert "agent://{agent_id}/lineage" in {t.uri_template for t in templates.resource_templates}
        lineage_doc = await client.read_resource(f"agent://{agent_id}/lineage")
        lineage = json.loads(lineage_doc.contents[0].text)
        assert [v["version"] for v in lineage["versions"]] == [1, 2, 3]
        assert [(e["child"]["version"], e["parent"]["version"]) for e in lineage["edges"]] == [(2, 1), (3, 2)]
        kinds = {c.mime_type: c.text for c in lineage_doc.contents}
        assert kinds["text/vnd.mermaid"].startswith("flowchart LR"), kinds
        assert "v1 --> v2" in kinds["text/vnd.mermaid"] and "v2 --> v3" in kinds["text/vnd.mermaid"]

        archived = ok(await client.call_tool("archive_agent", {"agent_id": agent_id}))
        assert archived["status"] == "archived"
        refused = error_text(await client.call_tool("update_agent", {"agent_id": agent_id, "instructions": "x"}))
        assert "archived" in refused

        # Bad input names the field and the reason.
        bad = error_text(await client.call_tool("create_agent", {
            "name": "x", "instructions": "y", "parameters": {"temperature": 7},
        }))
        assert "parameters.temperature: must be between 0 and 2 (got 7)" in bad
        typed = error_text(await client.call_tool("create_agent", {"name": "x", "instructions": 5}))
        assert "instructions" in typed
        missing = error_text(await client.call_tool("get_agent", {"agent_id": "agt_missing"}))
        assert missing == "agent 'agt_missing' not found"
        with pytest.raises(MCPError) as err:
            await client.read_resource("agent://agt_missing")
        assert "agt_missing" in err.value.message

    asyncio.run(with_client(server.url, mode, scenario))
    # Every request was logged, once, with a request id; the API key never was.
    logged = json.dumps(server.lines)
    assert KEY not in logged
    access = [line for line in server.lines if line.get("message") == "request"]
    update = [line for line in access if line.get("tool") == "update_agent"]
    assert [line["outcome"] for line in update] == ["ok", "ok", "tool_error"], update
    assert all(line["request_id"] for line in access), access


@pytest.mark.parametrize("mode", ERAS)
def test_a_wrong_api_key_is_refused(start_server, mode):
    server = start_server()

    async def scenario(client: Client):
        await client.list_tools()

    with pytest.raises(BaseException) as caught:
        asyncio.run(with_client(server.url, mode, scenario, key="not-the-key"))
    errors = list(leaves(caught.value)) if isinstance(caught.value, BaseExceptionGroup) else [caught.value]
    assert any(isinstance(e, MCPError) for e in errors), errors


def test_restart_keeps_every_agent_and_version(start_server):
    first = start_server()

    async def create(client: Client):
        created = ok(await client.call_tool("create_agent", {"name": "Durable", "instructions": "v1"}))
        agent_id = created["agent"]["agent_id"]
        ok(await client.call_tool("update_agent", {"agent_id": agent_id, "instructions": "v2"}))
        return agent_id

    agent_id = asyncio.run(with_client(first.url, "legacy", create))
    first.stop()

    second = start_server()

    async def read(client: Client):
        latest = ok(await client.call_tool("get_agent", {"agent_id": agent_id}))
        assert latest["version"]["version"] == 2
        assert latest["version"]["instructions"] == "v2"
        v1 = ok(await client.call_tool("get_agent", {"agent_id": agent_id, "version": 1}))
        assert v1["version"]["instructions"] == "v1"

    asyncio.run(with_client(second.url, "2026-07-28", read))

"""The official TypeScript MCP SDK (tests/e2e/typescript/client.mjs on Node 22) drives a running
`aop serve` in every protocol version the two share, with sessions and SSE and stateless with JSON
answers (as on Lambda); its agents answer through the OpenAI-compatible test server."""

import json
import os
import pathlib
import subprocess
import time

import pytest
from conftest import ROOT

KEY = "e2e-secret-key"
LLM_KEY = "sk-e2e-provider-secret"
DRIVER = pathlib.Path(__file__).resolve().parent / "typescript" / "client.mjs"
LATEST = "2025-11-25"
# The initialize-era versions the SDK (1.32.2) and the server both speak; None offers the SDK's latest.
OFFERED = [None, "2025-06-18", "2025-03-26", "2024-11-05"]
MODES = {
    "sessions": {},
    "stateless-json": {"AOP_STATELESS": "true", "AOP_JSON_RESPONSE": "true"},
}
INSTRUCTIONS = "You answer arithmetic questions in one word."


@pytest.fixture
def node() -> str:
    """The Node 22 that the test tools install, next to the pinned SDK."""
    explicit = os.environ.get("AOP_NODE")
    tools = pathlib.Path(os.environ.get("AOP_TOOLS_DIR", ROOT / ".tools"))
    candidate = pathlib.Path(explicit) if explicit else tools / "node" / "node_modules" / ".bin" / "node"
    if candidate.exists():
        return str(candidate)
    if os.environ.get("AOP_REQUIRE_SERVICES"):
        pytest.fail(f"no Node at {candidate}, but AOP_REQUIRE_SERVICES requires the TypeScript SDK runs")
    pytest.skip("SKIPPED (tool not installed): run scripts/install-test-tools and set AOP_TOOLS_DIR, or set AOP_NODE")


def drive(node: str, scenario: dict) -> dict:
    """Runs the driver on one scenario and returns its report."""
    done = subprocess.run(
        [node, str(DRIVER)], input=json.dumps(scenario), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def logged_requests(server, expected: int, pick=lambda line: True) -> list[dict]:
    """The server's access-log lines that `pick` keeps, once `expected` of them are read (or after 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in server.lines if line.get("message") == "request" and pick(line)]
        if len(lines) >= expected or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def assert_transport_fits(report: dict, mode: str):
    """Sessions answer requests as SSE and end with DELETE; stateless JSON answers JSON, offers no stream."""
    answers = [x for x in report["http"] if x["method"] == "POST" and x["status"] == 200]
    assert answers, report["http"]
    if mode == "sessions":
        assert isinstance(report["sessionId"], str) and report["sessionId"]
        assert {x["contentType"] for x in answers} == {"text/event-stream"}, report["http"]
        last = [x for x in report["http"] if x["method"] != "GET"][-1]
        assert last["method"] == "DELETE" and last["status"] in (200, 202, 204), report["http"]
    else:
        assert report["sessionId"] is None
        assert all((x["contentType"] or "").startswith("application/json") for x in answers), report["http"]
        assert all(x["status"] == 405 for x in report["http"] if x["method"] == "GET"), report["http"]
        assert "DELETE" not in {x["method"] for x in report["http"]}


@pytest.mark.parametrize("offered", OFFERED, ids=lambda v: v or "sdk-latest")
@pytest.mark.parametrize("mode", MODES)
def test_agent_lifecycle_and_a_turn_through_the_typescript_sdk(node, start_server, llm, mode, offered):
    server = start_server(OPENAI_BASE_URL=llm.base_url, OPENAI_API_KEY=LLM_KEY, **MODES[mode])
    llm.script([{"kind": "text", "content": "Four.", "prompt_tokens": 12, "completion_tokens": 2}])

    report = drive(node, {
        "url": server.url,
        "apiKey": KEY,
        "offerProtocolVersion": offered,
        "agent": {"name": f"Adder ({mode}, {offered})", "instructions": INSTRUCTIONS, "model": "gpt-4o-mini"},
        "message": "What is 2+2?",
    })

    assert report["error"] is None, report["error"]
    assert report["transportErrors"] == []
    assert report["protocolVersion"] == (offered or LATEST)
    assert report["server"]["name"] == "agent-orchestration-platform"
    assert_transport_fits(report, mode)

    assert {"create_agent", "get_agent", "update_agent", "start_session", "send_message",
            "get_messages", "run_agent"} <= set(report["tools"])
    assert {"agent://{agent_id}", "agent://{agent_id}/lineage"} <= set(report["resourceTemplates"])

    created, fetched = report["created"], report["fetched"]
    agent_id = created["agent"]["agent_id"]
    assert created["version"]["version"] == 1
    assert created["version"]["instructions"] == INSTRUCTIONS
    assert fetched == created

    [resource] = report["resource"]
    assert resource["uri"] == f"agent://{agent_id}"
    assert resource["mimeType"] == "application/json"
    assert resource["json"] == fetched
    missing = report["missingResource"]
    assert missing["name"] == "McpError" and missing["code"] == -32002, missing
    assert "agt_missing" in missing["message"], missing

    session, turn = report["session"], report["turn"]
    assert session["agent_id"] == agent_id and session["version"] == 1 and session["status"] == "active"
    assert turn["reply"] == "Four."
    assert turn["session_id"] == session["session_id"]
    assert turn["usage"] == {"prompt_tokens": 12, "completion_tokens": 2}
    assert [(m["role"], m["content"]) for m in report["messages"]["items"]] == [
        ("user", "What is 2+2?"), ("assistant", "Four.")]

    [sent] = llm.requests()
    assert sent["authorization"] == f"Bearer {LLM_KEY}"
    assert sent["body"]["model"] == "gpt-4o-mini"
    assert [(m["role"], m["content"]) for m in sent["body"]["messages"]] == [
        ("system", INSTRUCTIONS), ("user", "What is 2+2?")]

    tools = [(line["tool"], line["outcome"]) for line in logged_requests(server, 5, lambda line: "tool" in line)]
    assert tools == [(name, "ok") for name in
                     ("create_agent", "get_agent", "start_session", "send_message", "get_messages")]
    logged = json.dumps(server.lines)
    assert KEY not in logged and LLM_KEY not in logged


@pytest.mark.parametrize("mode", MODES)
def test_a_version_the_server_does_not_speak_gets_its_latest(node, start_server, mode):
    server = start_server(**MODES[mode])
    report = drive(node, {"url": server.url, "apiKey": KEY, "offerProtocolVersion": "2024-10-07"})
    assert report["error"] is None, report["error"]
    assert report["protocolVersion"] == LATEST
    assert "create_agent" in report["tools"]


@pytest.mark.parametrize("mode", MODES)
def test_a_wrong_api_key_is_refused(node, start_server, mode):
    server = start_server(**MODES[mode])
    report = drive(node, {"url": server.url, "apiKey": "not-the-key"})

    error = report["error"]
    assert error is not None, report
    assert error["step"] == "connect"
    assert error["code"] == 401 and "invalid_token" in error["message"], error
    assert "protocolVersion" not in report and "tools" not in report
    assert [(x["method"], x["status"]) for x in report["http"]] == [("POST", 401)]
    statuses = [line["status"] for line in logged_requests(server, 1)]
    assert statuses == [401], statuses
    assert "not-the-key" not in json.dumps(server.lines)

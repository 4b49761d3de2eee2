"""Agents answer: the official Python MCP SDK drives `aop serve`, whose agents call the
OpenAI-compatible test server through the real async-openai client."""

import asyncio
import json
import urllib.request

import pytest
from test_python_sdk import KEY, error_text, ok, with_client

LLM_KEY = "sk-e2e-provider-secret"


def text(content, prompt=20, completion=10):
    return {"kind": "text", "content": content, "prompt_tokens": prompt, "completion_tokens": completion}


def tool_call(name, arguments):
    return {"kind": "tool_calls", "calls": [[name, json.dumps(arguments)]]}


def metrics(server) -> str:
    request = urllib.request.Request(
        server.url.removesuffix("/mcp") + "/metrics", headers={"Authorization": f"Bearer {KEY}"}
    )
    with urllib.request.urlopen(request, timeout=5) as r:
        return r.read().decode()


def llm_env(llm, **extra):
    return {"OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": LLM_KEY, **extra}


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
def test_a_delegating_agent_holds_a_conversation(start_server, llm, mode):
    server = start_server(**llm_env(llm))

    async def scenario(client):
        expert = ok(await client.call_tool("create_agent", {
            "name": "Arithmetic expert", "instructions": "You add numbers.", "model": "gpt-4o-mini"}))
        expert_id = expert["agent"]["agent_id"]
        front = ok(await client.call_tool("create_agent", {
            "name": "Front desk", "instructions": "You route questions.", "model": "gpt-4o-mini",
            "capabilities": [{"name": "ask_expert", "description": "Ask the arithmetic expert",
                              "delegate_to": expert_id}]}))
        front_id = front["agent"]["agent_id"]

        session = ok(await client.call_tool("start_session", {"agent_id": front_id, "user_id": "alice"}))
        session_id = session["session_id"]
        assert session["version"] == 1

        llm.script([tool_call("ask_expert", {"input": "2+2?"}), text("4", 7, 1), text("The expert says 4.", 40, 5)])
        first = ok(await client.call_tool("send_message", {"session_id": session_id, "content": "What is 2+2?"}))
        assert first["reply"] == "The expert says 4."
        assert first["tool_calls"][0]["delegate_agent_id"] == expert_id
        assert first["tool_calls"][0]["result"] == "4"

        llm.script([text("Yes, 4.")])
        second = ok(await client.call_tool("send_message", {"session_id": session_id, "content": "Sure?"}))
        assert second["reply"] == "Yes, 4."
        sent = llm.requests()
        assert len(sent) == 4
        history = [(m["role"], m.get("content")) for m in sent[3]["body"]["messages"]]
        assert history == [("system", "You route questions."), ("user", "What is 2+2?"),
                           ("assistant", "The expert says 4."), ("user", "Sure?")]
        assert all(r["authorization"] == f"Bearer {LLM_KEY}" for r in sent)

        messages = ok(await client.call_tool("get_messages", {"session_id": session_id}))
        assert [(m["role"], m["content"]) for m in messages["items"]] == [
            ("user", "What is 2+2?"), ("assistant", "The expert says 4."),
            ("user", "Sure?"), ("assistant", "Yes, 4.")]

        front_turns = ok(await client.call_tool("list_interactions", {"agent_id": front_id}))["items"]
        expert_turns = ok(await client.call_tool("list_interactions", {"agent_id": expert_id}))["items"]
        assert len(front_turns) == 2 and len(expert_turns) == 1
        assert expert_turns[0]["parent_interaction_id"] == first["interaction_id"]
        for turn in front_turns + expert_turns:
            assert turn["status"] == "completed"
            assert turn["usage"]["prompt_tokens"] > 0 and turn["usage"]["completion_tokens"] > 0
            assert turn["cost_usd"] > 0
        return front_id, expert_id

    front_id, expert_id = asyncio.run(with_client(server.url, mode, scenario))
    text_metrics = metrics(server)
    assert f'agent_interactions_total{{agent_id="{front_id}"}} 2' in text_metrics
    assert f'agent_interactions_total{{agent_id="{expert_id}"}} 1' in text_metrics
    assert LLM_KEY not in json.dumps(server.lines)


def test_provider_failures_reach_the_client_clearly(start_server, llm):
    server = start_server(**llm_env(llm))

    async def scenario(client):
        agent = ok(await client.call_tool("create_agent", {"name": "Bot", "instructions": "Hi."}))
        agent_id = agent["agent"]["agent_id"]

        llm.script([{"kind": "error", "status": 429, "message": "Rate limit reached", "retry_after": 1},
                    text("after the wait")])
        retried = ok(await client.call_tool("run_agent", {"agent_id": agent_id, "input": "hello"}))
        assert retried["reply"] == "after the wait"

        llm.script([{"kind": "error", "status": 401, "message": f"Incorrect API key provided: {LLM_KEY}",
                     "code": "invalid_api_key"}])
        refused = error_text(await client.call_tool("run_agent", {"agent_id": agent_id, "input": "hello"}))
        assert "refused the request (HTTP 401)" in refused and "refused the API key" in refused
        # The provider's text names the key (masked, in real answers): none of it is passed on.
        assert LLM_KEY not in refused and "Incorrect API key provided" not in refused

        turns = ok(await client.call_tool("list_interactions", {"agent_id": agent_id}))["items"]
        assert [t["status"] for t in turns] == ["completed", "failed"]

        other = ok(await client.call_tool("create_agent", {
            "name": "Other", "instructions": "x",
            "capabilities": [{"name": "ask_bot", "delegate_to": agent_id}]}))
        cycle = error_text(await client.call_tool("update_agent", {
            "agent_id": agent_id,
            "capabilities": [{"name": "ask_other", "delegate_to": other["agent"]["agent_id"]}]}))
        assert "delegation cycle" in cycle

    asyncio.run(with_client(server.url, "legacy", scenario))
    assert LLM_KEY not in json.dumps(server.lines)


def test_a_provider_slower_than_the_deadline_fails_the_turn(start_server, llm):
    server = start_server(**llm_env(llm, AOP_TURN_TIMEOUT_SECONDS="1"))

    async def scenario(client):
        agent = ok(await client.call_tool("create_agent", {"name": "Bot", "instructions": "Hi."}))
        agent_id = agent["agent"]["agent_id"]
        llm.script([{"kind": "delay", "millis": 3000}, text("too late")])
        slow = error_text(await client.call_tool("run_agent", {"agent_id": agent_id, "input": "hello"}))
        assert "did not answer within" in slow and "recorded as failed" in slow
        turns = ok(await client.call_tool("list_interactions", {"agent_id": agent_id}))["items"]
        assert [t["status"] for t in turns] == ["failed"]

    asyncio.run(with_client(server.url, "2026-07-28", scenario))


def test_without_an_llm_a_turn_names_the_settings(start_server):
    server = start_server()

    async def scenario(client):
        agent = ok(await client.call_tool("create_agent", {"name": "Bot", "instructions": "Hi."}))
        session = ok(await client.call_tool("start_session", {"agent_id": agent["agent"]["agent_id"]}))
        message = error_text(await client.call_tool("send_message", {
            "session_id": session["session_id"], "content": "hello"}))
        assert "OPENAI_API_KEY" in message and "OPENAI_BASE_URL" in message

    asyncio.run(with_client(server.url, "2026-07-28", scenario))


def test_feedback_becomes_fitness_statistics(start_server, llm):
    server = start_server(**llm_env(llm))

    async def scenario(client):
        agent = ok(await client.call_tool("create_agent", {"name": "Rated", "instructions": "Hi."}))
        agent_id = agent["agent"]["agent_id"]
        turn = ok(await client.call_tool("run_agent", {"agent_id": agent_id, "input": "hello"}))
        values = [5, 4, 2]
        for v in values:
            fb = ok(await client.call_tool("submit_feedback", {
                "agent_id": agent_id, "interaction_id": turn["interaction_id"],
                "ratings": {"helpfulness": v}, "comments": "ok", "categories": ["tone"]}))
            assert fb["version"] == 1
        bad = error_text(await client.call_tool("submit_feedback", {
            "agent_id": agent_id, "ratings": {"helpfulness": 9}}))
        assert "ratings.helpfulness: 9 is outside the scale 1-5" in bad

        expected = [(v - 1) / 4 for v in values]
        mean = sum(expected) / 3
        variance = sum((x - mean) ** 2 for x in expected) / 2
        for _ in range(100):  # the relay applies events right after each commit
            report = ok(await client.call_tool("get_feedback_metrics", {"agent_id": agent_id}))
            by_metric = {m["metric"]: m for m in report["metrics"]}
            if by_metric.get("feedback.helpfulness", {}).get("count") == 3:
                break
            await asyncio.sleep(0.05)
        helpfulness = by_metric["feedback.helpfulness"]
        assert helpfulness["count"] == 3
        assert abs(helpfulness["mean"] - mean) < 1e-9
        assert abs(helpfulness["variance"] - variance) < 1e-9
        assert by_metric["interaction.error"]["count"] == 1
        assert by_metric["interaction.error"]["mean"] == 0
        assert by_metric["interaction.tokens"]["mean"] == 30

    asyncio.run(with_client(server.url, "legacy", scenario))


def test_a_daily_spend_cap_stops_turns_before_the_model_is_called(start_server, llm):
    # gpt-4o-mini costs USD 0.15 per million prompt tokens: one such turn spends 0.15.
    server = start_server(**llm_env(llm, AOP_DAILY_COST_CAP_USD="0.1"))

    async def scenario(client):
        agent = ok(await client.call_tool("create_agent", {
            "name": "Spender", "instructions": "Hi.", "model": "gpt-4o-mini"}))
        agent_id = agent["agent"]["agent_id"]
        llm.script([text("expensive", 1_000_000, 0)])
        first = ok(await client.call_tool("run_agent", {"agent_id": agent_id, "input": "hello"}))
        assert abs(first["cost_usd"] - 0.15) < 1e-9
        sent = len(llm.requests())
        refused = error_text(await client.call_tool("run_agent", {"agent_id": agent_id, "input": "again"}))
        assert f"daily spend cap reached: agent '{agent_id}' has spent USD 0.1500 today (UTC)" in refused
        assert "of its daily cap of USD 0.10" in refused
        assert len(llm.requests()) == sent, "a refused turn calls no model"

    asyncio.run(with_client(server.url, "legacy", scenario))


def test_aop_fitness_rebuild_finds_the_statistics_events_kept(start_server, llm, data_dir, store_env):
    import os
    import subprocess

    from conftest import aop_binary

    server = start_server(**llm_env(llm))

    async def scenario(client):
        agent = ok(await client.call_tool("create_agent", {"name": "Audited", "instructions": "Hi."}))
        agent_id = agent["agent"]["agent_id"]
        llm.script([text("one", 10, 5), text("two", 30, 5)])
        turns = [ok(await client.call_tool("run_agent", {"agent_id": agent_id, "input": f"q{n}"})) for n in (1, 2)]
        for turn, v in zip(turns, [5, 2]):
            ok(await client.call_tool("submit_feedback", {
                "agent_id": agent_id, "interaction_id": turn["interaction_id"], "ratings": {"helpfulness": v}}))
        for _ in range(100):
            report = ok(await client.call_tool("get_feedback_metrics", {"agent_id": agent_id}))
            by_metric = {m["metric"]: m for m in report["metrics"]}
            if by_metric.get("feedback.helpfulness", {}).get("count") == 2:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"statistics never arrived: {report}")

    asyncio.run(with_client(server.url, "legacy", scenario))
    server.stop()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AOP_", "MCP_", "NEO4J_", "OPENAI_"))}
    env.update({"AOP_DATA_DIR": data_dir, **store_env})
    done = subprocess.run([aop_binary(), "fitness", "rebuild"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 agents, 4 statistics recomputed from history; 0 differ from the kept ones" in done.stdout, done.stdout

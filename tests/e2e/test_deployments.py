"""Versions go live only when deployed: the official Python MCP SDK drives `aop serve` through a
canary that promotes on live feedback, one that rolls back when its candidate fails its turns,
and a proposal that needs two approvals and refuses its proposer's. Agents answer through the
OpenAI-compatible test server; the principals are the names of the API keys."""

import asyncio
import json
import os
import time
import urllib.request

from test_python_sdk import error_text, ok, with_client

ALICE, BOB, CAROL = "sk-alice-000001", "sk-bob-0000001", "sk-carol-000001"
KEYS = f"alice={ALICE},bob={BOB},carol={CAROL}"


def env(llm, **extra):
    return {
        "OPENAI_BASE_URL": llm.base_url,
        "OPENAI_API_KEY": "sk-provider",
        # Small numbers so a test decides in seconds; the rule itself is the production one.
        "AOP_CANARY_MIN_RATED_TURNS": "12",
        "AOP_CANARY_STEP_MIN_SECONDS": "0",
        "AOP_CANARY_STEP_MIN_SESSIONS": "4",
        "AOP_DEPLOYMENT_CHECK_SECONDS": "1",
        **extra,
    }


async def agent_with_two_versions(client, v2):
    created = ok(await client.call_tool("create_agent", {"name": "Support", "instructions": "v1 prompt"}))
    agent_id = created["agent"]["agent_id"]
    pinned = ok(await client.call_tool("deploy_version", {"agent_id": agent_id, "version": 1, "reason": "baseline"}))
    assert pinned["agent"]["aliases"][0]["routes"] == [{"version": 1, "weight": 100}]
    updated = ok(await client.call_tool("update_agent", {"agent_id": agent_id, **v2}))
    assert updated["version"]["version"] == 2
    assert updated["agent"]["aliases"][0]["routes"] == [{"version": 1, "weight": 100}], \
        "a deployed alias does not follow new versions"
    return agent_id


async def drive(client, agent_id, canary_id, rating_of, turns_per_arm):
    """Sessions on `prod` until each version served `turns_per_arm` turns or the canary was
    decided; each turn rated by its version."""
    served = {1: 0, 2: 0}
    for n in range(400):
        if min(served.values()) >= turns_per_arm:
            return served
        if n % 8 == 7:
            canary = ok(await client.call_tool("get_canary", {"canary_id": canary_id}))
            if canary["status"] != "running":
                return served
        session = ok(await client.call_tool("start_session", {"agent_id": agent_id}))
        version = session["version"]
        reply = await client.call_tool("send_message", {"session_id": session["session_id"], "content": "help me"})
        served[version] += 1
        if reply.is_error:
            continue
        turn = reply.structured_content
        ok(await client.call_tool("submit_feedback", {
            "agent_id": agent_id, "interaction_id": turn["interaction_id"],
            "ratings": {"helpfulness": rating_of(version)}}))
    raise AssertionError(f"traffic never reached both arms: {served}")


async def wait_for_canary(client, canary_id, statuses, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        canary = ok(await client.call_tool("get_canary", {"canary_id": canary_id}))
        if canary["status"] in statuses:
            return canary
        await asyncio.sleep(0.5)
    raise AssertionError(f"canary stayed {canary['status']}: {json.dumps(canary['last_decision'])}")


def save_chart(name: str, svg: str) -> None:
    """With AOP_E2E_CHARTS_DIR set (docs/ to refresh the README's pictures), keeps the chart."""
    target = os.environ.get("AOP_E2E_CHARTS_DIR")
    if target:
        with open(os.path.join(target, name), "w") as f:
            f.write(svg)


def test_a_better_candidate_is_promoted_on_live_feedback(start_server, llm):
    server = start_server(api_key=KEYS, **env(llm))

    async def scenario(client):
        agent_id = await agent_with_two_versions(client, {"instructions": "v2 prompt"})
        bad = error_text(await client.call_tool("start_canary", {
            "agent_id": agent_id, "version": 2, "steps": [60, 40]}))
        assert "steps" in bad and "rise" in bad
        started = ok(await client.call_tool("start_canary", {
            "agent_id": agent_id, "version": 2, "steps": [50], "reason": "try the shorter prompt"}))
        canary = started["canary"]
        assert (canary["baseline"], canary["candidate"]) == (1, 2)
        assert canary["started_by"] == "alice"
        assert started["agent"]["aliases"][0]["routes"] == [
            {"version": 1, "weight": 50}, {"version": 2, "weight": 50}]
        second = error_text(await client.call_tool("start_canary", {"agent_id": agent_id, "version": 2}))
        assert "holds alias 'prod'" in second

        await drive(client, agent_id, canary["canary_id"], lambda v: 5 if v == 2 else 2, turns_per_arm=16)
        done = await wait_for_canary(client, canary["canary_id"], {"baking", "promoted"})
        assert done["last_decision"]["action"] == "promote", done["last_decision"]
        assert done["last_decision"]["analysis"]["prob_better"] > 0.95

        agent = ok(await client.call_tool("get_agent", {"agent_id": agent_id}))
        assert agent["agent"]["aliases"][0]["routes"] == [{"version": 2, "weight": 100}]
        history = ok(await client.call_tool("list_deployments", {"agent_id": agent_id}))["items"]
        assert [d["kind"] for d in history] == ["deploy", "canary_started", "canary_promoted"]
        assert [d["actor"] for d in history] == ["alice", "alice", "system:deployment-controller"]
        assert history[2]["analysis"]["candidate"]["score_mean"] > history[2]["analysis"]["baseline"]["score_mean"]

        read = await client.read_resource(f"canary://{canary['canary_id']}")
        kept = json.loads(read.contents[0].text)
        assert kept["status"] in ("baking", "promoted")
        promoted = [p for p in kept["history"] if p["action"] == "promote"]
        assert len(promoted) == 1, kept["history"]
        assert promoted[0]["candidate_score"] > promoted[0]["baseline_score"], promoted
        deployments = await client.read_resource(f"agent://{agent_id}/deployments")
        assert len(json.loads(deployments.contents[0].text)) == 3

        chart = (await client.read_resource(f"canary://{canary['canary_id']}/chart")).contents[0]
        assert chart.mime_type == "image/svg+xml"
        svg = chart.text
        assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
        lines = [line.strip() for line in svg.splitlines()]
        assert "candidate v2" in lines and "baseline v1" in lines and "candidate share" in lines, lines
        save_chart("canary-chart.svg", svg)

        # The dashboard's canary panels read these.
        request = urllib.request.Request(server.url.removesuffix("/mcp") + "/metrics",
                                         headers={"Authorization": f"Bearer {ALICE}"})
        with urllib.request.urlopen(request, timeout=5) as r:
            text = r.read().decode()
        assert f'aop_canary_candidate_share_percent{{agent_id="{agent_id}"}} 100' in text, text
        assert 'aop_canary_decisions_total{action="promote"} 1' in text, text
        assert f'aop_canary_score_mean{{agent_id="{agent_id}",arm="candidate"}}' in text, text

    asyncio.run(with_client(server.url, "legacy", scenario, key=ALICE))


def test_a_candidate_that_fails_its_turns_is_rolled_back(start_server, llm):
    server = start_server(api_key=KEYS, **env(llm))

    async def scenario(client):
        # The test server refuses every request for this model: version 2's turns all fail.
        agent_id = await agent_with_two_versions(client, {"model": "always-refuses"})
        started = ok(await client.call_tool("start_canary", {"agent_id": agent_id, "version": 2, "steps": [50]}))
        canary_id = started["canary"]["canary_id"]
        await drive(client, agent_id, canary_id, lambda v: 4, turns_per_arm=12)
        done = await wait_for_canary(client, canary_id, {"rolled_back"})
        assert done["last_decision"]["reason"].startswith("guardrail error_rate"), done["last_decision"]
        agent = ok(await client.call_tool("get_agent", {"agent_id": agent_id}))
        assert agent["agent"]["aliases"][0]["routes"] == [{"version": 1, "weight": 100}]
        nothing = error_text(await client.call_tool("rollback_agent", {
            "agent_id": agent_id, "to_version": 1, "reason": "again"}))
        assert "to_version" in nothing and "already serves version 1" in nothing

    asyncio.run(with_client(server.url, "legacy", scenario, key=ALICE))


def test_a_proposal_needs_two_approvals_and_not_its_proposers(start_server, llm):
    server = start_server(api_key=KEYS, **env(llm, AOP_REQUIRED_APPROVALS="2"))

    async def as_alice(client):
        created = ok(await client.call_tool("create_agent", {"name": "Reviewed", "instructions": "long answers"}))
        agent_id = created["agent"]["agent_id"]
        proposal = ok(await client.call_tool("propose_version", {
            "agent_id": agent_id, "base_version": 1, "rollout": "deploy",
            "changes": {"instructions": "short answers"}, "rationale": "users asked for brevity"}))
        assert proposal["proposer"] == "alice" and proposal["required_approvals"] == 2
        refused = error_text(await client.call_tool("review_proposal", {
            "proposal_id": proposal["proposal_id"], "decision": "approve"}))
        assert "cannot approve" in refused
        return agent_id, proposal["proposal_id"]

    agent_id, proposal_id = asyncio.run(with_client(server.url, "legacy", as_alice, key=ALICE))

    async def review(client):
        return ok(await client.call_tool("review_proposal", {
            "proposal_id": proposal_id, "decision": "approve", "comment": "fine"}))

    first = asyncio.run(with_client(server.url, "legacy", review, key=BOB))
    assert first["proposal"]["status"] == "pending" and "version" not in first
    second = asyncio.run(with_client(server.url, "2026-07-28", review, key=CAROL))
    assert second["proposal"]["status"] == "applied"
    assert [r["reviewer"] for r in second["proposal"]["reviews"]] == ["bob", "carol"]
    assert second["version"]["version"]["instructions"] == "short answers"
    assert second["version"]["version"]["parents"] == [{"agent_id": agent_id, "version": 1}]
    assert second["rollout"]["deployment"]["actor"] == "carol"
    assert second["rollout"]["agent"]["aliases"][0]["routes"] == [{"version": 2, "weight": 100}]

    async def listed(client):
        return ok(await client.call_tool("list_proposals", {"agent_id": agent_id, "status": "applied"}))

    assert len(asyncio.run(with_client(server.url, "legacy", listed, key=BOB))["items"]) == 1

"""An evolution through MCP against a real small model (Qwen2.5-Coder 0.5B under llama.cpp, from
infra/llm/local-model, at AOP_TEST_LLM): the official Python SDK starts a run with a tiny budget
and follows it to its end. What the model writes is not predictable, so the test asserts the
mechanics that hold whatever it says: a terminal state, the budget respected, every candidate
scored and linked to its parents, the lineage and the history readable. Whether evolution makes
agents better is the benchmark's question (scripts/bench-evolution)."""

import asyncio
import json
import os
import subprocess
import time

import pytest

from conftest import Server, aop_binary
from test_python_sdk import ok, with_client

VALSET, MINIBATCH = 2, 1
# A little over the least that pays for one accepted iteration, valset + 3 × (minibatch + valset):
# room for a few reflections.
BUDGET = VALSET + 3 * (MINIBATCH + VALSET) + 5


def real_model() -> str:
    url = os.environ.get("AOP_TEST_LLM")
    if not url:
        if os.environ.get("AOP_REQUIRE_SERVICES"):
            pytest.fail("AOP_TEST_LLM is not set, but AOP_REQUIRE_SERVICES requires the real-model run")
        pytest.skip("SKIPPED (service not configured): set AOP_TEST_LLM=http://127.0.0.1:PORT/v1 (infra/llm/local-model start small PORT)")
    return url


# A format the plain seed does not know: only the checks' feedback and the reference answers
# can teach it.
CASES = [
    {"input": f"What is {a} plus {b}?",
     "checks": [{"kind": "regex", "pattern": rf"^\s*SUM: {a + b}\s*$"}, {"kind": "max_chars", "max": 20}],
     "expected": f"SUM: {a + b}", "tags": ["sum"]}
    for a, b in [(2, 3), (7, 5), (11, 4), (6, 9), (13, 8)]
]


def test_an_evolution_with_a_real_model_ends_inside_its_budget(data_dir):
    url = real_model()
    # The embedded store only: the model's minutes are the cost here, and both stores are held
    # to the same behaviour by the store contract and the scripted evolution tests.
    server = Server(data_dir, "e2e-secret-key", dict(
        OPENAI_BASE_URL=url,
        OPENAI_API_KEY="sk-local",
        OPENAI_MODEL="local-model",
        # A small CPU model is slow; the run's own deadlines stay generous.
        AOP_EVOLUTION_CALL_TIMEOUT_SECONDS="120",
        AOP_TURN_TIMEOUT_SECONDS="120",
    ))

    async def scenario(client):
        created = ok(await client.call_tool("create_agent", {
            "name": "Adder", "instructions": "You are a helpful assistant.",
            "model": "local-model", "parameters": {"temperature": 0, "max_tokens": 64}}))
        agent_id = created["agent"]["agent_id"]
        added = ok(await client.call_tool("add_eval_cases", {"agent_id": agent_id, "cases": CASES}))
        assert added["added"] == len(CASES)

        started = ok(await client.call_tool("initialize_evolution", {
            "agent_id": agent_id, "valset_size": VALSET, "minibatch_size": MINIBATCH,
            "budget": {"max_metric_calls": BUDGET, "max_seconds": 900}}))
        evolution_id = started["evolution_id"]
        assert started["status"] == "running"
        assert (started["valset_size"], started["trainset_size"]) == (VALSET, len(CASES) - VALSET)

        deadline = time.monotonic() + 900
        status = started
        while status["status"] == "running":
            assert time.monotonic() < deadline, f"still running after 15 minutes: {json.dumps(status)}"
            status = ok(await client.call_tool("get_evolution_status", {
                "evolution_id": evolution_id, "wait_seconds": 20}))
        assert status["status"] == "completed", json.dumps(status)
        assert status["stop_reason"]
        assert status["spend"]["metric_calls"] <= BUDGET
        assert status["spend"]["llm_calls"] >= status["spend"]["metric_calls"]
        assert status["spend"]["tokens"] > 0
        assert 0.0 <= status["seed_score"] <= 1.0

        candidates = ok(await client.call_tool("list_candidates", {"evolution_id": evolution_id}))["candidates"]
        assert candidates[0]["operator"] == "seed" and candidates[0]["parents"] == []
        assert candidates[0]["components"]["instructions"] == "You are a helpful assistant."
        seen = set()
        for c in candidates:
            assert all(p in seen for p in c["parents"]), "a parent is made before its children"
            if c["operator"] != "seed":
                assert c["parents"], c
                assert c["minibatch"] is not None and len(c["minibatch"]["child"]) == MINIBATCH
            if c["accepted"]:
                assert len(c["val_scores"]) == VALSET
                assert all(0.0 <= s <= 1.0 for s in c["val_scores"])
            seen.add(c["candidate_id"])
        best = max((c for c in candidates if c["accepted"]), key=lambda c: c["val_mean"])
        assert status["best_score"] == pytest.approx(best["val_mean"])

        lineage = await client.read_resource(f"evolution://{evolution_id}/lineage")
        kinds = {c.mime_type: c.text for c in lineage.contents}
        graph = json.loads(kinds["application/json"])
        assert {n["candidate_id"] for n in graph["nodes"]} == seen
        assert kinds["text/vnd.mermaid"].startswith("flowchart TD")
        history = json.loads((await client.read_resource(
            f"evolution://{evolution_id}/performance_history")).contents[0].text)
        assert [p["iteration"] for p in history["points"]] == list(range(len(history["points"])))
        assert history["points"][0]["outcome"] == "seeded"
        assert history["points"][-1]["metric_calls"] == status["spend"]["metric_calls"]
        chart = (await client.read_resource(f"evolution://{evolution_id}/chart")).contents[0]
        assert chart.mime_type == "image/svg+xml" and chart.text.startswith("<svg")
        assert "best" in [line.strip() for line in chart.text.splitlines()]
        target = os.environ.get("AOP_E2E_CHARTS_DIR")
        if target:
            with open(os.path.join(target, "evolution-chart.svg"), "w") as f:
                f.write(chart.text)

        finished["evolution_id"] = evolution_id
        if status["winner"]:
            version = ok(await client.call_tool("get_agent", {
                "agent_id": agent_id, "version": status["winner"]["version"]}))["version"]
            assert version["created_by"] == f"evolution:{evolution_id}"
            assert version["parents"] == [{"agent_id": agent_id, "version": 1}]
        agent = ok(await client.call_tool("get_agent", {"agent_id": agent_id}))["agent"]
        assert agent["aliases"][0]["routes"] == [{"version": 1, "weight": 100}], \
            "an evolution never moves an alias itself"

    finished = {}

    try:
        asyncio.run(with_client(server.url, "2026-07-28", scenario))
    except BaseException:
        # What the server said last: pytest shows it with the failure.
        for line in server.lines[-40:]:
            print(json.dumps(line))
        raise
    finally:
        server.stop()

    # `aop evolve --resume` on the finished run reports it and draws its chart.
    chart = os.path.join(data_dir, "chart.svg")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AOP_", "MCP_", "NEO4J_", "OPENAI_"))}
    env.update({"AOP_DATA_DIR": data_dir, "OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-local"})
    done = subprocess.run([aop_binary(), "evolve", "--resume", finished["evolution_id"], "--chart", chart],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"evolution {finished['evolution_id']} completed" in done.stdout, done.stdout
    with open(chart) as f:
        svg = f.read()
    assert svg.startswith("<svg") and "best" in [line.strip() for line in svg.splitlines()]

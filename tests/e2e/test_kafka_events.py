"""With Kafka configured, `aop serve` publishes its outbox to the broker and consumes the
processor's topics: feedback becomes fitness through a real Kafka-protocol broker."""

import asyncio
import os
import subprocess
import uuid

import pytest
from conftest import aop_binary
from test_python_sdk import ok, with_client


@pytest.fixture
def kafka_env():
    servers = os.environ.get("AOP_TEST_KAFKA")
    if not servers:
        if os.environ.get("AOP_REQUIRE_SERVICES"):
            pytest.fail("AOP_TEST_KAFKA is not set, but AOP_REQUIRE_SERVICES requires the Kafka tests")
        pytest.skip("SKIPPED (service not configured): set AOP_TEST_KAFKA=host:port")
    prefix = f"e2e{uuid.uuid4().hex[:8]}"
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": servers,
        "KAFKA_TOPIC_AGENT_EVENTS": f"{prefix}.agent_events",
        "KAFKA_TOPIC_FEEDBACK_EVENTS": f"{prefix}.feedback_events",
        "KAFKA_TOPIC_EVOLUTION_EVENTS": f"{prefix}.evolution_events",
    }
    applied = subprocess.run([aop_binary(), "topics", "apply"], env={**os.environ, **env},
                             capture_output=True, text=True, timeout=60)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.count("created") == 6, applied.stdout
    return env


def test_feedback_reaches_fitness_through_kafka(start_server, kafka_env):
    server = start_server(**kafka_env)

    async def scenario(client):
        agent = ok(await client.call_tool("create_agent", {"name": "Streamed", "instructions": "Hi."}))
        agent_id = agent["agent"]["agent_id"]
        for v in [1, 5, 3]:
            ok(await client.call_tool("submit_feedback", {"agent_id": agent_id, "ratings": {"clarity": v}}))
        for _ in range(200):
            report = ok(await client.call_tool("get_feedback_metrics", {"agent_id": agent_id, "metric": "clarity"}))
            if report["metrics"] and report["metrics"][0]["count"] == 3:
                break
            await asyncio.sleep(0.1)
        metric = report["metrics"][0]
        assert metric["count"] == 3
        assert abs(metric["mean"] - 0.5) < 1e-9

    asyncio.run(with_client(server.url, "legacy", scenario))
    assert any(line.get("message") == "events go through Kafka" for line in server.lines)

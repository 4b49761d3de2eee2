"""`aop backup` while `aop serve` keeps serving, then `aop restore` into an empty embedded store
that serves the same agents, turns and statistics; a store with data and a damaged archive are
refused. Runs from each store (embedded and Neo4j), so Neo4j -> embedded goes through the
commands too."""

import asyncio
import gzip
import os
import subprocess
import tempfile

from conftest import Server, aop_binary
from test_agent_turns import llm_env, text
from test_python_sdk import KEY, ok, with_client


def aop(args, data_dir, store_env=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AOP_", "MCP_", "NEO4J_", "OPENAI_"))}
    env.update({"AOP_DATA_DIR": data_dir, **(store_env or {})})
    return subprocess.run([aop_binary(), *args], env=env, capture_output=True, text=True, timeout=120)


def test_a_backup_taken_while_serving_restores_into_a_new_store(start_server, llm, data_dir, store_env):
    server = start_server(**llm_env(llm))
    archive = os.path.join(tempfile.mkdtemp(prefix="aop-backup-"), "platform.jsonl.gz")
    seen = {}

    async def scenario(client):
        agent = ok(await client.call_tool("create_agent", {"name": "Kept", "instructions": "Hi."}))
        agent_id = agent["agent"]["agent_id"]
        llm.script([text("one", 10, 5)])
        turn = ok(await client.call_tool("run_agent", {"agent_id": agent_id, "input": "q1"}))
        ok(await client.call_tool("submit_feedback", {
            "agent_id": agent_id, "interaction_id": turn["interaction_id"], "ratings": {"helpfulness": 4}}))
        for _ in range(100):
            report = ok(await client.call_tool("get_feedback_metrics", {"agent_id": agent_id}))
            if any(m["metric"] == "feedback.helpfulness" for m in report["metrics"]):
                break
            await asyncio.sleep(0.05)
        # The platform keeps serving while the backup runs.
        done = await asyncio.to_thread(aop, ["backup", "--out", archive], data_dir, store_env)
        assert done.returncode == 0, done.stderr
        assert "backed up" in done.stderr and "1 agent," in done.stderr, done.stderr
        seen["agent"] = ok(await client.call_tool("get_agent", {"agent_id": agent_id}))
        seen["metrics"] = ok(await client.call_tool("get_feedback_metrics", {"agent_id": agent_id}))
        seen["agent_id"] = agent_id

    asyncio.run(with_client(server.url, "legacy", scenario))
    server.stop()

    refused = aop(["backup", "--out", archive], data_dir, store_env)
    assert refused.returncode != 0 and "exists" in refused.stderr, refused.stderr

    # To standard output (for a pipe to object storage): the archive alone, logs on stderr.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AOP_", "MCP_", "NEO4J_", "OPENAI_"))}
    env.update({"AOP_DATA_DIR": data_dir, "LOG_LEVEL": "info", **store_env})
    piped = subprocess.run([aop_binary(), "backup", "--out", "-"], env=env, capture_output=True, timeout=120)
    assert piped.returncode == 0, piped.stderr
    piped_lines = gzip.decompress(piped.stdout).decode().splitlines()
    with open(archive, "rb") as f:
        file_lines = gzip.decompress(f.read()).decode().splitlines()
    assert piped_lines[1:-1] == file_lines[1:-1], "the same records either way"

    with tempfile.TemporaryDirectory(prefix="aop-restored-") as restored_dir:
        done = aop(["restore", "--in", archive], restored_dir)
        assert done.returncode == 0, done.stderr
        assert "is whole" in done.stderr and "restored" in done.stderr, done.stderr

        again = aop(["restore", "--in", archive], restored_dir)
        assert again.returncode != 0, again.stderr
        assert "not empty: it holds 1 agent" in again.stderr, again.stderr

        restored = Server(restored_dir, KEY, llm_env(llm))
        try:
            async def check(client):
                agent = ok(await client.call_tool("get_agent", {"agent_id": seen["agent_id"]}))
                assert agent == seen["agent"]
                metrics = ok(await client.call_tool("get_feedback_metrics", {"agent_id": seen["agent_id"]}))
                assert metrics == seen["metrics"]

            asyncio.run(with_client(restored.url, "legacy", check))
        finally:
            restored.stop()

    # A damaged archive is refused before anything is loaded.
    with open(archive, "rb") as f:
        whole = f.read()
    lines = gzip.decompress(whole).decode().splitlines(keepends=True)
    cut = os.path.join(os.path.dirname(archive), "cut.jsonl.gz")
    with open(cut, "wb") as f:
        f.write(gzip.compress("".join(lines[:-1]).encode()))
    with tempfile.TemporaryDirectory(prefix="aop-restored-") as empty_dir:
        done = aop(["restore", "--in", cut], empty_dir)
        assert done.returncode != 0
        assert "truncated" in done.stderr and "without its end line" in done.stderr, done.stderr
        assert not os.path.exists(os.path.join(empty_dir, "aop.sqlite3")), "nothing was loaded"

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


def test_backups_go_to_s3_and_a_fresh_store_comes_back_from_there(start_server, data_dir, store_env):
    """infra/backup/to-s3 and from-s3 with the real AWS CLI against moto's S3."""
    import uuid

    import pytest

    moto, aws = os.environ.get("AOP_TEST_MOTO"), os.environ.get("AOP_TEST_AWS_CLI")
    if not moto or not aws:
        if os.environ.get("AOP_REQUIRE_SERVICES"):
            pytest.fail("AOP_TEST_MOTO and AOP_TEST_AWS_CLI must be set: AOP_REQUIRE_SERVICES requires this test")
        pytest.skip("SKIPPED (service not configured): set AOP_TEST_MOTO (infra/aws/moto) and AOP_TEST_AWS_CLI")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    server = start_server()
    seen = {}

    async def scenario(client):
        agent = ok(await client.call_tool("create_agent", {"name": "Shipped", "instructions": "Hi."}))
        seen["agent"] = agent["agent"]

    asyncio.run(with_client(server.url, "legacy", scenario))

    base = {k: v for k, v in os.environ.items() if not k.startswith(("AOP_", "MCP_", "NEO4J_", "OPENAI_", "AWS_"))}
    base.update({
        "PATH": os.path.dirname(aws) + os.pathsep + base.get("PATH", ""),
        "AOP_BIN": aop_binary(),
        "AWS_ENDPOINT_URL": moto,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    })
    bucket = f"aop-backups-{uuid.uuid4().hex[:12]}"
    made = subprocess.run([aws, "s3", "mb", f"s3://{bucket}"], env=base, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr

    def script(name, arg, data, store=None):
        env = {**base, "AOP_DATA_DIR": data, **(store or {})}
        return subprocess.run([os.path.join(root, "infra/backup", name), arg], env=env,
                              capture_output=True, text=True, timeout=120)

    sent = script("to-s3", f"s3://{bucket}/aop", data_dir, store_env)
    assert sent.returncode == 0, sent.stderr
    key = sent.stdout.strip()
    assert key.startswith(f"s3://{bucket}/aop/") and key.endswith(".jsonl.gz"), key

    # A backup that fails keeps nothing in the bucket.
    with tempfile.TemporaryDirectory(prefix="aop-nothing-") as nothing:
        failed = script("to-s3", f"s3://{bucket}/broken", os.path.join(nothing, "missing"))
        assert failed.returncode != 0
        assert "nothing was uploaded" in failed.stderr, failed.stderr
    listed = subprocess.run([aws, "s3", "ls", f"s3://{bucket}/", "--recursive"], env=base,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "aop/" in listed.stdout and "broken/" not in listed.stdout, listed.stdout

    server.stop()
    with tempfile.TemporaryDirectory(prefix="aop-restored-") as restored_dir:
        back = script("from-s3", key, restored_dir)
        assert back.returncode == 0, back.stderr
        restored = Server(restored_dir, KEY)
        try:
            async def check(client):
                agent = ok(await client.call_tool("get_agent", {"agent_id": seen["agent"]["agent_id"]}))
                assert agent["agent"] == seen["agent"]

            asyncio.run(with_client(restored.url, "legacy", check))
        finally:
            restored.stop()

"""Starts and stops real `aop serve` processes for the end-to-end tests."""

import json
import os
import pathlib
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def binary(name: str, override: str) -> str:
    explicit = os.environ.get(override)
    if explicit:
        return explicit
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    for profile in ("debug", "release"):
        candidate = target / profile / name
        if candidate.exists():
            return str(candidate)
    pytest.fail(f"no {name} binary: run `cargo build --workspace` first or set {override}")


def aop_binary() -> str:
    return binary("aop", "AOP_BIN")


class TestLlm:
    """The OpenAI-compatible test server (tests/openai-test-server) as a process, scripted over HTTP."""

    def __init__(self):
        self.proc = subprocess.Popen(
            [binary("openai-test-server", "OPENAI_TEST_SERVER_BIN"), "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening "):
            raise RuntimeError(f"openai-test-server did not start: {line!r}")
        self.base_url = line.split(" ", 1)[1]
        self.root = self.base_url.removesuffix("/v1")

    def script(self, replies: list[dict]) -> None:
        request = urllib.request.Request(
            f"{self.root}/__script",
            data=json.dumps(replies).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=5).read()

    def requests(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.root}/__requests", timeout=5) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Server:
    """One `aop serve` process on a free port, logging JSON lines we can read."""

    def __init__(self, data_dir: str, api_key: str | None, extra_env: dict | None = None):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AOP_", "MCP_", "NEO4J_", "OPENAI_"))}
        env.update({"AOP_DATA_DIR": data_dir, "LOG_LEVEL": "info", "MCP_SERVER_PORT": "0"})
        if api_key:
            env["AOP_API_KEYS"] = api_key
        env.update(extra_env or {})
        self.lines: list[dict] = []
        self.proc = subprocess.Popen(
            [aop_binary(), "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.url = self._wait_for_listening()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _wait_for_listening(self) -> str:
        deadline = time.monotonic() + 30
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"aop exited with {self.proc.wait()} before listening")
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise RuntimeError(f"aop printed a non-JSON line: {line!r}")
            self.lines.append(record)
            if record.get("message") == "listening":
                return record["url"]
        raise RuntimeError("aop did not start listening within 30 s")

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.append(json.loads(line))
            except json.JSONDecodeError:
                self.lines.append({"raw": line})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def data_dir():
    with tempfile.TemporaryDirectory(prefix="aop-e2e-") as d:
        yield d


def neo4j_database() -> dict:
    """A fresh database on the Bolt server of AOP_TEST_NEO4J, and the settings that use it."""
    uri = os.environ.get("AOP_TEST_NEO4J")
    if not uri:
        if os.environ.get("AOP_REQUIRE_SERVICES"):
            pytest.fail("AOP_TEST_NEO4J is not set, but AOP_REQUIRE_SERVICES requires the Neo4j runs")
        pytest.skip("SKIPPED (service not configured): set AOP_TEST_NEO4J=bolt://host:port")
    port = urllib.parse.urlsplit(uri).port
    database = f"e2e_{uuid.uuid4().hex[:12]}"
    # One database per test keeps tests apart; ArcadeDB makes one in milliseconds.
    subprocess.run(
        [str(ROOT / "infra/neo4j/arcadedb"), "create", str(port), database],
        check=True,
        capture_output=True,
    )
    return {
        "NEO4J_URI": uri,
        "NEO4J_USERNAME": os.environ.get("AOP_TEST_NEO4J_USER", "root"),
        "NEO4J_PASSWORD": os.environ.get("AOP_TEST_NEO4J_PASSWORD", "aop-test-password"),
        "NEO4J_DATABASE": database,
        "AOP_MIGRATE_ON_START": "true",
    }


@pytest.fixture(params=["embedded", "neo4j"])
def store_env(request) -> dict:
    """Every end-to-end test runs once on the embedded store and once on Neo4j."""
    return neo4j_database() if request.param == "neo4j" else {}


@pytest.fixture
def start_server(data_dir, store_env):
    started: list[Server] = []

    def start(api_key: str | None = "e2e-secret-key", **env) -> Server:
        server = Server(data_dir, api_key, {**store_env, **env})
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def llm():
    server = TestLlm()
    yield server
    server.stop()

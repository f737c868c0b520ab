"""Runs `wsbridge simulate` on a free port for the whole session and stops it with SIGTERM.

The binary is `$WSBRIDGE_BIN`, or `<repo>/target/debug/wsbridge` (build it with `cargo build`).
"""

import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from openai import AsyncOpenAI, OpenAI

ROOT = Path(__file__).resolve().parents[3]
KEY = "sk-test"
STRICT_KEY = "sk-test-strict"
STARTUP_TIMEOUT = 30
TEST_TIMEOUT = int(os.environ.get("SDK_TEST_TIMEOUT", "60"))


class Simulator:
    """One `wsbridge simulate` process. Its stderr is drained for as long as it runs (a closed
    pipe must never be what decides how it behaves) and kept for failure messages."""

    def __init__(self, extra_env=None):
        binary = Path(os.environ.get("WSBRIDGE_BIN", ROOT / "target" / "debug" / "wsbridge"))
        if not binary.is_file():
            raise RuntimeError(f"no simulator binary at {binary}: run `cargo build` or set WSBRIDGE_BIN")
        env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
        env.update(extra_env or {})
        self.lines = []
        self.proc = subprocess.Popen(
            [str(binary), "simulate", "--listen", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env=env,
        )
        self.url = None
        ready = threading.Event()

        def drain():
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                match = re.search(r"listening on (http://[^\s\"',]+)", line)
                if match and self.url is None:
                    self.url = match.group(1).rstrip("/")
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(STARTUP_TIMEOUT) or self.url is None:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(
                f"the simulator did not log 'listening on http://...' within {STARTUP_TIMEOUT}s "
                f"(exit status {self.proc.returncode}); stderr:\n{self.log_tail()}"
            )

    def log_tail(self, n=40):
        return "\n".join(self.lines[-n:])

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the simulator ignored SIGTERM for 15 s; stderr:\n{self.log_tail()}")
        assert code == 0, f"the simulator must exit 0 on SIGTERM, got {code}; stderr:\n{self.log_tail()}"


@pytest.fixture(scope="session")
def simulator():
    sim = Simulator()
    yield sim
    sim.stop()


@pytest.fixture(scope="session")
def base_url(simulator):
    """`http://ADDR/v1` of the session's simulator."""
    return f"{simulator.url}/v1"


@pytest.fixture(scope="session")
def strict_base_url():
    """A second simulator that accepts only STRICT_KEY (`simulator.accepted_keys` via its env)."""
    sim = Simulator(extra_env={"WSBRIDGE_SIMULATOR_ACCEPTED_KEYS": f'["{STRICT_KEY}"]'})
    yield f"{sim.url}/v1"
    sim.stop()


@pytest.fixture()
def client(base_url):
    # No retries: a retried request would hide the status the simulator really answered.
    with OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=30) as c:
        yield c


@pytest.fixture()
def async_client(base_url):
    return AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=30)


@pytest.fixture(autouse=True)
def test_deadline():
    """Fails a test that blocks (e.g. waiting for a WebSocket frame that never comes) instead of
    hanging the whole run. Tests run on the main thread, where SIGALRM is delivered."""

    def expired(signum, frame):
        raise TimeoutError(f"test took longer than {TEST_TIMEOUT}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TEST_TIMEOUT)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)

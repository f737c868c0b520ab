"""Runs wsbridge processes on free ports for the whole session and stops them with SIGTERM:
`wsbridge simulate` (the upstream simulator) and `wsbridge serve --simulate` (the proxy, with its
in-process simulator as upstream).

The binary is `$WSBRIDGE_BIN`, or `<repo>/target/debug/wsbridge` (build it with `cargo build`).
"""

import json
import os
import re
import signal
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest
from openai import AsyncOpenAI, OpenAI

ROOT = Path(__file__).resolve().parents[3]
KEY = "sk-test"
STRICT_KEY = "sk-test-strict"
STARTUP_TIMEOUT = 30
TEST_TIMEOUT = int(os.environ.get("SDK_TEST_TIMEOUT", "60"))
# No retries: a retried request would hide the status the server really answered.
CLIENT_OPTIONS = {"max_retries": 0, "timeout": 30}
URL = r"(http://[^\s\"',]+)"


class Wsbridge:
    """One wsbridge process, `wsbridge simulate` or `wsbridge serve --simulate`, on a free port.

    `url` is the address it logs as "listening on http://ADDR"; `upstream` is the in-process
    simulator's base URL that `serve --simulate` logs ("upstream: the in-process simulator at
    http://ADDR/v1"), None for `simulate`. Its stderr is drained for as long as it runs (a closed
    pipe must never be what decides how it behaves) and kept for failure messages."""

    def __init__(self, *command, extra_env=None):
        binary = Path(os.environ.get("WSBRIDGE_BIN", ROOT / "target" / "debug" / "wsbridge"))
        if not binary.is_file():
            raise RuntimeError(f"no wsbridge binary at {binary}: run `cargo build` or set WSBRIDGE_BIN")
        env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
        env.update(extra_env or {})
        self.name = " ".join(("wsbridge", *command))
        self.lines = []
        self.url = None
        self.upstream = None
        self.proc = subprocess.Popen(
            [str(binary), *command, "--listen", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env=env,
        )
        ready = threading.Event()

        def drain():
            for line in self.proc.stderr:
                self.lines.append(line.rstrip("\n"))
                upstream = re.search(r"in-process simulator at " + URL, line)
                if upstream and self.upstream is None:
                    self.upstream = upstream.group(1).rstrip("/")
                listening = re.search(r"listening on " + URL, line)
                if listening and self.url is None:
                    self.url = listening.group(1).rstrip("/")
                    ready.set()
            ready.set()

        self.drainer = threading.Thread(target=drain, daemon=True)
        self.drainer.start()
        if not ready.wait(STARTUP_TIMEOUT) or self.url is None:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(
                f"`{self.name}` did not log 'listening on http://...' within {STARTUP_TIMEOUT}s "
                f"(exit status {self.proc.returncode}); stderr:\n{self.log_tail()}"
            )

    def log_tail(self, n=40):
        return "\n".join(self.lines[-n:])

    def sim_stats(self):
        """`GET /sim/stats` of the simulator this process is (`simulate`) or runs (`serve --simulate`)."""
        root = self.upstream.removesuffix("/v1") if self.upstream else self.url
        with urllib.request.urlopen(f"{root}/sim/stats", timeout=10) as reply:
            return json.loads(reply.read())

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"`{self.name}` ignored SIGTERM for 15 s; stderr:\n{self.log_tail()}")
        finally:
            # The drainer ends at the pipe's end of file; then the pipe can be closed.
            self.drainer.join(timeout=5)
            if not self.drainer.is_alive():
                self.proc.stderr.close()
        assert code == 0, f"`{self.name}` must exit 0 on SIGTERM, got {code}; stderr:\n{self.log_tail()}"


def accepting_only(key):
    """The environment that makes a simulator (stand-alone or in-process) accept only `key`."""
    return {"WSBRIDGE_SIMULATOR_ACCEPTED_KEYS": json.dumps([key])}


@pytest.fixture(scope="session")
def simulator():
    sim = Wsbridge("simulate")
    yield sim
    sim.stop()


@pytest.fixture(scope="session")
def base_url(simulator):
    """`http://ADDR/v1` of the session's simulator."""
    return f"{simulator.url}/v1"


@pytest.fixture(scope="session")
def strict_base_url():
    """A second simulator that accepts only STRICT_KEY (`simulator.accepted_keys` via its env)."""
    sim = Wsbridge("simulate", extra_env=accepting_only(STRICT_KEY))
    yield f"{sim.url}/v1"
    sim.stop()


@pytest.fixture(scope="session")
def proxy():
    """The proxy, `wsbridge serve --simulate`: its in-process simulator is the upstream and
    accepts only KEY, so a wrong key gets the upstream's 401 through the proxy."""
    process = Wsbridge("serve", "--simulate", extra_env=accepting_only(KEY))
    assert process.upstream, f"the proxy did not log its in-process simulator's URL:\n{process.log_tail()}"
    yield process
    process.stop()


@pytest.fixture(scope="session")
def proxy_base_url(proxy):
    """`http://ADDR/v1` of the session's proxy: the only thing an SDK user changes."""
    return f"{proxy.url}/v1"


@pytest.fixture()
def client(base_url):
    with OpenAI(base_url=base_url, api_key=KEY, **CLIENT_OPTIONS) as c:
        yield c


@pytest.fixture()
def async_client(base_url):
    return AsyncOpenAI(base_url=base_url, api_key=KEY, **CLIENT_OPTIONS)


@pytest.fixture(params=["simulator", "proxy"])
def either_client(request):
    """The same test against the simulator directly and through the proxy: a user must not be
    able to tell them apart."""
    return request.getfixturevalue("client" if request.param == "simulator" else "proxy_client")


@pytest.fixture(params=["simulator", "proxy"])
def either_async_client(request):
    """[`either_client`], async."""
    return request.getfixturevalue("async_client" if request.param == "simulator" else "proxy_async_client")


@pytest.fixture()
def proxy_client(proxy_base_url):
    with OpenAI(base_url=proxy_base_url, api_key=KEY, **CLIENT_OPTIONS) as c:
        yield c


@pytest.fixture()
def proxy_async_client(proxy_base_url):
    return AsyncOpenAI(base_url=proxy_base_url, api_key=KEY, **CLIENT_OPTIONS)


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

"""Starts `wsbridge simulate` on a free port for the whole session and stops it with SIGTERM."""

import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
KEY = "sk-test-python"


def start_simulator(*args, extra_env=None):
    """Runs the binary, waits for its 'listening on' line, returns (process, 'http://ADDR')."""
    binary = os.environ.get("WSBRIDGE_BIN", str(ROOT / "target" / "debug" / "wsbridge"))
    env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
    env.update(extra_env or {})
    proc = subprocess.Popen(
        [binary, "simulate", "--listen", "127.0.0.1:0", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    found = {}
    ready = threading.Event()

    def read():
        for line in proc.stderr:
            match = re.search(r"listening on (http://\S+)", line)
            if match and not ready.is_set():
                found["url"] = match.group(1)
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(30) or "url" not in found:
        proc.kill()
        raise RuntimeError("the simulator did not report its address")
    return proc, found["url"]


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0, "the simulator must exit 0 on SIGTERM"


@pytest.fixture(scope="session")
def sim_url():
    proc, url = start_simulator()
    yield url
    stop(proc)


@pytest.fixture(scope="session")
def strict_base_url():
    """A simulator that accepts only KEY (set through its environment variable)."""
    proc, url = start_simulator(extra_env={"WSBRIDGE_SIMULATOR_ACCEPTED_KEYS": f'["{KEY}"]'})
    yield f"{url}/v1"
    stop(proc)


@pytest.fixture(scope="session")
def base_url(sim_url):
    return f"{sim_url}/v1"


@pytest.fixture()
def client(base_url):
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key=KEY, max_retries=0)

"""A real OpenAI-compatible model server for the benchmark and the tests: `transformers serve` on a local
model folder, on a free loopback port, warmed up by one generation, stopped on exit."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

START_TIMEOUT_S = 300


@dataclass(frozen=True)
class ModelServer:
    root: str  # http://127.0.0.1:PORT
    model: str  # the name it serves (the folder, as given)

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"


class ServerFailed(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def transformers_serve(model_dir: Path, log_path: Path) -> Iterator[ModelServer]:
    port = _free_port()
    model = str(model_dir)
    argv = [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve",
            "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--log-level", "warning", model]
    with log_path.open("wb") as log:
        server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                raise ServerFailed(f"transformers serve exited ({server.returncode}): {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{root}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServerFailed(f"transformers serve did not start in {START_TIMEOUT_S} s")
            time.sleep(0.5)
        # The first generation warms the model up (seconds on a busy CPU): outside anything measured.
        httpx.post(f"{root}/v1/chat/completions", timeout=START_TIMEOUT_S, json={
            "model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        yield ModelServer(root, model)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

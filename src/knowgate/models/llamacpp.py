"""Serve a GGUF model on loopback with llama.cpp's OpenAI-compatible server (llama-cpp-python).

For tests, benchmarks and trying the remote backend without a GPU cluster: the packaged
SmolLM2 GGUF served by ``python -m llama_cpp.server`` is a real OpenAI-compatible endpoint with
logprobs. Needs the optional extra ``knowgate[llamacpp]`` (llama-cpp-python compiles llama.cpp
from source when installed).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from knowgate.errors import ConfigError, MissingPackageError, ModelLoadError
from knowgate.models.packaged import PACKAGED_MODELS

log = logging.getLogger(__name__)

LLAMA_CPP_EXTRA = "pip install 'knowgate[llamacpp]'"
PYTHON_ENV_VAR = "KNOWGATE_LLAMA_CPP_PYTHON"
"""A Python interpreter with llama-cpp-python installed, to run the server from another
environment than knowgate's (default: knowgate's own interpreter)."""
GREEDY_BODY = {"repeat_penalty": 1.0}
"""llama-cpp-python's server applies ``repeat_penalty`` 1.1 unless a request says otherwise,
which makes a "greedy" draft differ from the arg-max of the distribution it reports. Send this
(``remote.extra_body``) for plain greedy decoding."""


@dataclass(frozen=True)
class LlamaCppServer:
    """A running llama.cpp server.

    Attributes:
        base_url: the API root (``http://127.0.0.1:<port>/v1``).
        model: the served model's name (its alias).
        gguf: the GGUF file it serves.
        log_path: where its output goes.
        process: the server process.
    """

    base_url: str
    model: str
    gguf: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def source(self) -> str:
        """The model source naming it: ``openai:<base_url>#<model>``."""
        return f"openai:{self.base_url}#{self.model}"


def server_python() -> str:
    """The interpreter that runs the server: ``$KNOWGATE_LLAMA_CPP_PYTHON`` or this one."""
    return os.environ.get(PYTHON_ENV_VAR) or sys.executable


def llama_cpp_available(python: str | None = None) -> bool:
    """Whether ``python`` (default :func:`server_python`) can import ``llama_cpp.server``."""
    python = python or server_python()
    if python == sys.executable:
        return importlib.util.find_spec("llama_cpp") is not None
    check = "import importlib.util, sys; sys.exit(importlib.util.find_spec('llama_cpp') is None)"
    try:
        return (
            subprocess.run([python, "-c", check], capture_output=True, timeout=60).returncode == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def gguf_path(model: str | Path) -> Path:
    """A packaged model's GGUF file (single-file models only), or a ``.gguf`` path.

    Raises:
        ConfigError: a packaged model split across packages, or not a GGUF file.
        MissingPackageError: the packaged model is not installed.
    """
    if str(model) in PACKAGED_MODELS:
        parts = PACKAGED_MODELS[str(model)].part_paths()
        if len(parts) != 1:
            raise ConfigError(
                f"{model} ships in {len(parts)} parts; serve an assembled .gguf file instead"
            )
        return parts[0]
    path = Path(model).expanduser()
    if path.suffix != ".gguf" or not path.is_file():
        raise ConfigError(f"not a GGUF file: {path}")
    return path


@contextlib.contextmanager
def llama_cpp_server(
    model: str | Path = "smollm2-135m",
    *,
    alias: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    n_ctx: int = 2048,
    n_threads: int = 1,
    log_path: Path | None = None,
    startup_timeout_s: float = 120.0,
    python: str | None = None,
) -> Iterator[LlamaCppServer]:
    """Run ``python -m llama_cpp.server`` on a GGUF model until the block ends.

    Args:
        model: a packaged model name or a ``.gguf`` file.
        alias: the served model name (default the packaged name or the file's stem).
        host: listen address (loopback by default).
        port: listen port (default: a free one).
        n_ctx: context size.
        n_threads: CPU threads for generation.
        log_path: the server's output (default a file in the working directory's ``runs/``).
        startup_timeout_s: how long to wait for ``/v1/models`` to answer.
        python: the interpreter with llama-cpp-python (default :func:`server_python`).

    Raises:
        MissingPackageError: llama-cpp-python is not installed.
        ModelLoadError: the server exited or did not answer in time (its log's tail is shown).
    """
    python = python or server_python()
    if not llama_cpp_available(python):
        raise MissingPackageError(
            f"serving a GGUF file needs llama-cpp-python in {python}; install it with: "
            f"{LLAMA_CPP_EXTRA} (or point ${PYTHON_ENV_VAR} at an interpreter that has it)"
        )
    gguf = gguf_path(model)
    name = alias or (str(model) if str(model) in PACKAGED_MODELS else gguf.stem)
    port = port or free_port(host)
    log_path = log_path or Path.cwd() / "runs" / f"llama-cpp-server-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        python,
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--model_alias",
        name,
        "--host",
        host,
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(n_threads),
        "--n_threads_batch",
        str(n_threads),
    ]
    base_url = f"http://{host}:{port}/v1"
    with log_path.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(process, base_url, log_path, startup_timeout_s)
        log.info("llama.cpp server for %s at %s (log %s)", gguf.name, base_url, log_path)
        yield LlamaCppServer(base_url, name, gguf, log_path, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_ready(
    process: subprocess.Popen[bytes], base_url: str, log_path: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ModelLoadError(
                f"the llama.cpp server exited with code {process.returncode} before answering; "
                f"last lines of {log_path}:\n{_tail(log_path)}"
            )
        try:
            if httpx.get(f"{base_url}/models", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise ModelLoadError(
        f"the llama.cpp server at {base_url} did not answer within {timeout_s:g} s; last lines "
        f"of {log_path}:\n{_tail(log_path)}"
    )

"""The vLLM servers behind the vLLM backend (tunery.inference.vllm): where vLLM's interpreter is, starting
`python -m vllm.entrypoints.openai.api_server` for one model directory as a child process (its output to
`$TUNERY_HOME/logs/vllm-PORT.log`, never the terminal) that dies with tunery (tunery.inference.child), and
stopping it with its engine-core and worker children."""

from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tunery.errors import InvalidRequest, ModelUnavailable
from tunery.inference import child
from tunery.inference.http_backend import ServedModel
from tunery.settings import InferenceSettings, Settings, child_env, get_settings

log = logging.getLogger("tunery.inference")
REPO_VENV = Path(__file__).resolve().parents[3] / ".venv-vllm" / "bin" / "python"
SERVED = "base"  # the model name a vLLM server knows its base (or full fine-tune) by
START_TIMEOUT = 900.0  # seconds for a server to answer /health (a loaded 2-core CPU took 140 s)
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM accepts as --max-lora-rank


def python_path(settings: Settings | None = None) -> Path | None:
    """The interpreter that has vLLM, or None."""
    settings = settings or get_settings()
    given = settings.inference.vllm_python
    path = Path(given).expanduser() if given else REPO_VENV
    return path if path.is_file() and os.access(path, os.X_OK) else None


def available(settings: Settings | None = None) -> bool:
    return python_path(settings) is not None


@dataclass(kw_only=True)
class VllmModel(ServedModel):
    """One vLLM server: a model directory, its tokenizer, and the LoRA adapters loaded into it (`adapters`:
    vLLM lora_name → model id)."""

    path: Path
    lora: bool = True
    proc: subprocess.Popen | None = None  # the server's watchdog (tunery.inference.child)
    url: str = ""
    log_path: Path | None = None
    _pieces: object = None

    def token_text(self):
        """Token id → (text, bytes) by the model's tokenizer, as the other backends report logprobs."""
        if self._pieces is None:
            from tunery.inference.text import TokenText

            self._pieces = TokenText(self.tokenizer)
        return self._pieces


def start(m: VllmModel, python: Path, settings: Settings, config: InferenceSettings) -> None:
    """Start vLLM's OpenAI server for `m` on a free loopback port and wait until it answers /health."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(m.path),
           "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(port),
           "--dtype", _dtype(settings, config), "--max-model-len", str(m.context_length),
           "--max-num-seqs", str(config.max_batch), "--max-logprobs", "20",
           "--generation-config", "vllm",  # OpenAI's defaults, not the model's generation_config.json
           "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
           "--disable-log-stats", "--disable-uvicorn-access-log"]
    if m.lora:
        rank = min(r for r in LORA_RANKS if r >= min(config.vllm_max_lora_rank, LORA_RANKS[-1]))
        cmd += ["--enable-lora", "--max-lora-rank", str(rank),
                "--max-loras", str(max(1, min(config.max_adapters, 8))),
                "--max-cpu-loras", str(max(1, config.max_adapters))]
    cmd += shlex.split(config.vllm_args or "")
    threads = settings.compute.num_threads or len(os.sched_getaffinity(0))
    env = child_env({
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": str(config.vllm_cpu_kv_gib),
        "VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(threads),
        "PYTHONPATH": "", "VIRTUAL_ENV": "",
    })
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    m.log_path = logs / f"vllm-{port}.log"
    m.url = f"http://127.0.0.1:{port}"
    with open(m.log_path, "ab") as out:
        out.write(f"$ {shlex.join(cmd)}\n".encode())
    m.proc = child.spawn(cmd, env=env, log_path=m.log_path)
    log.info("vLLM server for %s starting at %s (log %s)", m.key, m.url, m.log_path)
    _wait_ready(m)


def _wait_ready(m: VllmModel) -> None:
    import httpx

    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        code = m.proc.poll()
        if code is not None:
            tail = m.log_path.read_text(errors="replace").strip().splitlines()[-3:]
            stop(m)  # whatever it started ends too
            raise ModelUnavailable(f"vLLM could not serve {m.path.name} (exit {code}): "
                                   f"{' | '.join(tail)[-400:]} (log: {m.log_path})", param="model")
        try:
            if httpx.get(m.url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(m)
    raise ModelUnavailable(f"vLLM did not start serving {m.path.name} within {START_TIMEOUT:.0f} s "
                           f"(log: {m.log_path})", param="model")


def _dtype(settings: Settings, config: InferenceSettings) -> str:
    name = config.dtype
    if name == "auto":  # as the torch engine: bf16 on a CPU that has it, else fp32; vLLM's choice on a GPU
        from tunery.models import pick_device

        if pick_device(settings.compute.device) != "cpu":
            return "auto"
        import torch

        try:
            return "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"
        except (AttributeError, RuntimeError):
            return "float32"
    table = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
             "float16": "float16", "fp16": "float16"}
    if name not in table:
        raise InvalidRequest(f"TUNERY_INFERENCE_DTYPE must be auto, float32, bfloat16 or float16, not {name!r}")
    return table[name]


def stop(m: VllmModel) -> None:
    """Stop a server and its engine-core and worker children."""
    proc, m.proc = m.proc, None
    child.stop(proc)

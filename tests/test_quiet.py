"""No raw library output in the user's terminal (issue 11): the CLI's entry point silences library
warnings and progress bars; tunery's own conversion line is printed instead (models.registry)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SNIPPET = """
from tunery.quiet import captured_output, quiet_libraries
quiet_libraries()
import warnings
warnings.warn("`torch_dtype` is deprecated! Use `dtype` instead!", FutureWarning)
warnings.warn_explicit("hub says", UserWarning, "x.py", 1, module="huggingface_hub.utils._validators")
from tqdm.auto import tqdm
with captured_output():
    for _ in tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
        pass
print("done")
"""


def test_library_warnings_and_tqdm_bars_stay_out_of_the_terminal():
    proc = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "done\n" and proc.stderr == "", proc.stderr


def test_the_cli_entry_point_is_quiet():
    proc = subprocess.run([sys.executable, "-c", "import sys; from tunery.cli import main; "
                           "sys.argv = ['tunery', 'models', 'list', '--json']; main()"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "smollm2-135m-instruct" in proc.stdout


SERVER = """
import socket, sys, threading, time
if sys.argv[2] == "transformers-first":  # an embedding program that imported transformers itself
    import transformers.utils.logging  # noqa: F401
import openai, uvicorn
from tunery.api.app import create_app
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
srv = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
threading.Thread(target=srv.run, daemon=True).start()
while not srv.started:
    time.sleep(0.02)
c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=300)
for _ in range(2):  # the first request loads the model (weights, tokenizer), the second reuses it
    r = c.chat.completions.create(model=sys.argv[1], messages=[{"role": "user", "content": "hi"}], max_tokens=3)
print("answered", r.choices[0].finish_reason)
srv.should_exit = True
time.sleep(0.3)
"""


@pytest.mark.parametrize("order", ["tunery-first", "transformers-first"])
def test_a_server_started_outside_the_cli_loads_its_first_model_quietly(tiny_model_dir, tunery_home, order):
    """create_app quiets the libraries itself: transformers' "Loading weights" tqdm and the `past_key_values`
    FutureWarning of the first generation once reached the terminal of a server not started by `tunery serve`."""
    env = {k: v for k, v in os.environ.items() if k not in (
        "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "TRANSFORMERS_NO_ADVISORY_WARNINGS", "PYTHONWARNINGS")}
    proc = subprocess.run([sys.executable, "-c", SERVER, str(tiny_model_dir), order], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() in ("answered length", "answered stop"), proc.stdout
    assert proc.stderr == "", proc.stderr[-3000:]


@pytest.mark.slow
def test_the_first_gguf_conversion_prints_one_line_of_ours(tmp_path):
    """`tunery models pull` into an empty model cache (what the quickstart's first run does): transformers'
    "Converting and de-quantizing GGUF tensors..." tqdm and the libraries' warnings stay out; tunery's own
    line says what happened. Converts the bundled GGUF for real (minutes on 2 busy cores)."""
    env = {k: v for k, v in os.environ.items() if k not in (
        "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "TRANSFORMERS_NO_ADVISORY_WARNINGS", "PYTHONWARNINGS")}
    env.update(TUNERY_HOME=str(tmp_path / "home"), TUNERY_MODEL_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "tunery.cli", "models", "pull", "smollm2-135m-instruct"],
                          capture_output=True, text=True, timeout=1800, env=env, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "cache" / "smollm2-135m-instruct" / "config.json").is_file()
    out = proc.stdout + proc.stderr
    assert "converted smollm2-135m-instruct to safetensors in" in proc.stderr, out
    for noise in ("de-quantizing", "it/s]", "%|", "Warning", "Traceback"):
        assert noise not in out, out[-3000:]

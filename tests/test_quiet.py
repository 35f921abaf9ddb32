"""No raw library output in the user's terminal (issue 11): the CLI's entry point silences library
warnings and progress bars; tunery's own conversion line is printed instead (models.registry)."""

from __future__ import annotations

import subprocess
import sys

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

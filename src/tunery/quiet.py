"""Keep library noise out of the user's terminal: transformers/huggingface_hub progress bars, their
UserWarnings and FutureWarnings. tunery shows its own rich progress instead; libraries' messages still
reach the logs (the logging module), only the raw terminal output goes."""

from __future__ import annotations

import contextlib
import io
import sys
import warnings

_NOISY_MODULES = r"(transformers|huggingface_hub|peft|accelerate|torch|gguf|tokenizers|xgrammar)(\..*)?"


def quiet_libraries() -> None:
    """Process-wide: the CLI's entry point calls it, and so does the API app (create_app), so a server
    started outside the CLI (uvicorn --factory, an embedding program) is as quiet at its first model load
    as `tunery serve`. Environment defaults are inherited by worker and trainer children; a user's own
    setting wins. Idempotent."""
    from tunery.settings import set_library_env

    env = set_library_env()
    # Deprecations are for the code that calls the library (tunery's own tests still show them); a
    # library's warning is attributed to its caller's module (stacklevel: transformers' `past_key_values`
    # FutureWarning names torch's module.py), so these go by category.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=_NOISY_MODULES)
    _bars_off_in_loaded_libraries(env)


def _bars_off_in_loaded_libraries(env: dict[str, str]) -> None:
    """A library imported before quiet_libraries() read the environment already (transformers decides at
    import whether its tqdm — "Loading weights" — is active): switch its bars off directly. Libraries
    not imported yet are left alone (torch and transformers load lazily) and read the environment."""
    if env["HF_HUB_DISABLE_PROGRESS_BARS"] != "1":
        return  # the user asked for bars
    hub = sys.modules.get("huggingface_hub.utils")
    if hub is not None:
        hub.disable_progress_bars()
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:
        hf_logging.disable_progress_bar()
        if env["TRANSFORMERS_VERBOSITY"] == "error":
            hf_logging.set_verbosity_error()


@contextlib.contextmanager
def captured_output():
    """Swallow what a library prints straight to sys.stdout/sys.stderr (tqdm bars that ignore the
    libraries' own switches) for the duration of the block; the text is kept for error messages."""
    buf = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
            yield buf


def real_stderr():
    """The terminal's stderr even inside captured_output()."""
    return sys.__stderr__ or sys.stderr

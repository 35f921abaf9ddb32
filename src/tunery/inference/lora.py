"""Many LoRA adapters on one base model, each batch row using its own adapter (or none).

PEFT's mixed-adapter batches loop over the adapters present in every LoRA layer (dozens of small ops
per adapter per layer), so a batch with 10 adapters costs far more than one with 1. Here every wrapped
linear layer keeps all loaded adapters stacked — A as [slots, R, in] and B (scaling folded in) as
[slots, R, out], ranks zero-padded to the largest R — and a forward pass costs a fixed number of ops:
  * no row with an adapter: the base layer only;
  * one adapter for the whole batch: x @ A_s^T @ B_s;
  * several: x @ A_all^T (one matmul over every slot), masked to each row's slot, @ B_all — or, when
    only a few of many loaded slots are used, the same over a gathered subset.
Only plain LoRA is served (what tunery's trainer writes): DoRA, biases, modules_to_save and embedding
adapters are refused with a clear error.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from tunery.errors import ModelUnavailable

_PREFIX = "base_model.model."


class LoraRoute:
    """How the current forward pass maps batch rows to adapter slots (shared by every wrapped layer)."""

    def __init__(self) -> None:
        self.mode = "none"  # none | single | all | gather
        self.slot = 0
        self.mask: torch.Tensor | None = None
        self.index: torch.Tensor | None = None
        self.n_slots = 0


class MultiLoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, route: LoraRoute):
        super().__init__()
        self.base = base
        self.route = route
        self.in_features, self.out_features = base.in_features, base.out_features
        self.A: torch.Tensor | None = None  # [cap, R, in]
        self.B: torch.Tensor | None = None  # [cap, R, out]

    def ensure(self, cap: int, rank: int) -> None:
        w = self.base.weight
        if self.A is not None and self.A.shape[0] >= cap and self.A.shape[1] >= rank:
            return
        old_a, old_b = self.A, self.B
        cap = max(cap, old_a.shape[0] if old_a is not None else 0)
        rank = max(rank, old_a.shape[1] if old_a is not None else 0)
        self.A = torch.zeros(cap, rank, self.in_features, dtype=w.dtype, device=w.device)
        self.B = torch.zeros(cap, rank, self.out_features, dtype=w.dtype, device=w.device)
        if old_a is not None:
            self.A[: old_a.shape[0], : old_a.shape[1]] = old_a
            self.B[: old_b.shape[0], : old_b.shape[1]] = old_b

    def set_slot(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
        if self.A is None:
            return
        self.A[slot].zero_()
        self.B[slot].zero_()
        if a is not None:
            r = a.shape[0]
            self.A[slot, :r] = a
            self.B[slot, :r] = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        rt = self.route
        if rt.mode == "none" or self.A is None:
            return y
        if rt.mode == "single":
            return y + (x @ self.A[rt.slot].T) @ self.B[rt.slot]
        if rt.mode == "all":
            a = self.A[: rt.n_slots].reshape(-1, self.in_features)
            b = self.B[: rt.n_slots].reshape(-1, self.out_features)
        else:
            a = self.A.index_select(0, rt.index).reshape(-1, self.in_features)
            b = self.B.index_select(0, rt.index).reshape(-1, self.out_features)
        return y + ((x @ a.T) * rt.mask) @ b


def read_adapter(path: Path, dtype) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module path: (A [r, in], B^T * scaling [r, out])} from a PEFT LoRA directory, validated."""
    from safetensors.torch import load_file

    try:
        cfg = json.loads((path / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelUnavailable(f"{path}/adapter_config.json is unreadable: {exc}", param="model") from exc
    problems = []
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        problems.append(f"peft_type {cfg.get('peft_type')}")
    if cfg.get("use_dora"):
        problems.append("DoRA")
    if cfg.get("bias", "none") != "none":
        problems.append(f"bias={cfg.get('bias')}")
    weights = load_file(str(path / "adapter_model.safetensors"))
    if any(".modules_to_save." in k or "lora_embedding" in k or "lora_magnitude" in k for k in weights):
        problems.append("modules_to_save / embedding / magnitude weights")
    if problems:
        raise ModelUnavailable(f"the adapter in {path} uses {', '.join(problems)}, which tunery serves only as "
                               "a merged full model; merge it and register the result", param="model")
    alpha = float(cfg.get("lora_alpha") or cfg.get("r") or 8)
    alpha_pattern = cfg.get("alpha_pattern") or {}
    rslora = bool(cfg.get("use_rslora"))
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, a in weights.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")]
        module = module[len(_PREFIX):] if module.startswith(_PREFIX) else module
        b = weights.get(key.replace(".lora_A.weight", ".lora_B.weight"))
        if b is None:
            raise ModelUnavailable(f"the adapter in {path} has lora_A but no lora_B for {module}", param="model")
        r = a.shape[0]
        al = alpha
        for pat, v in alpha_pattern.items():
            if re.match(rf"(.*\.)?{pat}$", module):
                al = float(v)
        scale = al / (math.sqrt(r) if rslora else r)
        out[module] = (a.to(dtype).contiguous(), (b.float() * scale).T.to(dtype).contiguous())
    if not out:
        raise ModelUnavailable(f"the adapter in {path} has no LoRA weights", param="model")
    return out


class MultiLora:
    """The adapters attached to one base model: slots, wrapped layers, and per-forward routing."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.route = LoraRoute()
        self.layers: dict[str, MultiLoraLinear] = {}
        self.slot_of: dict[str, int] = {}
        self.rank = 0
        self.cap = 0
        first = next(model.parameters())
        self.dtype, self.device = first.dtype, first.device

    def __contains__(self, name: str) -> bool:
        return name in self.slot_of

    def __len__(self) -> int:
        return len(self.slot_of)

    def add(self, name: str, weights: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        modules = dict(self.model.named_modules())
        for path in weights:
            if path not in self.layers:
                target = modules.get(path)
                if isinstance(target, MultiLoraLinear):
                    self.layers[path] = target
                    continue
                if not isinstance(target, nn.Linear):
                    raise ModelUnavailable(f"the adapter targets {path!r}, which is not a linear layer of this "
                                           "base model (was it trained on another base?)", param="model")
        free = sorted(set(range(self.cap)) - set(self.slot_of.values()))
        slot = free[0] if free else self.cap
        rank = max([self.rank] + [a.shape[0] for a, _ in weights.values()])
        cap = max(self.cap, slot + 1)
        for path in weights:
            if path not in self.layers:
                parent_name, _, child = path.rpartition(".")
                parent = modules[parent_name] if parent_name else self.model
                wrapped = MultiLoraLinear(getattr(parent, child), self.route)
                setattr(parent, child, wrapped)
                self.layers[path] = wrapped
        for layer in self.layers.values():
            layer.ensure(cap, rank)
        for path, layer in self.layers.items():
            a_b = weights.get(path)
            layer.set_slot(slot, *(a_b if a_b is not None else (None, None)))
        self.rank, self.cap = rank, cap
        self.slot_of[name] = slot

    def remove(self, name: str) -> None:
        slot = self.slot_of.pop(name, None)
        if slot is None:
            return
        for layer in self.layers.values():
            layer.set_slot(slot, None, None)

    def set_batch(self, names: list[str | None]) -> None:
        """Route the next forward pass: row i uses adapter names[i] (None = the base model)."""
        rt = self.route
        slots = [self.slot_of[n] if n is not None else -1 for n in names]
        used = sorted({s for s in slots if s >= 0})
        if not used:
            rt.mode = "none"
            return
        if len(used) == 1 and all(s == used[0] for s in slots):
            rt.mode, rt.slot = "single", used[0]
            return
        n_slots = max(self.slot_of.values()) + 1
        if 2 * len(used) >= n_slots:
            rt.mode, rt.n_slots = "all", n_slots
            cols = list(range(n_slots))
        else:
            rt.mode = "gather"
            rt.index = torch.tensor(used, dtype=torch.long, device=self.device)
            cols = used
        pos = {s: i for i, s in enumerate(cols)}
        onehot = torch.zeros(len(slots), len(cols), dtype=self.dtype)
        for row, s in enumerate(slots):
            if s >= 0:
                onehot[row, pos[s]] = 1
        rt.mask = onehot.repeat_interleave(self.rank, dim=1)[:, None, :].to(self.device)

    def clear(self) -> None:
        self.route.mode = "none"

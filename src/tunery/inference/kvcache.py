"""A batch KV cache that rows can join and leave between decode steps (continuous batching).

Rows are left-padded to a shared length. Each layer keeps one preallocated buffer, so a decode
step writes its new key/value in place instead of `torch.cat`-ing the whole cache (what
DynamicCache does); joining rows copies once, leaving rows is an index_select, and padding
columns that no row needs any more are dropped by slicing (a view, no copy).
Padding is zeros, never the hidden state of a pad token: a masked-out position then contributes
0 * 0 to attention rather than a possible NaN.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

_HEADROOM = 64


class SlotLayer(DynamicLayer):
    """One layer's keys/values in a buffer [B, H, capacity, D]; `keys`/`values` are views of the used part."""

    def __init__(self, kbuf: torch.Tensor | None = None, vbuf: torch.Tensor | None = None, n: int = 0):
        super().__init__()
        self.kbuf, self.vbuf, self.n = kbuf, vbuf, n
        if kbuf is not None:
            self.dtype, self.device = kbuf.dtype, kbuf.device
            self.is_initialized = True
            self._view()

    def _view(self) -> None:
        self.keys = self.kbuf[:, :, : self.n]
        self.values = self.vbuf[:, :, : self.n]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        b, h, _, d = key_states.shape
        self.kbuf = key_states.new_zeros(b, h, 0, d)
        self.vbuf = value_states.new_zeros(b, h, 0, value_states.shape[-1])
        self.n = 0
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        q = key_states.shape[-2]
        need = self.n + q
        if need > self.kbuf.shape[2]:
            self._grow(need + max(_HEADROOM, need // 2))
        self.kbuf[:, :, self.n:need] = key_states
        self.vbuf[:, :, self.n:need] = value_states
        self.n = need
        self._view()
        return self.keys, self.values

    def _grow(self, cap: int) -> None:
        def grown(buf):
            b, h, _, d = buf.shape
            new = buf.new_zeros(b, h, cap, d)
            new[:, :, : self.n] = buf[:, :, : self.n]
            return new
        self.kbuf, self.vbuf = grown(self.kbuf), grown(self.vbuf)

    def get_seq_length(self) -> int:
        return self.n if self.is_initialized else 0


def make_cache(layers: list[SlotLayer]) -> DynamicCache:
    """A DynamicCache over the given SlotLayers (empty ones for a prefill)."""
    cache = DynamicCache()
    cache.layers = layers
    return cache


class BatchKV:
    """KV state of the running batch: SlotLayers with a shared length n and per-row left padding."""

    def __init__(self) -> None:
        self.layers: list[SlotLayer] = []
        self.pads = torch.zeros(0, dtype=torch.long)
        self.n = 0

    @property
    def rows(self) -> int:
        return int(self.pads.shape[0])

    def cache(self) -> DynamicCache:
        return make_cache(self.layers)

    def attention_mask(self, extra: int = 1) -> torch.Tensor | None:
        """[B, n+extra] mask (1 = real); None when no row is padded (lets attention take its fast path)."""
        if self.rows == 0 or int(self.pads.max()) == 0:
            return None
        cols = torch.arange(self.n + extra)
        return (cols[None, :] >= self.pads[:, None]).long()

    def positions(self) -> torch.Tensor:
        """Position id of the next token of each row: its real (unpadded) length so far."""
        return (self.n - self.pads)[:, None]

    def advance(self) -> None:
        self.n = self.layers[0].n if self.layers else self.n

    def add(self, layers: list[SlotLayer], repeat: int = 1) -> None:
        """Append rows (a freshly prefilled cache, repeated `repeat` times) at the bottom of the batch."""
        n2 = layers[0].n
        if self.rows == 0:
            self.layers = [SlotLayer(*_padded(l.kbuf, l.vbuf, l.n, n2, repeat, n2 + _HEADROOM), n=n2)
                           for l in layers]
            self.pads = torch.zeros(repeat, dtype=torch.long)
            self.n = n2
            return
        n = max(self.n, n2)
        cap = n + _HEADROOM
        merged = []
        for old, new in zip(self.layers, layers):
            ka, va = _padded(old.kbuf, old.vbuf, old.n, n, 1, cap)
            kb, vb = _padded(new.kbuf, new.vbuf, new.n, n, repeat, cap)
            merged.append(SlotLayer(torch.cat([ka, kb]), torch.cat([va, vb]), n=n))
        self.pads = torch.cat([self.pads + (n - self.n), torch.full((repeat,), n - n2, dtype=torch.long)])
        self.layers, self.n = merged, n

    def keep(self, idx: list[int]) -> None:
        """Keep only rows `idx` (in that order), then drop padding columns no row needs."""
        if not idx:
            self.__init__()
            return
        if idx != list(range(self.rows)):
            t = torch.tensor(idx, dtype=torch.long)
            for l in self.layers:
                l.kbuf, l.vbuf = l.kbuf.index_select(0, t), l.vbuf.index_select(0, t)
                l._view()
            self.pads = self.pads.index_select(0, t)
        drop = int(self.pads.min())
        if drop > 0:
            for l in self.layers:
                l.kbuf, l.vbuf = l.kbuf[:, :, drop:], l.vbuf[:, :, drop:]
                l.n -= drop
                l._view()
            self.pads -= drop
            self.n -= drop


def _padded(k: torch.Tensor, v: torch.Tensor, n: int, to: int, repeat: int, cap: int):
    """Copies of the first n columns of k/v, right-aligned in zero buffers of capacity cap (n <= to <= cap)."""
    b, h, _, d = k.shape
    kk = k.new_zeros(b * repeat, h, cap, d)
    vv = v.new_zeros(b * repeat, h, cap, v.shape[-1])
    src_k, src_v = k[:, :, :n], v[:, :, :n]
    if repeat > 1:
        src_k, src_v = src_k.repeat_interleave(repeat, 0), src_v.repeat_interleave(repeat, 0)
    kk[:, :, to - n:to] = src_k
    vv[:, :, to - n:to] = src_v
    return kk, vv

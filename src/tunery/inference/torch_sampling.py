"""The torch engine's sampling: penalties, grammar masks, top-p, seeds, logprobs, stop strings and
finishing a sequence (a mixin of Engine, which owns the loop)."""

from __future__ import annotations

from tunery.inference.generation import Delta, Done, Finished, TokenLogprob, Usage
from tunery.inference.torch_models import Backend, _Seq


class Sampling:
    def _sample_and_emit(self, backend: Backend, logits, seqs: list[_Seq]) -> None:
        import torch

        for s in seqs:
            if s.req.gen.cancelled and not s.done:
                self._finish(backend, s, None)
        live = [i for i, s in enumerate(seqs) if not s.done]
        if not live:
            return
        want_lp = any(s.params.logprobs for s in seqs)
        lps = torch.log_softmax(logits, dim=-1) if want_lp else None
        plain = all(s.params.greedy and s.counts is None and s.matcher is None and not s.params.ignore_eos
                    for s in seqs)
        if plain:
            chosen = logits.argmax(dim=-1).tolist()
        else:
            x = logits.clone()
            grammar_rows = [i for i in live if seqs[i].matcher is not None]
            if grammar_rows:
                g = backend.grammar()
                mask = g.bitmask(len(seqs))
                for i in grammar_rows:
                    seqs[i].matcher.fill_next_token_bitmask(mask, i)
                g.apply(x, mask, grammar_rows)
            chosen = []
            for i, s in enumerate(seqs):
                if s.done:
                    chosen.append(-1)
                    continue
                row = x[i]
                p = s.params
                if s.counts is not None:
                    row = row - p.frequency_penalty * s.counts - p.presence_penalty * (s.counts > 0).float()
                if p.ignore_eos:
                    row = row.clone()
                    row[list(backend.eos_ids)] = float("-inf")
                if p.greedy:
                    chosen.append(int(row.argmax()))
                    continue
                probs = torch.softmax(row / p.temperature, dim=-1)
                if p.top_p < 1.0:
                    sp, si = torch.sort(probs, descending=True)
                    keep = (sp.cumsum(0) - sp) < p.top_p
                    keep[0] = True
                    sp = sp * keep
                    chosen.append(int(si[torch.multinomial(sp, 1, generator=s.rng)]))
                else:
                    chosen.append(int(torch.multinomial(probs, 1, generator=s.rng)))
        for i in live:
            s = seqs[i]
            tok = chosen[i]
            info = None
            if s.params.logprobs:
                info = self._logprob(backend, lps[i], tok, s.params.top_logprobs)
            self._accept(backend, s, tok, info)

    def _logprob(self, backend: Backend, lp_row, tok: int, k: int) -> TokenLogprob:
        import torch

        text, raw = backend.token_text(tok)
        top = []
        if k:
            vals, idx = torch.topk(lp_row, k)
            for v, t in zip(vals.tolist(), idx.tolist()):
                tt, tb = backend.token_text(t)
                top.append((tt, tb, max(float(v), -9999.0)))
        return TokenLogprob(text, raw, max(float(lp_row[tok]), -9999.0), top)

    def _accept(self, backend: Backend, s: _Seq, tok: int, info: TokenLogprob | None) -> None:
        p = s.params
        s.tokens.append(tok)
        s.req.completion_tokens += 1
        s.next_token = tok
        if s.counts is not None:
            s.counts[tok] += 1
        if s.matcher is not None and not s.matcher.is_terminated():
            s.matcher.accept_token(tok)
        if tok in backend.eos_ids and not p.ignore_eos:
            self._finish(backend, s, "stop")
            return
        if info is not None:
            s.pending_lp.append(info)
        text, stopped = s.stops.feed(s.detok.push(tok))
        if stopped:
            if text:
                self._emit_text(s, text)
            self._finish(backend, s, "stop", flush=False)
            return
        if text:
            self._emit_text(s, text)
        total = len(s.req.prompt_ids) + len(s.tokens)
        if (p.max_tokens is not None and len(s.tokens) >= p.max_tokens) or total >= backend.context_length:
            self._finish(backend, s, "length")

    def _emit_text(self, s: _Seq, text: str) -> None:
        lps = None
        if s.params.logprobs:
            lps, s.pending_lp = s.pending_lp, []
        s.req.gen._emit(Delta(s.index, text, lps))

    def _finish(self, backend: Backend, s: _Seq, reason: str | None, flush: bool = True) -> None:
        s.done = True
        if reason is not None:
            if flush:
                tail = s.stops.feed(s.detok.flush())[0] + s.stops.flush()
                if tail:
                    self._emit_text(s, tail)
            s.req.gen._emit(Finished(s.index, reason))
        req = s.req
        req.active -= 1
        if req.active == 0:
            self._unpin(backend, req)
            if reason is not None:
                req.gen._emit(Done(Usage(len(req.prompt_ids), req.completion_tokens)))

    def _unpin(self, backend: Backend, req: _Request) -> None:
        if req.adapter:
            with self._lock:
                entry = backend.adapters.get(req.adapter)
                if entry is not None:
                    entry.pins = max(0, entry.pins - 1)
                    doomed = entry.doomed and entry.pins == 0
                else:
                    doomed = False
            if doomed:
                self._evict_adapters(backend)



"""The static engine: decoding with fixed shapes, captured in CUDA graphs on a GPU.

On a GPU the plain loop (hf_loop.py) is bound by the host: a token is a few hundred kernel
launches from Python through the model's modules, mask and cache objects, with a small batch of
rows each. This engine runs the same function with every shape fixed for the whole completion:

  * each prompt is prefilled once, by the model's own forward, and its keys/values copied to its
    G rows of a static key/value buffer (rows x kv heads x positions x head dim per layer),
    allocated for the batch's shape and kept from call to call while the shape fits;
  * one decoding unit draws every row's token from the logits in hand (sampling.draw: the
    temperature, top-k/top-p and min_new_tokens ban inside, uniforms drawn up front per prompt as
    the plain loop draws them), records it with its log-prob (and entropy where asked), then runs
    the decoder over it as plain tensor ops (the lean step's function: one matmul per projection,
    fused RMS norms, rotary on queries and keys, attention over a window of the buffer under an
    additive mask) into the next logits. Counters (step, cache column, positions) live on the
    device, so a unit needs nothing from the host;
  * on CUDA each (rows, attention window) unit is captured once in a CUDA graph and replayed:
    one launch per token. The host reads the finished flags every `check_every` tokens: done when
    all are, and when at most half of the rows held are running, the running ones move to the
    front of the buffers and decode in the next smaller bucket of rows (a power of two);
  * the weights: the model's own tensors where they already have the decoding dtype (no copy;
    the optimizer updates them in place, which the graphs see), else a copy in that dtype (bf16
    autocast, `rollout_dtype bf16`), and LoRA layers merged into a copy, W + scale B A, both
    rewritten in place at each call (one pass over the weights; the graphs keep reading the same
    buffers).

Supported: the Llama-family decoders of `decoder.unsupported` (Llama, Mistral without a sliding window,
Qwen2, Qwen3) with plain or LoRA projections; any other model decodes through the plain loop,
said once. On a CPU the same units run eagerly (tests/test_static_engine.py checks them against
the plain loop token for token; tests/test_cuda_engine.py checks graph replay against eager
units on a GPU).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import Tensor

from ..algo.losses import entropy_from_logits
from ..data.prompts import positions
from .base import Capabilities, Generators, Rollout, SamplingSettings, Seeds, generators_of
from .decoder import Unsupported, Weights, linear, rms, unsupported
from .hf_loop import generate_with
from .sampling import draw, uniform_steps

# ------------------------------------------------------------------------------ state
@dataclass
class _Shape:
    rows: int         # rows the buffers hold (B x G at most)
    length: int       # positions per row (prompt + completion)
    steps: int        # completion tokens
    vocab: int


class _State:
    """The buffers a decoding unit reads and writes, allocated once for a shape and kept while
    later calls fit in it (so are the graphs captured over them). Row `rows` of the outputs is a
    sink for the padding rows of a bucket."""

    def __init__(self, shape: _Shape, layers: int, kv_heads: int, head_dim: int, dtype, device):
        N, S, T = shape.rows, shape.length, shape.steps
        self.shape = shape
        self.keys = [torch.zeros(N, kv_heads, S, head_dim, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros_like(k) for k in self.keys]
        self.mask = torch.zeros(N, 1, 1, S, dtype=dtype, device=device)     # additive: 0 or -inf
        self.logits = torch.zeros(N, shape.vocab, dtype=torch.float32, device=device)
        self.pos = torch.zeros(N, dtype=torch.long, device=device)          # its rotary position
        self.held = torch.zeros(N, dtype=torch.long, device=device)         # output row of each row held
        self.finished = torch.zeros(N, dtype=torch.bool, device=device)
        self.t = torch.zeros((), dtype=torch.long, device=device)           # completion step
        self.col = torch.zeros((), dtype=torch.long, device=device)         # buffer column it writes
        self.u = torch.zeros(T, N + 1, dtype=torch.float64, device=device)  # uniforms (step, output row)
        self.out_tokens = torch.zeros(N + 1, T, dtype=torch.long, device=device)
        self.out_logp = torch.zeros(N + 1, T, dtype=torch.float32, device=device)
        self.out_valid = torch.zeros(N + 1, T, dtype=torch.bool, device=device)
        self.out_entropy = torch.zeros(N + 1, T, dtype=torch.float32, device=device)

    def fits(self, shape: _Shape) -> bool:
        s = self.shape
        return shape.rows <= s.rows and shape.length <= s.length and shape.steps <= s.steps and shape.vocab == s.vocab


class StaticEngine:
    """The rollout engine of this module. `dtype`: the decoding dtype (None: bf16 under autocast,
    else the model's); `graphs`: capture units in CUDA graphs on CUDA (None: there, and not
    elsewhere); `check_every`: tokens between looks at the finished flags; `window`: the attention
    window grows in steps of this many positions (each a graph; None: 256 under graphs, else
    exactly the positions written so far); `buckets`: hold a power of two of rows from the start,
    the rest padding (None: under graphs, so that calls of any batch size share a few graphs);
    `log`: where the one line about a model this engine does not take goes."""

    capabilities = Capabilities(exact_logprobs=True, entropies=True)
    owns_weights = True           # it merges LoRA and casts to its dtype itself: hand it the actor

    def __init__(self, dtype: torch.dtype | None = None, graphs: bool | None = None, check_every: int = 8,
                 window: int | None = None, buckets: bool | None = None, log=None):
        self.dtype, self.graphs, self.check_every, self.window = dtype, graphs, check_every, window
        self.buckets = buckets
        self.log = log or (lambda line: print(line, file=sys.stderr))
        self.said: set[str] = set()
        self.model = self.weights = self.state = None
        self.version = None
        self.captured: dict = {}
        self.pool = None
        self.eos: dict = {}

    # ------------------------------------------------------------------ the seam
    def sync_weights(self, model, version=None) -> None:
        """Bring the decoding weights up to `model`'s: the copies (dtype, LoRA merged) rewritten, the
        tensors used in place left as they are. A no-op for a `version` already held; every call
        of `generate` syncs again (version None), since the weights may have changed since."""
        if version is not None and version == self.version and model is self.model:
            return
        dtype = self._dtype(model)
        if model is not self.model or self.weights is None or self.weights.dtype != dtype:
            self.weights = Weights(model, dtype)
            self.model, self.state, self.captured, self.pool = model, None, {}, None
        self.weights.refresh()
        self.version = version

    def generate(self, model, prompt_ids: Tensor, prompt_mask: Tensor, sampling: SamplingSettings,
                 generator: Seeds | Generators = None) -> Rollout:
        why = unsupported(model)
        if why is None:
            try:
                self.sync_weights(model)
            except Unsupported as e:
                why = str(e)
        if why is not None:
            if why not in self.said:
                self.said.add(why)
                self.log(f"note: the static decoding engine does not take this model ({why}); "
                         "it decodes through the model's forward")
            return generate_with(model, prompt_ids, prompt_mask, sampling, generator)
        return self._generate(model, prompt_ids, prompt_mask, sampling, generators_of(generator, prompt_ids.device))

    def _dtype(self, model) -> torch.dtype:
        if self.dtype is not None:
            return self.dtype
        device = next(model.parameters()).device.type
        if torch.is_autocast_enabled(device):
            return torch.get_autocast_dtype(device)
        return model.model.embed_tokens.weight.dtype

    # ------------------------------------------------------------------ one call
    @torch.no_grad()
    def _state_for(self, model, shape: "_Shape", device) -> "_State":
        """The kept buffers, grown to hold `shape` (positions rounded up to 64: aligned mask rows);
        growing them drops the captured units, which read the old ones."""
        if self.state is None or not self.state.fits(shape):
            cfg = model.config
            kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
            grown = shape if self.state is None else _Shape(max(shape.rows, self.state.shape.rows),
                                                            max(shape.length, self.state.shape.length),
                                                            max(shape.steps, self.state.shape.steps), shape.vocab)
            self.state, self.captured, self.pool = None, {}, None
            self.state = _State(grown, len(model.model.layers), kv_heads, model.model.layers[0].self_attn.head_dim,
                                self.weights.dtype, device)
        return self.state

    def _generate(self, model, prompt_ids, prompt_mask, sampling: SamplingSettings, generator) -> Rollout:
        device = prompt_ids.device
        B, P = prompt_ids.shape
        G, T = sampling.num_samples, sampling.max_new_tokens
        N = B * G
        out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions(prompt_mask),
                    use_cache=True, logits_to_keep=1)
        graphs = self.graphs if self.graphs is not None else device.type == "cuda"
        buckets = self.buckets if self.buckets is not None else graphs
        rows = 1 << (N - 1).bit_length() if buckets else N    # a power of two of rows (padded): few graphs
        st = self._state_for(model, _Shape(rows, -(-(P + T) // 64) * 64, T, out.logits.shape[-1]), device)
        S = st.shape.length
        for i, layer in enumerate(out.cache.layers):                   # each prompt's keys to its G rows
            for buf, src in ((st.keys[i], layer.keys), (st.values[i], layer.values)):
                buf[:N, :, :P] = src.to(buf.dtype).repeat_interleave(G, 0)
        del out.cache
        st.mask[:N].fill_(float("-inf"))
        st.mask[:N, ..., :P].masked_fill_(prompt_mask.bool().repeat_interleave(G, 0)[:, None, None], 0.0)
        st.logits[:N] = out.logits[:, -1].float().repeat_interleave(G, 0)
        st.pos[:N] = positions(prompt_mask)[:, -1].repeat_interleave(G, 0) + 1
        st.held[:N] = torch.arange(N, device=device)
        st.finished[:N] = False
        if rows > N:                   # padding rows: finished, writing to the sink row, seeing position 0
            st.held[N:rows] = st.shape.rows
            st.finished[N:rows] = True
            st.mask[N:rows].fill_(float("-inf"))[..., 0] = 0.0
            st.logits[N:rows] = 0.0
        st.t.zero_()
        st.col.fill_(P)
        st.out_valid.zero_()                 # a row shed when it finished is not written again: padding
        st.out_tokens.fill_(sampling.pad_id)
        st.out_logp.zero_()
        st.out_entropy.zero_()
        if not sampling.greedy:
            st.u[:T, :N] = uniform_steps(N, T, generator, device)   # as the plain loop draws them
        eos = self.eos.get((sampling.eos_ids, device))     # kept: a captured unit reads this very tensor
        if eos is None:
            eos = self.eos[(sampling.eos_ids, device)] = torch.tensor(list(sampling.eos_ids), device=device)
        with torch.autocast(device.type, enabled=False):       # the units hold their dtypes themselves
            t = self._decode(rows, P, T, S, sampling, eos, graphs)
        valid = st.out_valid[:N, :t]
        lengths = valid.sum(1)
        width = int(lengths.max()) if N else 0
        tokens = st.out_tokens[:N, :width].clone()
        mask = valid[:, :width].clone()
        ended = ((tokens[..., None] == eos).any(-1) & mask).any(1)
        return Rollout(prompt_ids=prompt_ids.repeat_interleave(G, 0), prompt_mask=prompt_mask.repeat_interleave(G, 0),
                       completion_ids=tokens, completion_mask=mask, logprobs=st.out_logp[:N, :width].clone(),
                       lengths=lengths, truncated=~ended,
                       entropy=st.out_entropy[:N, :width].clone() if sampling.record_entropy else None)

    def _decode(self, rows: int, P: int, T: int, S: int, sampling: SamplingSettings, eos: Tensor,
                graphs: bool) -> int:
        """The token loop over the units; returns the steps run. The finished flags are read every
        `check_every` tokens: done when all are, and the running rows shed into a smaller bucket
        when at most half of those held are running."""
        t = 0
        while t < T:
            step = self.window or (256 if graphs else 1)
            window = min(S, -(-(P + t + 1) // step) * step)
            self._unit(rows, window, sampling, eos, graphs)
            t += 1
            if t % self.check_every == 0 or t == T:
                finished = self.state.finished[:rows].cpu()
                if bool(finished.all()):
                    break
                rows = self._shed(rows, finished)
        return t

    def _shed(self, rows: int, finished: Tensor) -> int:
        """Move the running rows to the front and hold the next smaller bucket of rows, when at
        most half of those held are running. Returns the rows held."""
        running = (~finished).nonzero().squeeze(1)
        n = running.numel()
        bucket = 1 << max(n - 1, 0).bit_length()
        if bucket > rows // 2:
            return rows
        st = self.state
        idx = torch.cat([running, running[:1].expand(bucket - n)]).to(st.pos.device)   # padding: copies of a running row
        for bufs in (st.keys, st.values):
            for buf in bufs:
                buf[:bucket] = buf[idx]
        for buf in (st.mask, st.logits, st.pos, st.held, st.finished):
            buf[:bucket] = buf[idx]
        if bucket > n:                               # the copies write to the sink row and count as done
            st.held[n:bucket] = st.shape.rows
            st.finished[n:bucket] = True
        return bucket

    def _unit(self, rows: int, window: int, sampling: SamplingSettings, eos: Tensor, graphs: bool) -> None:
        if not graphs:
            return self._run_unit(rows, window, sampling, eos)
        key = (rows, window, sampling, eos.device)
        graph = self.captured.get(key)
        if graph is not None:
            graph.replay()
            return
        # first use of this shape: run the unit for real (it warms the kernels up), then capture
        # the next one, which runs at the next replay
        stream = torch.cuda.Stream(device=eos.device)
        stream.wait_stream(torch.cuda.current_stream(eos.device))
        with torch.cuda.stream(stream):
            self._run_unit(rows, window, sampling, eos)
        torch.cuda.current_stream(eos.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            self._run_unit(rows, window, sampling, eos)
        if self.pool is None:
            self.pool = graph.pool()
        self.captured[key] = graph

    def _run_unit(self, rows: int, window: int, sampling: SamplingSettings, eos: Tensor) -> None:
        """Draw each held row's token at the current step, record it, and run the decoder over it
        into the next logits. Fixed shapes, no host synchronisation."""
        st, R = self.state, rows
        held, done = st.held[:R], st.finished[:R]
        t = st.t.view(1)
        logits = st.logits[:R]
        u = st.u.index_select(0, t).index_select(1, held).view(R, 1) if not sampling.greedy else None
        ban = st.t < sampling.min_new_tokens if sampling.min_new_tokens else False
        tok, logp = draw(logits, u, sampling, eos, ban_eos=ban)
        tok = torch.where(done, sampling.pad_id, tok)
        cols = t.expand(R)
        st.out_tokens.index_put_((held, cols), tok)
        st.out_logp.index_put_((held, cols), torch.where(done, 0.0, logp))
        st.out_valid.index_put_((held, cols), ~done)
        if sampling.record_entropy:
            ent = entropy_from_logits(logits / sampling.temperature)
            st.out_entropy.index_put_((held, cols), torch.where(done, 0.0, ent))
        st.finished[:R] = done | (tok[:, None] == eos).any(-1)
        st.logits[:R] = self._forward(tok, R, window).float()
        st.pos[:R] += 1
        st.t += 1
        st.col += 1

    def _forward(self, tokens: Tensor, R: int, window: int) -> Tensor:
        """Logits (R, vocab) after feeding `tokens` (R,) at the rows' positions, writing their
        keys/values at the current column. The residual stream, norms and rotary in the
        embedding's dtype, the projections and attention in the decoding dtype (as under autocast)."""
        st, W, model = self.state, self.weights, self.model
        dec = model.model
        a0 = dec.layers[0].self_attn
        H, D = model.config.num_attention_heads, a0.head_dim
        Hk = st.keys[0].shape[1]
        half = D // 2
        low = W.dtype
        x = torch.nn.functional.embedding(tokens, W.embed.value)                # (R, hidden)
        cos, sin = dec.rotary_emb(x, st.pos[:R, None])                          # (R, 1, D)
        cos = cos.view(R, 1, 2, half)
        sin = torch.cat([-sin[..., :half], sin[..., half:]], -1).view(R, 1, 2, half)   # rotate_half's signs
        col = st.col.view(1)
        mask = st.mask[:R]
        mask.index_fill_(-1, col, 0.0)                                          # the new position is visible
        mask = mask[..., :window]
        for i, w in enumerate(W.layers):
            h = rms(x, w["input_norm"], w["eps"]).to(low)
            q = linear(h, w["q_proj"]).view(R, H, D).to(x.dtype)
            k = linear(h, w["k_proj"]).view(R, Hk, D).to(x.dtype)
            if "q_norm" in w:
                q, k = rms(q, w["q_norm"], w["qk_eps"]), rms(k, w["k_norm"], w["qk_eps"])
            qk = torch.cat([q, k], 1).view(R, H + Hk, 2, half)
            qk = (qk * cos + qk.flip(-2) * sin).view(R, H + Hk, D).to(low)     # rotary on queries and keys
            keys, values = st.keys[i][:R], st.values[i][:R]
            keys.index_copy_(2, col, qk[:, H:, None])
            values.index_copy_(2, col, linear(h, w["v_proj"]).view(R, Hk, 1, D))
            # grouped-query attention without repeating keys/values: each kv head's query heads
            # are its "query positions" (all at the one new position, so no causal mask among them)
            q = qk[:, :H].reshape(R, Hk, H // Hk, D)
            o = torch.nn.functional.scaled_dot_product_attention(
                q, keys[:, :, :window], values[:, :, :window], attn_mask=mask, scale=a0.scaling)   # (R, Hk, H/Hk, D)
            x = x + linear(o.reshape(R, H * D), w["o_proj"])
            h = rms(x, w["post_norm"], w["post_eps"]).to(low)
            mlp = dec.layers[i].mlp
            x = x + linear(mlp.act_fn(linear(h, w["gate_proj"])) * linear(h, w["up_proj"]), w["down_proj"])
        return linear(rms(x, W.norm, W.eps).to(low), W.head)

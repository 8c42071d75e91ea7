"""One rank's share of a Llama decoder: its weight slices, its KV heads, its part of every step.

Runs in rank processes only (imports torch). The forward follows Hugging
Face's ``modeling_llama.py`` operation for operation (RMSNorm in float32, RoPE
``rotate_half``, SiLU-gated MLP), so that one rank (``--tensor-parallel 1``)
reproduces transformers and N ranks differ from it only by the order of the
all-reduce sums.

A step flattens every sequence's new tokens into one ``[T, hidden]`` batch,
so each layer does one matmul per weight and two all-reduces for all of
them. Attention reads each sequence's cache: single-token sequences (decodes)
together, as one padded batch with a length mask; longer chunks (prefill) one
by one with a causal mask offset by what their slot already holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from joules.parallel.comm import Communicator
from joules.parallel.llama import LlamaShape
from joules.parallel.plan import ShardPlan
from joules.parallel.weights import SliceReader, TensorEntry, WeightIndex

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_FILE_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}

# What a sequence asks back (the wire format's ``mode``).
LOGITS_NONE, LOGITS_LAST, LOGITS_ALL = 0, 1, 2


@dataclass(frozen=True)
class StepPart:
    slot: int
    start: int
    n: int
    mode: int


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    """A writable numpy view of ``t``'s bytes (bfloat16 has no numpy dtype: seen as int16)."""
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()


class _Loader:
    """Fills torch tensors from slices; counts the bytes a rank holds."""

    def __init__(self, index: WeightIndex, dtype: torch.dtype) -> None:
        self.index, self.dtype, self.reader = index, dtype, SliceReader()
        self.bytes = 0

    def _fill(self, entry: TensorEntry, out: torch.Tensor, read: str, lo: int, hi: int) -> None:
        src = _FILE_DTYPES.get(entry.dtype)
        if src is None:
            raise ValueError(f"{entry.name}: dtype {entry.dtype} is not a float type")
        target = out if src == out.dtype else torch.empty(out.shape, dtype=src)
        if read == "rows":
            self.reader.read_rows(entry, lo, hi, _as_numpy(target))
        else:
            self.reader.read_cols(entry, lo, hi, _as_numpy(target))
        if target is not out:
            out.copy_(target)  # a slice at a time: the float32 copy of a bfloat16 file never doubles the model

    def rows(self, parts: list[tuple[str, int, int]], width: int) -> torch.Tensor:
        """Row ranges of several tensors stacked into one [sum of rows, width] tensor (fused q/k/v, gate/up)."""
        total = sum(hi - lo for _, lo, hi in parts)
        out = torch.empty((total, width) if width else (total,), dtype=self.dtype)
        at = 0
        for name, lo, hi in parts:
            self._fill(self.index[name], out[at : at + hi - lo], "rows", lo, hi)
            at += hi - lo
        self.bytes += out.numel() * out.element_size()
        return out

    def cols(self, name: str, lo: int, hi: int) -> torch.Tensor:
        entry = self.index[name]
        out = torch.empty((entry.shape[0], hi - lo), dtype=self.dtype)
        self._fill(entry, out, "cols", lo, hi)
        self.bytes += out.numel() * out.element_size()
        return out

    def close(self) -> None:
        self.reader.close()


def rope_inv_freq(shape: LlamaShape) -> tuple[torch.Tensor, float]:
    """RoPE inverse frequencies and the attention scaling, as transformers' ``ROPE_INIT_FUNCTIONS`` compute them."""
    d = shape.head_dim
    inv = 1.0 / (shape.rope_theta ** (torch.arange(0, d, 2, dtype=torch.int64).to(torch.float32) / d))
    rope = shape.rope
    kind = rope.get("rope_type", "default")
    if kind == "linear":
        inv = inv / float(rope["factor"])
    elif kind == "llama3":
        # Llama 3.1's frequency bands (transformers' _compute_llama3_parameters).
        factor, low, high = float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"])
        old = float(rope["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old / low, old / high
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        inv = torch.where(medium, smoothed, scaled)
    return inv, 1.0


def _zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zeroed KV cache that becomes resident only where it is used.

    On the CPU ``torch.zeros`` writes every page; numpy's zeros come from
    calloc, i.e. fresh anonymous pages the kernel zero-fills on first touch, so
    a rank's resident memory grows with the tokens actually cached (the cap
    still counts all of it: RLIMIT_DATA bounds what is reserved). Zeros, not
    garbage: a masked position still enters the attention product, and a NaN
    there would survive the mask.
    """
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    raw = np.zeros(shape, dtype=np.int16 if dtype == torch.bfloat16 else str(dtype).removeprefix("torch."))
    t = torch.from_numpy(raw)
    return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class LlamaShard:
    """This rank's weights and KV cache; ``step`` runs its part of one forward."""

    def __init__(
        self,
        *,
        shape: LlamaShape,
        plan: ShardPlan,
        rank: int,
        index: WeightIndex,
        comm: Communicator,
        dtype: str,
        num_slots: int,
        max_model_len: int,
        device: torch.device,
    ) -> None:
        self.shape, self.plan, self.rank, self.comm, self.device = shape, plan, rank, comm, device
        self.shard = sh = plan.shards[rank]
        self.dtype = TORCH_DTYPES[dtype]
        s, d, h = shape, shape.head_dim, shape.hidden_size
        loader = _Loader(index, self.dtype)
        try:
            self.qkv, self.o, self.gate_up, self.down, self.ln_in, self.ln_post = [], [], [], [], [], []
            (q0, q1), (k0, k1), (f0, f1) = sh.heads, sh.kv_heads, sh.ffn
            for i in range(s.num_layers):
                attn, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
                self.qkv.append(
                    loader.rows(
                        [
                            (f"{attn}.q_proj.weight", q0 * d, q1 * d),
                            (f"{attn}.k_proj.weight", k0 * d, k1 * d),
                            (f"{attn}.v_proj.weight", k0 * d, k1 * d),
                        ],
                        h,
                    )
                )
                self.o.append(loader.cols(f"{attn}.o_proj.weight", q0 * d, q1 * d))
                gate_up = [(f"{mlp}.gate_proj.weight", f0, f1), (f"{mlp}.up_proj.weight", f0, f1)]
                self.gate_up.append(loader.rows(gate_up, h))
                self.down.append(loader.cols(f"{mlp}.down_proj.weight", f0, f1))
                self.ln_in.append(loader.rows([(f"model.layers.{i}.input_layernorm.weight", 0, h)], 0))
                self.ln_post.append(loader.rows([(f"model.layers.{i}.post_attention_layernorm.weight", 0, h)], 0))
            self.norm = loader.rows([("model.norm.weight", 0, h)], 0)
            v0, v1 = sh.vocab
            self.embed = loader.rows([("model.embed_tokens.weight", v0, v1)], h)
            self.lm_head: torch.Tensor | None = None
            if sh.lm_head:
                tied = s.tie_word_embeddings  # HF ignores a saved lm_head.weight when tied; so do we
                self.lm_head = self.embed if tied else loader.rows([("lm_head.weight", v0, v1)], h)
            self.weight_bytes = loader.bytes
        finally:
            loader.close()
        kv = (s.num_layers, num_slots, sh.num_kv_heads, max_model_len, d)
        self.k_cache, self.v_cache = _zeros(kv, self.dtype, device), _zeros(kv, self.dtype, device)
        self.kv_bytes = 2 * self.k_cache.numel() * self.k_cache.element_size()
        if device.type != "cpu":
            for name in ("qkv", "o", "gate_up", "down", "ln_in", "ln_post"):
                setattr(self, name, [w.to(device) for w in getattr(self, name)])
            self.norm, self.embed = self.norm.to(device), self.embed.to(device)
            if self.lm_head is not None:
                self.lm_head = self.embed if self.lm_head is self.embed else self.lm_head.to(device)
        inv, self.rope_scale = rope_inv_freq(s)
        self.inv_freq = inv.to(device)
        self.num_slots, self.max_model_len = num_slots, max_model_len

    # -- pieces of the forward ------------------------------------------------------------------------

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.shape.rms_norm_eps)
        return w * x32.to(x.dtype)

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        v0, v1 = self.shard.vocab
        if v1 - v0 == self.shape.vocab_size:
            return self.embed[tokens]
        local = tokens - v0
        outside = (local < 0) | (local >= v1 - v0)
        x = self.embed[local.masked_fill(outside, 0)]
        x.masked_fill_(outside[:, None], 0.0)
        self.comm.all_reduce(x)  # exactly one rank holds each row: the sum is that row
        return x

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.to(torch.float32)[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos() * self.rope_scale, emb.sin() * self.rope_scale
        return cos.to(self.dtype)[:, None, :], sin.to(self.dtype)[:, None, :]

    # -- one step -------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, parts: list[StepPart], tokens: torch.Tensor) -> torch.Tensor | None:
        """Run one forward over every part; rank 0 gets the requested logits rows [R, vocab] (float32)."""
        s, sh, d = self.shape, self.shard, self.shape.head_dim
        dev = self.device
        tokens = tokens.to(dev)
        t = tokens.numel()
        starts = torch.tensor([p.start for p in parts], dtype=torch.int64)
        counts = torch.tensor([p.n for p in parts], dtype=torch.int64)
        offsets = torch.cumsum(counts, 0) - counts
        row_part = torch.repeat_interleave(torch.arange(len(parts)), counts)
        positions = (starts[row_part] + torch.arange(t) - offsets[row_part]).to(dev)
        slot_of_row = torch.tensor([p.slot for p in parts], dtype=torch.int64)[row_part].to(dev)
        decode = [i for i, p in enumerate(parts) if p.n == 1]
        chunks = [i for i, p in enumerate(parts) if p.n > 1]
        dec_rows = offsets[decode].to(dev)
        dec_slots = torch.tensor([parts[i].slot for i in decode], dtype=torch.int64, device=dev)
        dec_len = max((parts[i].start + 1 for i in decode), default=0)
        dec_mask = (torch.arange(dec_len, device=dev)[None, :] <= starts[decode].to(dev)[:, None])[:, None, None, :]
        chunk_masks = {
            i: None
            if parts[i].start == 0
            else (
                torch.arange(parts[i].start + parts[i].n, device=dev)[None, :]
                <= (parts[i].start + torch.arange(parts[i].n, device=dev))[:, None]
            )
            for i in chunks
        }

        x = self._embed(tokens)
        cos, sin = self._rope(positions)
        nq, nkv = sh.num_heads, sh.num_kv_heads
        for layer in range(s.num_layers):
            h = self._rms(x, self.ln_in[layer])
            qkv = h @ self.qkv[layer].T
            q = qkv[:, : nq * d].view(t, nq, d)
            k = qkv[:, nq * d : (nq + nkv) * d].view(t, nkv, d)
            v = qkv[:, (nq + nkv) * d :].view(t, nkv, d)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            kc, vc = self.k_cache[layer], self.v_cache[layer]
            kc[slot_of_row, :, positions] = k
            vc[slot_of_row, :, positions] = v
            attn = torch.empty((t, nq * d), dtype=x.dtype, device=dev)
            if decode:
                keys = kc[:, :, :dec_len].index_select(0, dec_slots)
                values = vc[:, :, :dec_len].index_select(0, dec_slots)
                out = F.scaled_dot_product_attention(
                    q[dec_rows].unsqueeze(2), keys, values, attn_mask=dec_mask, enable_gqa=True
                )
                attn[dec_rows] = out.reshape(len(decode), nq * d)
            for i in chunks:
                p, r0 = parts[i], int(offsets[i])
                end = p.start + p.n
                mask = chunk_masks[i]
                out = F.scaled_dot_product_attention(
                    q[r0 : r0 + p.n].transpose(0, 1).unsqueeze(0),
                    kc[p.slot, :, :end].unsqueeze(0),
                    vc[p.slot, :, :end].unsqueeze(0),
                    attn_mask=mask,
                    is_causal=mask is None,
                    enable_gqa=True,
                )
                attn[r0 : r0 + p.n] = out[0].transpose(0, 1).reshape(p.n, nq * d)
            o = attn @ self.o[layer].T
            self.comm.all_reduce(o)
            x += o
            h = self._rms(x, self.ln_post[layer])
            gu = h @ self.gate_up[layer].T
            f = sh.ffn_size
            m = (F.silu(gu[:, :f]) * gu[:, f:]) @ self.down[layer].T
            self.comm.all_reduce(m)
            x += m
        rows = self._logit_rows(parts, offsets)
        if not rows:
            return None
        hs = self._rms(x[torch.tensor(rows, device=dev)], self.norm)
        return self._logits(hs)

    @staticmethod
    def _logit_rows(parts: list[StepPart], offsets: torch.Tensor) -> list[int]:
        rows: list[int] = []
        for i, p in enumerate(parts):
            r0 = int(offsets[i])
            if p.mode == LOGITS_LAST:
                rows.append(r0 + p.n - 1)
            elif p.mode == LOGITS_ALL:
                rows.extend(range(r0, r0 + p.n))
        return rows

    def _logits(self, hs: torch.Tensor) -> torch.Tensor | None:
        if not self.plan.vocab_parallel or self.plan.world_size == 1:
            if self.lm_head is None:
                return None  # replicated head: only rank 0 computes logits
            return (hs @ self.lm_head.T).to(torch.float32).cpu()
        assert self.lm_head is not None  # every rank holds its vocabulary rows when vocab-parallel
        local = (hs @ self.lm_head.T).to(torch.float32)
        chunk = self.plan.vocab_chunk
        if local.shape[1] < chunk:
            local = F.pad(local, (0, chunk - local.shape[1]))
        parts = self.comm.gather(local.cpu() if self.device.type == "cpu" else local)
        if parts is None:
            return None
        return torch.cat([p[:, : sh.vocab_size].cpu() for p, sh in zip(parts, self.plan.shards, strict=True)], dim=1)

    @torch.no_grad()
    def copy_slot(self, src: int, dst: int, length: int) -> None:
        self.k_cache[:, dst, :, :length] = self.k_cache[:, src, :, :length]
        self.v_cache[:, dst, :, :length] = self.v_cache[:, src, :, :length]

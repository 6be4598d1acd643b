"""A tiny causal GPT (nanoGPT-style): pre-LayerNorm blocks, fused
scaled_dot_product_attention, tied input/output embeddings.

Prompts are left-padded (see tokenizer.pad_left), so the model takes an
`attention_mask` [B, T] (1 = real token). Positions count real tokens only
(pos = cumsum(mask) - 1), so a prompt gets the same positions however much
padding sits in front of it, and padded keys are never attended to.

Two paths give the same logits (tested):
  forward(ids, attention_mask)                  full recomputation, [B, T, V]
  forward(ids_step, ..., cache=KVCache)         incremental decoding, one or more new tokens
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from .tokenizer import VOCAB_SIZE

CHECKPOINT_FORMAT = "minirlvr-checkpoint-v1"


@dataclass
class GPTConfig:
    vocab_size: int = VOCAB_SIZE  # characters + PAD/BOS/EOS
    context: int = 96             # max tokens (prompt + completion)
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    dropout: float = 0.0          # RL wants deterministic log-probs: keep 0 unless pre-training needs it

    def __post_init__(self):
        for f in fields(self):
            if f.name != "dropout" and (not isinstance(getattr(self, f.name), int) or getattr(self, f.name) <= 0):
                raise ValueError(f"GPTConfig.{f.name} must be a positive int, got {getattr(self, f.name)!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")


class KVCache:
    """Per-layer keys/values [B, H, length, Dh], filled left to right, plus the key mask.

    `length` (default: the model context) is the most tokens the cache will hold. The buffers are
    allocated uninitialised: attention only ever reads positions [0, cache.length), and each of those
    is written before it is read (zero-filling the full-context buffers took ~30% of a rollout)."""

    def __init__(self, cfg: GPTConfig, batch: int, device, dtype, length: int | None = None):
        length = cfg.context if length is None else length
        if not 1 <= length <= cfg.context:
            raise ValueError(f"cache length must be in [1, {cfg.context}] (the model context), got {length}")
        shape = (batch, cfg.n_heads, length, cfg.d_model // cfg.n_heads)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.key_mask = torch.zeros(batch, length, dtype=torch.bool, device=device)
        self.n_real = torch.zeros(batch, dtype=torch.long, device=device)  # real tokens seen per row
        self.length = 0

    def index_select(self, rows: torch.Tensor) -> "KVCache":
        """A new cache whose row i is this cache's row rows[i] (differentiable). Used to compute a prompt
        once and continue it in several rows (the G samples of a group). Positions not yet written are
        copied as they are: they are never read before being written."""
        out = object.__new__(KVCache)
        out.k = [k.index_select(0, rows) for k in self.k]
        out.v = [v.index_select(0, rows) for v in self.v]
        out.key_mask, out.n_real = self.key_mask.index_select(0, rows), self.n_real.index_select(0, rows)
        out.length = self.length
        return out


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.fc_out = nn.Linear(4 * cfg.d_model, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x, attn_mask, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        if cache is not None:  # write the new keys/values, attend over everything so far
            start = cache.length
            cache.k[layer][:, :, start:start + T] = k
            cache.v[layer][:, :, start:start + T] = v
            k, v = cache.k[layer][:, :, :start + T], cache.v[layer][:, :, :start + T]
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=drop)
        x = x + F.dropout(self.proj(y.transpose(1, 2).reshape(B, T, C)), drop, self.training)
        x = x + F.dropout(self.fc_out(F.gelu(self.fc(self.ln2(x)))), drop, self.training)
        return x


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith(("proj.weight", "fc_out.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cache: KVCache | None = None, output_hidden: bool = False):
        """ids [B, T] -> logits [B, T, V] (and, if output_hidden, a list of n_layers [B, T, d]).

        attention_mask [B, T]: 1 on real tokens (default all ones). With a
        cache, `ids` are the next T tokens and the mask covers only them.
        """
        B, T = ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(ids)
        if attention_mask.shape != ids.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match ids {tuple(ids.shape)}")
        real = attention_mask.bool()
        past = cache.length if cache is not None else 0
        if past + T > self.cfg.context:
            raise ValueError(f"sequence of {past + T} tokens exceeds the model context of {self.cfg.context}")
        if cache is not None and past + T > cache.key_mask.shape[1]:
            raise ValueError(f"sequence of {past + T} tokens exceeds the cache length of {cache.key_mask.shape[1]}")
        offset = cache.n_real.unsqueeze(1) if cache is not None else 0
        pos = (offset + real.long().cumsum(1) - 1).clamp(min=0)

        # key i is visible to query j iff i <= j (causal) and key i is real; a
        # padded query may see itself so that no softmax row is empty
        q_idx = torch.arange(past, past + T, device=ids.device)
        k_idx = torch.arange(past + T, device=ids.device)
        if cache is not None:
            cache.key_mask[:, past:past + T] = real
            key_real = cache.key_mask[:, :past + T]
        else:
            key_real = real
        visible = (k_idx[None, :] <= q_idx[:, None])[None] & key_real[:, None, :]
        visible = visible | (k_idx[None, None, :] == q_idx[None, :, None])
        attn_mask = visible[:, None]  # [B, 1, T, S]

        x = self.tok_emb(ids) + self.pos_emb(pos)
        hidden = []
        for layer, block in enumerate(self.blocks):
            x = block(x, attn_mask, cache, layer)
            if output_hidden:
                hidden.append(x)
        if cache is not None:
            cache.length += T
            cache.n_real += real.long().sum(1)
        logits = self.ln_f(x) @ self.tok_emb.weight.t()  # tied embeddings
        return (logits, hidden) if output_hidden else logits

    def new_cache(self, batch: int, length: int | None = None) -> KVCache:
        """A cache for `batch` rows of at most `length` tokens (default: the model context)."""
        p = next(self.parameters())
        return KVCache(self.cfg, batch, p.device, p.dtype, length)


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(path: str, model: GPT, meta: dict | None = None, half: bool = False) -> None:
    """Save config + weights (+ a small JSON-like `meta` dict). `half` stores fp16 weights
    (used for the checkpoints shipped in toy_tasks, to keep them small)."""
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "config": asdict(model.cfg), "state_dict": state,
                "meta": meta or {}}, path)


def load_checkpoint(path: str, device: str | torch.device = "cpu") -> tuple[GPT, dict]:
    """Load a checkpoint written by save_checkpoint (with weights_only=True).
    Returns (model in float32 eval mode, meta). A missing, corrupt or foreign
    file raises a ValueError / FileNotFoundError that says what is wrong."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged zip / pickle
        raise ValueError(f"checkpoint {path!r} could not be read (corrupt or not a torch file): {e}") from None
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path!r} is not a minirlvr checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    try:
        cfg = GPTConfig(**blob["config"])
    except (TypeError, KeyError, ValueError) as e:
        raise ValueError(f"checkpoint {path!r} has an invalid model config: {e}") from None
    model = GPT(cfg)
    state = blob.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {path!r} has no valid state_dict (expected a dict of tensors)")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"checkpoint {path!r} weights do not fit its config: {str(e).splitlines()[0]}") from None
    meta = blob.get("meta") or {}
    if not isinstance(meta, dict):
        raise ValueError(f"checkpoint {path!r} has a meta entry of type {type(meta).__name__}, expected a dict")
    return model.to(device).eval(), dict(meta)

"""Iterative masked decoding (MaskGIT-style reverse diffusion), shared by stage 1 and S2A.

One decoder, `masked_decode`, follows docs/reference.md §2.4 step for step. Its switches:

- `coupled=True` couples the rows exactly as the reference does (docs/reference.md Q6): one noise
  source draws (b, t, v) tensors for the whole batch, the remask count comes from row 0 and the CFG
  rescale std (`cfg_combine(..., lengths=None)`) is one scalar over the batch. All rows have one
  length. This is what the models' `reverse_diffusion` does and what the parity fixtures check.
- `coupled=False` decodes every row as if it were alone: rows have their own lengths T_r (padding
  frames are never masked), their own noise sources (drawn (1, T_r[, v]) and only while the row still
  decodes), their own remask count floor(sin(π t_{i+1} / 2) · T_r) and early stop (docs/reference.md
  Q7), and `cfg_combine(..., lengths)` takes the std per row over its valid (T_r, d) block. A batch
  then gives every row what a batch of one gives it, and a batch of one equals `coupled=True`.
- `fast=True` changes the arithmetic, not the maths. Everything it changes lives in this module:
  Gumbel-max and the confidence softmax over the k kept logits only (`sample_tokens`), a vectorised
  per-row std (`cfg_combine`), the conditional and unconditional estimator passes as one forward of
  2b rows and bf16 autocast (`guided_passes`, `autocast`). `fast` may also be a `FastDecoding`,
  which picks the precision (bf16 on CUDA by default, bf16 on a CPU when asked) and static shape
  buckets: the 2b-row pass padded to a bucket length and run with a key mask (padding never
  attended, so the tokens are those of the unbucketed pass), captured as a CUDA graph per shape on
  CUDA and replayed at every later step and request of that shape (`static_pass`).

The random draws come from an injectable `UniformNoise`, so recorded draws can be replayed exactly
(`ReplayNoise`).

Axes: b batch, t (or n, padded) target frames, l packed sequence, d hidden size, v vocabulary, k top-k.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DecodeConfig:
    """Sampling settings of one decoding call (one layer for S2A)."""

    n_timesteps: int
    temp: float
    filter_thres: float
    cfg: float
    rescale_cfg: float


PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class FastDecoding:
    """Fast mode's options; `fast=True` means `FastDecoding()`.

    precision: "auto" = bf16 autocast on CUDA, fp32 elsewhere; "bf16" = bf16 autocast on any device
        (on a CPU with bf16 matrix units, AVX512-BF16 / AMX, the fastest path: benchmarks/README.md);
        "fp32" = no autocast. The token agreement with faithful mode is below 1 under bf16.
    buckets: static lengths for the estimator pass: its 2b rows are padded to the smallest bucket that
        holds them (beyond the last, a multiple of the last) and run with a key mask, so that requests
        of different lengths share shapes. None: no padding (the pass runs packed).
    cuda_graphs: on CUDA, capture each bucketed pass shape once as a CUDA graph and replay it (needs
        buckets; ignored on a CPU).
    """

    precision: str = "auto"
    buckets: tuple[int, ...] | None = None
    cuda_graphs: bool = True

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.buckets is not None:
            object.__setattr__(self, "buckets", tuple(sorted(int(x) for x in self.buckets)))
            if not self.buckets or self.buckets[0] < 1:
                raise ValueError(f"buckets must be positive lengths, got {self.buckets}")


Fast = bool | FastDecoding


def fast_options(fast: Fast) -> FastDecoding | None:
    """None for faithful decoding, else the fast mode's options."""
    if isinstance(fast, FastDecoding):
        return fast
    return FastDecoding() if fast else None


def bucket_length(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n; beyond the last bucket, n rounded up to a multiple of it."""
    for size in buckets:
        if size >= n:
            return size
    return -(-n // buckets[-1]) * buckets[-1]


class UniformNoise:
    """Source of U(0, 1) draws: torch's RNG (optionally a given generator), in the reference's order."""

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    def __call__(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        gen_device = self.generator.device if self.generator is not None else torch.device("cpu")
        # Draw where the generator lives (CPU by default, as the reference does) and move.
        return torch.rand(shape, generator=self.generator, device=gen_device).to(device)


class ReplayNoise(UniformNoise):
    """Replays recorded uniform tensors in call order; a shape mismatch or a missing draw is an error."""

    def __init__(self, draws: Iterable[torch.Tensor]):
        super().__init__()
        self.draws = list(draws)
        self.used = 0

    def __call__(self, shape, device):
        if self.used >= len(self.draws):
            raise RuntimeError(f"replay noise exhausted after {self.used} draws (next shape {tuple(shape)})")
        u = self.draws[self.used]
        if tuple(u.shape) != tuple(shape):
            raise RuntimeError(f"replay draw {self.used} has shape {tuple(u.shape)}, decoder asked for {tuple(shape)}")
        self.used += 1
        return u.to(device)


Noise = UniformNoise | Sequence[UniformNoise]
LogitsFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def gumbel(u: torch.Tensor) -> torch.Tensor:
    """Gumbel noise from uniforms, with the reference's epsilons."""
    return -torch.log(-torch.log(u + 1e-10) + 1e-10)


def top_k_filter(logits: torch.Tensor, filter_thres: float) -> torch.Tensor:
    """Keep the k = ceil((1 - filter_thres) * v) largest logits, set the rest to -inf."""
    k = math.ceil((1 - filter_thres) * logits.shape[-1])
    values, indices = logits.topk(k, dim=-1)
    return torch.full_like(logits, float("-inf")).scatter_(-1, indices, values)


def valid_mask(lengths: Sequence[int], n: int, device) -> torch.Tensor:
    """(b, n) bool: frame j of row r is one of its T_r frames."""
    return torch.arange(n, device=device)[None, :] < torch.as_tensor(list(lengths), device=device)[:, None]


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, cfg: float, rescale_cfg: float,
                lengths: Sequence[int] | None = None, fast: bool = False) -> torch.Tensor:
    """Classifier-free guidance on hidden states with std rescale:
    g = c + cfg (c - u); g' = g std(c) / std(g); out = rescale g' + (1 - rescale) g.

    lengths=None: std is torch's unbiased std over the whole (b, t, d) tensor, one scalar for the batch
    (docs/reference.md Q6). Otherwise per row over its valid (T_r, d) block (frames beyond T_r keep g):
    a row loop with torch's std (bit-equal to the row alone), or a vectorised masked std when fast.
    """
    g = cond + cfg * (cond - uncond)
    if lengths is None:
        return rescale_cfg * (g * cond.std() / g.std()) + (1 - rescale_cfg) * g
    if fast:
        w = valid_mask(lengths, cond.shape[1], cond.device)[..., None].to(torch.float32)
        cnt = w.sum(dim=(1, 2)) * cond.shape[2]

        def std(x):
            x = x.float()
            mean = (x * w).sum(dim=(1, 2)) / cnt
            return ((((x - mean[:, None, None]) * w) ** 2).sum(dim=(1, 2)) / (cnt - 1)).sqrt()

        scale = (std(cond) / std(g)).to(g.dtype)[:, None, None]
        return rescale_cfg * (g * scale) + (1 - rescale_cfg) * g
    out = g.clone()
    for r, n in enumerate(lengths):
        c, gr = cond[r:r + 1, :n], g[r:r + 1, :n]
        out[r:r + 1, :n] = rescale_cfg * (gr * c.std() / gr.std()) + (1 - rescale_cfg) * gr
    return out


def autocast(device: torch.device, fast: Fast):
    """bf16 autocast for the estimator in fast mode (on CUDA, or anywhere with precision="bf16"); a
    no-op otherwise. Under CUDA graphs the weight-cast cache is off (casts are part of the graph)."""
    opts = fast_options(fast)
    if opts is None or opts.precision == "fp32" or (opts.precision == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    graphs = device.type == "cuda" and opts.buckets is not None and opts.cuda_graphs
    return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=not graphs)


class _CapturedPass:
    """One estimator pass captured as a CUDA graph: static input buffers, replayed with new inputs."""

    def __init__(self, fn: Callable, args: Sequence[torch.Tensor]):
        self.args = [a.clone() for a in args]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn(*self.args)  # warm-up outside the capture (lazy kernels, cuBLAS workspace)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = fn(*self.args)

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        for buf, a in zip(self.args, args):
            buf.copy_(a)
        self.graph.replay()
        return self.out.clone()  # the next replay overwrites self.out


# estimator -> (address of its first weight when captured, {shape key: captured pass})
_GRAPHS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[int, dict]]" = weakref.WeakKeyDictionary()


def static_pass(estimator, x: torch.Tensor, t: torch.Tensor, x_mask: torch.Tensor, cuda_graphs: bool) -> torch.Tensor:
    """The estimator on a bucket-padded batch: x (b, L, d), t (b,), x_mask (b, L) -> (b, L, d).

    Positions 0..L-1, a boolean key mask (padded keys never attended; padded query rows are computed
    and ignored by the caller), no host synchronisation: on CUDA with cuda_graphs the pass is captured
    once per (shape, dtype, autocast) and replayed.
    """
    keys = x_mask.bool()[:, None, None, :]  # (b, 1, 1, L)

    def run(x, t, keys):
        return estimator.stack(x, estimator.time_condition(t, x.dtype), torch.arange(x.shape[1], device=x.device), keys)

    if not (cuda_graphs and x.is_cuda):
        return run(x, t, keys)
    # a graph reads the weights at their addresses: a model moved or re-allocated since gets new graphs
    weights = next(estimator.parameters()).data_ptr()
    if estimator not in _GRAPHS or _GRAPHS[estimator][0] != weights:
        _GRAPHS[estimator] = (weights, {})
    graphs = _GRAPHS[estimator][1]
    key = (tuple(x.shape), x.dtype, torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
    if key not in graphs:
        graphs[key] = _CapturedPass(run, (x, t, keys))
    return graphs[key](x, t, keys)


def guided_passes(estimator: Callable, x_c: torch.Tensor, m_c: torch.Tensor, x_u: torch.Tensor | None,
                  m_u: torch.Tensor | None, t_i: float, fast: Fast) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The conditional and (when x_u is given) unconditional estimator passes of one step.

    estimator(x (b, l, d), t (b,), x_mask (b, l), packing=...) -> (b, l, d): a LlamaNAR. Faithful: two
    calls, as the reference. Fast: one call on the 2b rows padded to a common length, under `autocast`:
    run packed (`packing="compute"`: the padding of the shorter unconditional rows is not computed),
    or with buckets padded to the bucket length and run by `static_pass`.
    """
    b = x_c.shape[0]
    t = torch.full((b,), t_i, dtype=torch.float32, device=x_c.device)
    opts = fast_options(fast)
    with autocast(x_c.device, fast):
        if opts is None:
            return estimator(x_c, t, m_c), None if x_u is None else estimator(x_u, t, m_u)
        parts = [(x_c, m_c)] + ([] if x_u is None else [(x_u, m_u)])
        l = max(x.shape[1] for x, _ in parts)
        if opts.buckets is not None:
            l = bucket_length(l, opts.buckets)
        x = torch.cat([F.pad(x, (0, 0, 0, l - x.shape[1])) for x, _ in parts])
        m = torch.cat([F.pad(m, (0, l - m.shape[1])) for _, m in parts])
        ts = t.repeat(len(parts))
        if opts.buckets is not None:
            e = static_pass(estimator, x, ts, m, opts.cuda_graphs)
        else:
            e = estimator(x, ts, m, packing="compute") if x_u is not None else estimator(x, ts, m)
        return e[:b, : x_c.shape[1]], None if x_u is None else e[b:, : x_u.shape[1]]


def sample_tokens(logits: torch.Tensor, filter_thres: float, tau: float, u: torch.Tensor | None,
                  fast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k filter, then Gumbel-max at temperature tau (argmax when u is None).

    Returns (sampled ids (b, t), softmax of the filtered logits at the sampled ids (b, t)). Fast: the
    same over the k kept logits only (the other v - k are -inf and can neither win nor weigh).
    """
    if fast:
        top, idx = logits.topk(math.ceil((1 - filter_thres) * logits.shape[-1]), dim=-1)  # (b, t, k)
        if u is None:
            choice = top.argmax(dim=-1, keepdim=True)
        else:
            choice = (top / max(tau, 1e-3) + gumbel(u.gather(-1, idx))).argmax(dim=-1, keepdim=True)
        return idx.gather(-1, choice)[..., 0], F.softmax(top, dim=-1).gather(-1, choice)[..., 0]
    logits = top_k_filter(logits, filter_thres)
    sampled = logits.argmax(dim=-1) if u is None else (logits / max(tau, 1e-3) + gumbel(u)).argmax(dim=-1)
    return sampled, F.softmax(logits, dim=-1).gather(-1, sampled[..., None])[..., 0]


def _draw(noise: Noise, lengths: Sequence[int], active: torch.Tensor, last_dim: int | None, coupled: bool,
          device: torch.device) -> torch.Tensor:
    """(b, n[, last_dim]) uniforms. Coupled: one draw of that shape. Per row: row r's own (1, T_r[, v])
    draw in its first T_r frames, for rows still decoding only (the rest is unused filler)."""
    b, n = len(lengths), max(lengths)
    shape = (b, n) if last_dim is None else (b, n, last_dim)
    if coupled:
        return noise(shape, device)
    u = torch.full(shape, 0.5, device=device)
    for r in active.nonzero()[:, 0].tolist():
        u[r, : lengths[r]] = noise[r]((1, lengths[r]) if last_dim is None else (1, lengths[r], last_dim), device)[0]
    return u


def masked_decode(logits_fn: LogitsFn, lengths: Sequence[int], n_timesteps: int, *, temp: float, filter_thres: float,
                  noise: Noise | None, device: torch.device, coupled: bool, fast: Fast = False,
                  preschedule_mask_indices: torch.Tensor | None = None) -> torch.Tensor:
    """Decode T_r tokens per row from an all-masked start in `n_timesteps` steps (docs/reference.md §2.4).

    Args:
        logits_fn: (ids (b, n) long, is_masked (b, n) bool, time t_i) -> logits (b, n, v), CFG applied.
            Masked positions hold id 0; padding frames (j >= T_r) are never masked, their logits unused.
        lengths: T_r per row (>= 1); all equal when coupled.
        noise: coupled: one UniformNoise (default torch's RNG); per row: one UniformNoise per row.
        coupled: the reference's batch coupling (see the module docstring) or every row on its own.
        fast: top-k-only sampling (same maths, cheaper).
        preschedule_mask_indices: (t,) fixed remask order, its first n_next entries remasked (coupled).
    Returns:
        ids (b, n); frames beyond T_r are 0.
    """
    lengths = [int(x) for x in lengths]
    b, n, steps = len(lengths), max(lengths), int(n_timesteps)
    if min(lengths) < 1:
        raise ValueError(f"every row needs at least one target frame, got lengths {lengths}")
    if coupled:
        if len(set(lengths)) != 1:
            raise ValueError(f"coupled decoding needs rows of one length, got {lengths}")
        noise = noise if noise is not None else UniformNoise()
    else:
        if noise is None or isinstance(noise, UniformNoise) or len(noise) != b:
            raise ValueError(f"per-row decoding needs one noise source per row ({b} rows)")
        if preschedule_mask_indices is not None:
            raise ValueError("preschedule_mask_indices needs coupled decoding (one order for rows of one length)")
    lens = torch.tensor(lengths, device=device)
    valid = valid_mask(lengths, n, device)
    ids = torch.zeros(b, n, dtype=torch.long, device=device)
    is_masked = valid.clone()
    active = torch.ones(b, dtype=torch.bool, device=device)  # rows still decoding
    for i in range(steps):
        t = 1 - i * (1 / steps)
        logits = logits_fn(ids, is_masked, t).float()
        last = i == steps - 1 and steps > 1
        tau = 0.2 if steps == 1 else temp * t
        u = None if last else _draw(noise, lengths, active, logits.shape[-1], coupled, device)
        sampled, probs = sample_tokens(logits, filter_thres, tau, u, fast)
        ids = torch.where(is_masked, sampled, ids)  # rows that stopped have nothing masked
        score = 1 - (probs + t * gumbel(_draw(noise, lengths, active, None, coupled, device)))

        t_next = torch.full((1,), 1 - (i + 1) * (1 / steps), dtype=torch.float32)
        sin_next = torch.sin(t_next * math.pi / 2).to(device)
        # coupled: row 0 decides for all (docs/reference.md Q6); per row: each its own count
        counts = torch.floor(sin_next * (lens[:1] if coupled else lens).float()).long().expand(b)
        active = active & (counts > 0)  # a row with no count left stops with its sampled tokens (docs/reference.md Q7)
        if not bool(active.any()):
            break
        neg = -torch.finfo(torch.float32).max
        score = score.masked_fill(~is_masked, neg).masked_fill(~valid, float("-inf"))
        kmax = int(counts.max())
        if preschedule_mask_indices is not None:
            remask = preschedule_mask_indices[:kmax].to(device)[None, :].expand(b, -1)
        else:
            remask = score.topk(kmax, dim=-1).indices  # (b, kmax), highest first
        keep = (torch.arange(kmax, device=device)[None, :] < counts[:, None]) & active[:, None]
        is_masked = torch.zeros_like(is_masked).scatter_(1, remask, keep)
        ids = ids.masked_fill(is_masked, 0)
    return ids


def pad_rows(rows: Sequence[torch.Tensor], device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Per-row tensors (n_r, ...) -> (b, max n_r, ...) on `device`, zeros after each row."""
    return torch.nn.utils.rnn.pad_sequence([x.to(device, dtype) for x in rows], batch_first=True)


def segment(x: torch.Tensor, starts: Sequence[int], lens: Sequence[int]) -> torch.Tensor:
    """(b, l, d) -> (b, max(lens), d): row r's frames [s_r, s_r + len_r), zeros after (a plain slice when uniform)."""
    if len(set(starts)) == 1 and len(set(lens)) == 1:
        return x[:, starts[0]: starts[0] + lens[0]]
    out = x.new_zeros(x.shape[0], max(lens), *x.shape[2:])
    for r, (s, n) in enumerate(zip(starts, lens)):
        out[r, :n] = x[r, s: s + n]
    return out


class Packer:
    """Left-packs per-row sequences [context pieces ; target (T_r frames)] with a key-padding mask.

    Every row sits at positions 0.. as if alone (RoPE positions included). When every piece has one
    length for all rows this is a plain concatenation, bit for bit the reference's layout.

    Args:
        context: pieces (b, c_max, d), e.g. [phone prefix, prompt]; frames beyond a row's length are ignored.
        context_lens: per piece, its length per row.
        target_lens: T_r per row.
    """

    def __init__(self, context: Sequence[torch.Tensor], context_lens: Sequence[Sequence[int]], target_lens: Sequence[int]):
        self.target_lens = [int(x) for x in target_lens]
        context_lens = [[int(x) for x in lens] for lens in context_lens]
        self.offsets = [sum(lens[r] for lens in context_lens) for r in range(len(self.target_lens))]
        self.uniform = all(len(set(lens)) == 1 for lens in context_lens) and len(set(self.target_lens)) == 1
        b, d, dev = len(self.target_lens), context[0].shape[-1], context[0].device
        total = [o + t for o, t in zip(self.offsets, self.target_lens)]
        self.l = max(total)
        self.mask = valid_mask(total, self.l, dev).float()  # (b, l)
        if self.uniform:
            self.context = torch.cat([c[:, : lens[0]] for c, lens in zip(context, context_lens)], dim=1)
            return
        self.context = context[0].new_zeros(b, self.l + 1, d)  # slot l collects the target padding frames
        for r in range(b):
            at = 0
            for c, lens in zip(context, context_lens):
                self.context[r, at: at + lens[r]] = c[r, : lens[r]]
                at += lens[r]
        j = torch.arange(max(self.target_lens), device=dev)[None, :]
        off = torch.tensor(self.offsets, device=dev)[:, None]
        self.pos = torch.where(j < torch.tensor(self.target_lens, device=dev)[:, None], off + j, self.l)  # (b, n)

    def place(self, target: torch.Tensor) -> torch.Tensor:
        """target (b, n, d) -> packed (b, l, d)."""
        if self.uniform:
            return torch.cat([self.context, target.to(self.context.dtype)], dim=1)
        idx = self.pos[..., None].expand(-1, -1, target.shape[-1])
        return self.context.scatter(1, idx, target.to(self.context.dtype))[:, : self.l]

    def take(self, out: torch.Tensor) -> torch.Tensor:
        """packed (b, l, d) -> the target frames (b, n, d)."""
        if self.uniform:
            return out[:, self.offsets[0]:]
        out = torch.cat([out, out.new_zeros(out.shape[0], 1, out.shape[-1])], dim=1)
        return out.gather(1, self.pos[..., None].expand(-1, -1, out.shape[-1]))

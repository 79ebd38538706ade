"""The compiled CPU loops (numba, float32): cached WaveNet generation and the IAF student's step-by-step pass.

Only this module imports numba, and the models import it inside the functions that run a compiled path, so
importing a model (or vocoding on a GPU) never loads numba. Both loops read the one flattened layout of a
`WaveNetStack` (`wavflow.layers.FlatStack`, [out, in] matrices), as numpy arrays from `stack_arrays`, and
share one matrix kernel (`matmul_acc`). Per sample, a cached step is a handful of small matrix-vector
products per layer, so the loops are bound by reading the weights from cache, not by arithmetic; compiling
the whole loop (layers, output head and sampler) removes the per-op dispatch that torch would pay at every
step. Functions are cached on disk (cache=True): the first call in a fresh install compiles them.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numba
import numpy as np
import torch

from .distributions import Distribution, Gaussian, MixtureOfLogistics
from .layers import FlatStack

# Output distributions the sampler knows (wavflow.distributions), by the code `cached_loop` takes.
GAUSSIAN, MIXTURE, MULAW = 0, 1, 2


def _np32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy())


@torch.no_grad()
def cached_generate(flat: FlatStack, head: Sequence[torch.Tensor], dist: Distribution, c: torch.Tensor,
                    noise: torch.Tensor, lens: torch.Tensor, temperature: float, log_scale_min: float, chunk: int,
                    threads: int, bar: Any) -> torch.Tensor:
    """Cached WaveNet generation (wavflow.models.wavenet) in `cached_loop`: audio [B, T] on the CPU.

    flat: the teacher's stack; head: (out1 weight [S, S], out1 bias, out2 weight [P, S], out2 bias); c [B, C, T]
    the upsampled mel; noise [B, N, T] (dist.draw_noise); lens [B] samples per utterance (none is generated
    past its length: zeros there). The mel's projections into every gate are computed `chunk` steps at a
    time (CachedGenerator); bar.update(n) after each chunk.
    """
    B, _, T = c.shape
    out = torch.zeros(B, T)
    T_run = int(lens.max()) if B else 0
    gen = CachedGenerator(flat, head, dist, lens, temperature, log_scale_min, threads)
    try:
        for t0 in range(0, T_run, chunk):
            t1 = min(t0 + chunk, T_run)
            out[:, t0:t1] = gen.run(c[..., t0:t1], noise[..., t0:t1])
            bar.update(t1 - t0)
    finally:
        gen.close()
    return out


class CachedGenerator:
    """Cached WaveNet generation a chunk of steps at a time, its state (each utterance's layer queues and last
    sample) kept between calls: `cached_generate` runs the chunks of one call, a stream (wavflow.streaming) the
    chunks of an utterance as its conditioning arrives. Chunks are equal to one call over their concatenation.

    lens [B]: samples per utterance (none is generated past its length). Utterances are sorted by length so the
    ones still running are a prefix of the batch; with threads > 1 the batch is split into groups of about
    equal work that run in parallel threads (the loop releases the GIL).
    """

    def __init__(self, flat: FlatStack, head: Sequence[torch.Tensor], dist: Distribution, lens: torch.Tensor,
                 temperature: float, log_scale_min: float, threads: int = 1):
        flat = flat.to(torch.float32, "cpu")
        arrays = stack_arrays([flat])
        self.weights = (_np32(flat.in_w), _np32(flat.in_b), arrays["conv_w"], arrays["rs_w"], arrays["rs_b"],
                        *(_np32(w) for w in head))
        if isinstance(dist, Gaussian):
            self.kind, self.table = GAUSSIAN, np.zeros(1, np.float32)
        elif isinstance(dist, MixtureOfLogistics):
            self.kind, self.table = MIXTURE, np.zeros(1, np.float32)
        else:
            self.kind, self.table = MULAW, dist.values.numpy().astype(np.float32)
        self.arrays, self.kernel_size = arrays, flat.kernel_size
        self.temperature, self.log_scale_min = np.float32(temperature), np.float32(log_scale_min)
        self.cond_w = flat.cond_w.transpose(1, 2).contiguous()  # [L, C, G]
        self.conv_b = flat.conv_b
        lens = torch.as_tensor(lens, dtype=torch.long).reshape(-1)
        self.order = torch.argsort(lens, descending=True, stable=True)
        self.unorder = torch.argsort(self.order)
        self.lens_s = lens[self.order].numpy().astype(np.int64)
        B = len(self.lens_s)
        self.queue = np.zeros((B, arrays["queue_rows"], flat.residual_channels), np.float32)
        self.x_prev = np.zeros(B, np.float32)
        self.groups = split_groups(self.lens_s, threads)
        self.pool = ThreadPoolExecutor(len(self.groups)) if len(self.groups) > 1 else None
        self.t = 0  # the next step

    def run(self, c: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The next n steps: c [B, C, n] their upsampled mel, noise [B, N, n] their noise -> audio [B, n]."""
        B, n = len(self.lens_s), c.shape[-1]
        t0, t1 = self.t, self.t + n
        # every layer's gate input from the mel, plus the conv bias: [n, B, L * G]
        cond = torch.einsum("bct,lcg->tblg", c[self.order].float().cpu(), self.cond_w) + self.conv_b
        cond = cond.reshape(n, B, -1).numpy()
        noise_s = np.ascontiguousarray(noise[self.order].float().cpu().numpy().transpose(2, 0, 1))  # [n, B, N]
        out = np.zeros((B, n), np.float32)
        arrays = self.arrays

        def run(g: tuple[int, int]) -> None:
            b0, b1 = g
            if self.lens_s[b0] <= t0:
                return
            # contiguous copies: one compiled specialisation serves any grouping
            cached_loop(t0, t1, np.ascontiguousarray(cond[:, b0:b1]), np.ascontiguousarray(noise_s[:, b0:b1]),
                        self.lens_s[b0:b1], self.x_prev[b0:b1], self.queue[b0:b1], out[b0:b1], *self.weights,
                        arrays["dil"], arrays["qoff"], self.kernel_size, self.kind, self.temperature,
                        self.log_scale_min, self.table)

        if self.pool is None:
            run(self.groups[0])
        else:
            list(self.pool.map(run, self.groups))
        self.t = t1
        return torch.from_numpy(out)[self.unorder]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


@torch.no_grad()
def iaf_sequential(flats: Sequence[FlatStack], heads: Sequence[Sequence[torch.Tensor]], values: torch.Tensor,
                   cond: torch.Tensor, invert: bool, log_scale_min: float, chunk: int,
                   bar: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The IAF student's step-by-step pass (wavflow.models.student) in `iaf_steps`, float32 on the CPU.

    flats: each flow's stack, first flow first; heads: per flow (hidden weight [S, S], hidden bias, out weight
    [2, S], out bias). values [B, T]: z_0 (invert False) or audio x (invert True); cond [B, C, T]: the
    upsampled mel, projected into every gate `chunk` steps at a time (bar.update(n) after each chunk).
    Returns (x or z_0 [B, T], log S [B, T]) in values' dtype and device.
    """
    batch, length = values.shape
    flats = [f.to(torch.float32, "cpu") for f in flats]
    arrays = stack_arrays(flats)
    first = np.cumsum([0] + [len(f.dilations) for f in flats]).astype(np.int64)

    def per_flow(tensors: Sequence[torch.Tensor]) -> np.ndarray:
        return _np32(torch.stack([t.detach().float().cpu() for t in tensors]))

    weights = (per_flow([f.in_w for f in flats]), per_flow([f.in_b for f in flats]), arrays["conv_w"],
               arrays["rs_w"], arrays["rs_b"], *(per_flow([h[i] for h in heads]) for i in range(4)))
    cond_w = torch.cat([f.cond_w for f in flats]).transpose(1, 2).contiguous()  # [L, C, G]
    conv_b = torch.cat([f.conv_b for f in flats])  # [L, G]
    vals = _np32(values)
    out = np.zeros_like(vals)
    log_scale = np.zeros_like(vals)
    queue = np.zeros((batch, arrays["queue_rows"], flats[0].residual_channels), np.float32)
    x_prev = np.zeros((batch, len(flats)), np.float32)
    for t0 in range(0, length, chunk):
        t1 = min(t0 + chunk, length)
        c = cond[..., t0:t1].detach().float().cpu()
        cond_proj = (torch.einsum("bct,lcg->tblg", c, cond_w) + conv_b).reshape(t1 - t0, batch, -1)
        iaf_steps(t0, t1, vals, out, log_scale, np.ascontiguousarray(cond_proj.numpy()), queue, x_prev, invert,
                  first, arrays["dil"], arrays["qoff"], flats[0].kernel_size, *weights, np.float32(log_scale_min))
        bar.update(t1 - t0)
    return (torch.from_numpy(out).to(values.device, values.dtype),
            torch.from_numpy(log_scale).to(values.device, values.dtype))


def stack_arrays(flats: Sequence[FlatStack]) -> dict[str, np.ndarray]:
    """The layers of one or more FlatStacks of equal sizes, in order, as contiguous float32 arrays for the loops.

    conv_w [L, G, k R], rs_w [L, R + S, G/2], rs_b [L, R + S] as in FlatStack; dil [L] and qoff [L] (int64):
    layer l keeps its last (k - 1) d_l inputs in rows qoff[l] ... of a queue [B, sum_l (k - 1) d_l, R].
    """
    def cat(name: str) -> np.ndarray:
        return np.ascontiguousarray(torch.cat([getattr(f, name) for f in flats]).float().cpu().numpy())

    k = flats[0].kernel_size
    dil = np.array([d for f in flats for d in f.dilations], dtype=np.int64)
    qlen = (k - 1) * dil
    return {"conv_w": cat("conv_w"), "rs_w": cat("rs_w"), "rs_b": cat("rs_b"), "dil": dil,
            "qoff": np.concatenate([[0], np.cumsum(qlen)[:-1]]).astype(np.int64), "queue_rows": int(qlen.sum())}


def split_groups(lens_sorted: np.ndarray, threads: int) -> list[tuple[int, int]]:
    """Split a length-sorted batch into up to `threads` contiguous groups of about equal work (sum of lengths)."""
    B = len(lens_sorted)
    n = max(1, min(threads, B))
    if n == 1:
        return [(0, B)]
    total = float(lens_sorted.sum())
    bounds, acc, start = [], 0.0, 0
    for b in range(B):
        acc += lens_sorted[b]
        if len(bounds) < n - 1 and acc >= total * (len(bounds) + 1) / n and b + 1 < B:
            bounds.append((start, b + 1))
            start = b + 1
    bounds.append((start, B))
    return bounds


@numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy", inline="always")
def _exp(x):
    """e^x in float32 to ~1e-7 relative, in plain arithmetic so the gate loop vectorises (libm's expf does
    not): x = n ln2 + r with |r| <= ln2 / 2, e^r by its degree-7 Taylor polynomial, 2^n built in the exponent
    bits. Clamped to [-87, 87], where float32 neither overflows nor goes subnormal."""
    x = min(max(x, np.float32(-87.0)), np.float32(87.0))
    n = np.float32(math.floor(x * np.float32(1.4426950408889634) + np.float32(0.5)))
    r = x - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)  # ln2 in two parts: r stays exact
    p = np.float32(1.0 / 5040)
    p = p * r + np.float32(1.0 / 720)
    p = p * r + np.float32(1.0 / 120)
    p = p * r + np.float32(1.0 / 24)
    p = p * r + np.float32(1.0 / 6)
    p = p * r + np.float32(0.5)
    p = p * r + np.float32(1.0)
    p = p * r + np.float32(1.0)
    return p * np.int32((np.int32(n) + np.int32(127)) << np.int32(23)).view(np.float32)


@numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def matmul_acc(W, X, Z, n):
    """Z[b, o] += sum_i W[o, i] X[b, i] for b < n; W [out, in].

    Four outputs per pass over X[b]: five loads feed four multiply-adds (one output per pass needs two loads
    per multiply-add), and four rows of W stay in L1 while they serve every utterance of the batch.
    """
    n_out, n_in = W.shape
    o = 0
    while o + 4 <= n_out:
        for b in range(n):
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            for i in range(n_in):
                x = X[b, i]
                a0 += W[o, i] * x
                a1 += W[o + 1, i] * x
                a2 += W[o + 2, i] * x
                a3 += W[o + 3, i] * x
            Z[b, o] += a0
            Z[b, o + 1] += a1
            Z[b, o + 2] += a2
            Z[b, o + 3] += a3
        o += 4
    while o < n_out:
        for b in range(n):
            a0 = np.float32(0.0)
            for i in range(n_in):
                a0 += W[o, i] * X[b, i]
            Z[b, o] += a0
        o += 1


# ----------------------------------------------------------------------------------------------------------------
# WaveNet teacher: cached generation (wavflow.models.wavenet, design.md section 4)

@numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def cached_loop(t0, t1, cond, noise, lens, x_prev, queue, out,
                in_w, in_b, conv_w, rs_w, rs_b, out1_w, out1_b, out2_w, out2_b,
                dil, qoff, k, kind, temperature, log_scale_min, table):
    """Steps t0..t1-1 of cached generation for a length-sorted group of utterances.

    cond [Tc, B, L*G] (mel projections + conv bias), noise [Tc, B, N], queue [B, sum_l (k-1) d_l, R] (state),
    x_prev [B] (state), out [B, Tc] (step t0 + i in column i). Weights as `stack_arrays` gives them ([out, in]);
    out1_w [S, S], out2_w [P, S].
    kind: GAUSSIAN, MIXTURE or MULAW; table: the mu-law levels' amplitudes.
    """
    B = out.shape[0]
    L, G, KR = conv_w.shape
    R = KR // k
    Gh = G // 2
    S = out1_w.shape[0]
    P = out2_w.shape[0]
    res_scale = np.float32(math.sqrt(0.5))
    skip_scale = np.float32(math.sqrt(1.0 / L))
    taps = np.zeros((B, KR), np.float32)
    z = np.zeros((B, G), np.float32)
    gated = np.zeros((B, Gh), np.float32)
    rs = np.zeros((B, R + S), np.float32)
    h = np.zeros((B, R), np.float32)
    skips = np.zeros((B, S), np.float32)
    a0 = np.zeros((B, S), np.float32)
    a1 = np.zeros((B, S), np.float32)
    params = np.zeros((B, P), np.float32)
    probs = np.zeros(P, np.float64)
    active = B
    for t in range(t0, t1):
        while active > 0 and lens[active - 1] <= t:
            active -= 1
        if active == 0:
            break
        tc = t - t0
        for b in range(active):
            for r in range(R):
                h[b, r] = in_w[r] * x_prev[b] + in_b[r]
            for s in range(S):
                skips[b, s] = 0.0
        for layer in range(L):
            d = dil[layer]
            ql = (k - 1) * d
            base = qoff[layer]
            slot = t % ql
            for b in range(active):
                # gather the taps, then push the current input where the oldest one (lag (k-1) d) was
                for j in range(k - 1):
                    src = base + (t - (k - 1 - j) * d) % ql
                    for r in range(R):
                        taps[b, j * R + r] = queue[b, src, r]
                for r in range(R):
                    taps[b, (k - 1) * R + r] = h[b, r]
                    queue[b, base + slot, r] = h[b, r]
                for g in range(G):
                    z[b, g] = cond[tc, b, layer * G + g]
            matmul_acc(conv_w[layer], taps, z, active)
            for b in range(active):
                for u in range(Gh):  # tanh(a) sigmoid(b), with tanh(a) = 2 / (1 + e^-2a) - 1
                    th = np.float32(2.0) / (np.float32(1.0) + _exp(np.float32(-2.0) * z[b, u])) - np.float32(1.0)
                    gated[b, u] = th / (np.float32(1.0) + _exp(-z[b, Gh + u]))
                for o in range(R + S):
                    rs[b, o] = rs_b[layer, o]
            matmul_acc(rs_w[layer], gated, rs, active)
            for b in range(active):
                for r in range(R):
                    h[b, r] = (h[b, r] + rs[b, r]) * res_scale
                for s in range(S):
                    skips[b, s] += rs[b, R + s]
        # output head: ReLU -> 1x1 -> ReLU -> 1x1
        for b in range(active):
            for s in range(S):
                a0[b, s] = max(skips[b, s] * skip_scale, np.float32(0.0))
                a1[b, s] = out1_b[s]
            for p in range(P):
                params[b, p] = out2_b[p]
        matmul_acc(out1_w, a0, a1, active)
        for b in range(active):
            for s in range(S):
                a1[b, s] = max(a1[b, s], np.float32(0.0))
        matmul_acc(out2_w, a1, params, active)
        for b in range(active):
            x = _sample(params[b], noise[tc, b], kind, temperature, log_scale_min, table, probs)
            out[b, tc] = x
            x_prev[b] = x


@numba.njit(cache=True, nogil=True)
def _pick_index(probs, n, u):
    """Inverse CDF: first index whose running sum of probs exceeds u (the torch sampler's rule)."""
    acc = np.float32(0.0)
    for i in range(n):
        acc = np.float32(acc + np.float32(probs[i]))
        if acc > u:
            return i
    return n - 1


@numba.njit(cache=True, nogil=True)
def _sample(p, noise, kind, temperature, log_scale_min, table, probs):
    """One draw from the distribution with parameters p [P] and noise [N]; mirrors wavflow.distributions."""
    if kind == 0:  # Gaussian: mu + sigma * temperature * eps
        ls = max(p[1], log_scale_min)
        x = p[0] + math.exp(ls) * temperature * noise[0]
    elif kind == 1:  # logistic mixture: component by inverse CDF, then the logistic's inverse CDF
        K = p.shape[0] // 3
        m = p[0]
        for i in range(K):
            m = max(m, p[i])
        tot = 0.0
        for i in range(K):
            probs[i] = math.exp(p[i] - m)
            tot += probs[i]
        for i in range(K):
            probs[i] = probs[i] / tot
        c = _pick_index(probs, K, noise[0])
        ls = max(p[2 * K + c], log_scale_min)
        u = noise[1]
        x = p[K + c] + math.exp(ls) * temperature * (math.log(u) - math.log1p(-u))
    else:  # mu-law: level by inverse CDF of softmax(logits / temperature), or argmax at temperature 0
        n = p.shape[0]
        best = 0
        for i in range(n):
            if p[i] > p[best]:
                best = i
        if temperature == 0:
            return table[best]
        m = p[best]
        tot = 0.0
        for i in range(n):
            probs[i] = math.exp((p[i] - m) / temperature)
            tot += probs[i]
        for i in range(n):
            probs[i] = probs[i] / tot
        return table[_pick_index(probs, n, noise[0])]
    return min(max(x, -1.0), 1.0)


# ----------------------------------------------------------------------------------------------------------------
# IAF student: the step-by-step pass, exact inversion x -> z of real audio (models.student, design.md section 5)

@numba.njit(cache=True, nogil=True, fastmath=True)
def iaf_steps(t0, t1, values, out, log_scale, cond, queue, x_prev, invert, first, dil, qoff, k,
              in_w, in_b, conv_w, rs_w, rs_b, hid_w, hid_b, out_w, out_b, log_scale_min):
    """Steps t0..t1-1 of every utterance through every flow; `queue` and `x_prev` carry the state across chunks.

    values/out/log_scale [B, T]; cond [Tc, B, L*G]: each layer's mel projection plus conv bias, for this chunk;
    queue [B, sum_l (k-1) d_l, R]: layer l's past inputs, slot t mod (k-1) d_l (zeros: the causal left padding);
    x_prev [B, K]: flow f's input at t - 1. Flow f's layers are first[f]..first[f+1]-1. Weights as
    `stack_arrays` gives them ([out, in]); per flow: in_w, in_b [K, R], hid_w [K, S, S], out_w [K, 2, S].
    """
    B = values.shape[0]
    K = in_w.shape[0]
    L, G, KR = conv_w.shape
    R = KR // k
    Gh = G // 2
    S = hid_w.shape[1]
    res_scale = np.float32(math.sqrt(0.5))
    taps = np.zeros((1, KR), np.float32)
    z = np.zeros((1, G), np.float32)
    gated = np.zeros((1, Gh), np.float32)
    rs = np.zeros((1, R + S), np.float32)
    h = np.zeros(R, np.float32)
    skips = np.zeros(S, np.float32)
    act = np.zeros((1, S), np.float32)
    hid = np.zeros((1, S), np.float32)
    head = np.zeros((1, 2), np.float32)
    for t in range(t0, t1):
        tc = t - t0
        for b in range(B):
            cur = values[b, t]
            total = np.float32(0.0)
            for i in range(K):
                f = K - 1 - i if invert else i
                for r in range(R):
                    h[r] = in_w[f, r] * x_prev[b, f] + in_b[f, r]
                for o in range(S):
                    skips[o] = 0.0
                for layer in range(first[f], first[f + 1]):
                    d = dil[layer]
                    ql = (k - 1) * d
                    base = qoff[layer]
                    for j in range(k - 1):  # tap j looks (k - 1 - j) d steps back
                        src = base + (t - (k - 1 - j) * d) % ql
                        for r in range(R):
                            taps[0, j * R + r] = queue[b, src, r]
                    slot = base + t % ql
                    for r in range(R):
                        taps[0, (k - 1) * R + r] = h[r]
                        queue[b, slot, r] = h[r]
                    for g in range(G):
                        z[0, g] = cond[tc, b, layer * G + g]
                    matmul_acc(conv_w[layer], taps, z, 1)
                    for u in range(Gh):
                        gated[0, u] = math.tanh(z[0, u]) / (np.float32(1.0) + math.exp(-z[0, Gh + u]))
                    for o in range(R + S):
                        rs[0, o] = rs_b[layer, o]
                    matmul_acc(rs_w[layer], gated, rs, 1)
                    for r in range(R):
                        h[r] = (h[r] + rs[0, r]) * res_scale
                    for o in range(S):
                        skips[o] += rs[0, R + o]
                # head: ReLU -> 1x1 -> ReLU -> 1x1 -> (mu, log s)
                skip_scale = np.float32(math.sqrt(1.0 / (first[f + 1] - first[f])))
                for o in range(S):
                    act[0, o] = max(skips[o] * skip_scale, np.float32(0.0))
                    hid[0, o] = hid_b[f, o]
                matmul_acc(hid_w[f], act, hid, 1)
                for o in range(S):
                    hid[0, o] = max(hid[0, o], np.float32(0.0))
                head[0, 0] = out_b[f, 0]
                head[0, 1] = out_b[f, 1]
                matmul_acc(out_w[f], hid, head, 1)
                mu = head[0, 0]
                ls = head[0, 1]
                if ls < log_scale_min:
                    ls = log_scale_min
                if invert:
                    cur = (cur - mu) * math.exp(-ls)
                    x_prev[b, f] = cur  # z_{f}[t]: this flow's input at t, fed to it at t + 1
                else:
                    x_prev[b, f] = cur
                    cur = cur * math.exp(ls) + mu
                total += ls
            out[b, t] = cur
            log_scale[b, t] = total

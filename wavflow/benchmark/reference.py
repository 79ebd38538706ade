"""NVIDIA's WaveGlow sampling algorithm, replayed in torch on the weights of a wavflow `WaveGlow`.

design.md section 6: a figure from another project is a yardstick only when its algorithm runs beside wavflow's,
in the same process, on the same weights. This is that yardstick for WaveGlow: the sequence of operations of the
`infer` method in NVIDIA/waveglow (glow.py), written here against wavflow's module layout (wavflow's WaveGlow
keeps NVIDIA's layer shapes, design.md section 3), so the benchmark can time it as a row of its own and a test
can check that it makes the same audio as wavflow's `WaveGlow.inverse`.

Where the two algorithms part, and so what the speed comparison measures (the arithmetic is the same):
- upsampling: NVIDIA runs the mel through the transposed convolution, crops the kernel's overhang and then
  groups the result, where wavflow computes the cropped, grouped conditioning as one matmul;
- each coupling network runs as stock layers: the conditioning 1x1 convolution over the whole grouped mel in
  every flow, each dilated convolution with zero padding, the gate, the residual/skip convolution and a running
  skip sum, where wavflow folds these into a few large matmuls on preallocated buffers;
- each flow builds new tensors (the coupling's two halves are concatenated, the 1x1 inverse is a convolution
  with W^-1 inverted in float32 and cast to the audio's dtype), where wavflow works in place.

The noise is passed in, laid out as wavflow's z (early outputs first, in the order they leave the forward
flow, then the last flow's channels). NVIDIA draws the last flow's channels first and then one early block
per exit, from the last exit back to the first; both are read from `noise` here, so the same noise gives the
same audio as wavflow's sampler.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def nvidia_infer(model, mel: Tensor, noise: Tensor, sigma: float) -> Tensor:
    """audio [B, F * hop] from mel [B, n_mels, F] and standard-normal noise [B, n_group, F * hop / n_group].

    `model` is a wavflow WaveGlow, with or without weight norm folded. Gradients are not tracked by the caller's
    choice (the benchmark runs it under torch.no_grad()).
    """
    cfg = model.config
    hop = model.upsample.stride[0]
    n_samples = mel.shape[-1] * hop
    cond = _grouped_conditioning(model.upsample, mel, n_samples, cfg.n_group)
    track = None
    if model.source is not None:
        # NVIDIA's WaveGlow has no source: its excitation (wavflow's, the same in both rows) joins the grouped
        # conditioning as the coupling networks expect, so the row still times NVIDIA's flow algorithm.
        track = model.source_track(mel)
        e = model.excitation(track, n_samples).to(cond.dtype)
        cond = torch.cat([cond, e.unfold(1, cfg.n_group, cfg.n_group).transpose(1, 2)], 1)
    scale = model.prior_scale(mel, n_samples // cfg.n_group)
    if scale is not None:  # the energy prior's std per group (wavflow's; NVIDIA's prior is plain)
        noise = noise * scale.to(noise.dtype)

    exits = [k for k in range(1, cfg.n_flows) if k % cfg.n_early_every == 0]
    early = cfg.n_early_size
    x = sigma * noise[:, len(exits) * early:]  # the channels the last flow works on
    for k in reversed(range(cfg.n_flows)):
        x = _coupling_inverse(model.coupling[k].net, x, cond)
        # NVIDIA keeps W^-1 after its first call; an n_group x n_group inverse costs microseconds, so it is
        # not cached here (the model's own cache belongs to wavflow's sampler).
        w_inv = torch.linalg.inv(model.convinv[k].weight.float()).to(x.dtype)
        x = F.conv1d(x, w_inv[..., None])
        if k in exits:  # this flow's early block rejoins, in front of the channels it left from
            j = exits.index(k)
            x = torch.cat((sigma * noise[:, j * early:(j + 1) * early], x), 1)
    if model.filter is not None:  # wavflow's source filter, the same in both rows
        x = model.unfilter(x, cond)
    # [B, n_group, G] -> [B, G * n_group]: sample g * n_group + i is channel i of group g.
    audio = x.transpose(1, 2).reshape(x.shape[0], -1)
    mean = model.harmonic_mean(track, n_samples) if track is not None else None  # wavflow's harmonic mean
    return audio if mean is None else audio + mean.to(audio.dtype)


def _grouped_conditioning(upsample: torch.nn.ConvTranspose1d, mel: Tensor, n_samples: int, n_group: int) -> Tensor:
    """The upsampled mel, cropped to n_samples and grouped: [B, n_mels * n_group, n_samples / n_group].

    Channel c * n_group + i at group g holds mel channel c at sample g * n_group + i (the order of NVIDIA's
    unfold, which its conditioning weights expect).
    """
    up = F.conv_transpose1d(mel, upsample.weight, upsample.bias, stride=upsample.stride[0])
    up = up[..., :n_samples]  # the transposed conv overhangs by kernel - hop samples
    b, c, _ = up.shape
    windows = up.unfold(2, n_group, n_group)  # [B, C, G, n_group]
    # Left transposed (not contiguous), as NVIDIA leaves it, so every flow's conditioning convolution reads the
    # same memory layout it reads there.
    return windows.permute(0, 2, 1, 3).reshape(b, windows.shape[2], c * n_group).transpose(1, 2)


def _coupling_inverse(net, x: Tensor, cond: Tensor) -> Tensor:
    """Undo one affine coupling with NVIDIA's coupling network: x = [x_a, y_b] -> [x_a, (y_b - shift) / exp(log_s)]."""
    half = x.shape[1] // 2
    x_a, y_b = x[:, :half], x[:, half:]
    c = net.channels
    h = net.start(x_a)
    skip = torch.zeros_like(h)
    gates = net.cond_layer(cond)  # the conditioning of every layer, one slice of 2 * c channels each
    last = net.n_layers - 1
    for i in range(net.n_layers):
        pre = net.in_layers[i](h) + gates[:, 2 * c * i:2 * c * (i + 1)]
        act = torch.tanh(pre[:, :c]) * torch.sigmoid(pre[:, c:])
        out = net.res_skip_layers[i](act)
        if i < last:
            h = h + out[:, :c]
            skip = skip + out[:, c:]
        else:  # the last layer has a skip output only
            skip = skip + out
    params = net.end(skip)
    shift, log_s = params[:, :half], params[:, half:]
    return torch.cat([x_a, (y_b - shift) / torch.exp(log_s)], 1)

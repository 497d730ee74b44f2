"""
The denoiser: MDLM's diffusion transformer (DiT) with an optional DSL input converter.

One backbone serves three objectives:
  - token mode (MDLM, AR): h = vocab_embed[x], a plain row lookup (mask_id = V is a row too);
  - DSL mode: noisy vectors z (B, L, d) become a distribution p over the V+1 slots,
      p = softmax(beta * z @ [E; 0]^T + b),  h = p @ vocab_embed      (docs/method.md §3)
    so a DSL model is an MDLM model with a soft, evidence-weighted embedding lookup;
  - causal: the same blocks with a causal attention mask (autoregressive baseline).
There is no time/SNR input: the conditioning vector is the constant SiLU(sigma_map(0)).

Module names follow the MDLM OpenWebText checkpoint (Sahoo et al. 2024,
kuleshov-group/mdlm, models/dit.py) so its weights load without renaming.
"""

import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

import checkpoint_io

DENSE_LOOKUP_MAX = 2048  # dense soft lookup up to here (11% faster than top-64 at 2048, 18% slower at 4096)
# n_layer, n_embd, n_head, cond_dim. `small` is MDLM's OWT model (~170M params with GPT-2 vocab).
PRESETS = {
    'small': dict(n_layer=12, n_embd=768, n_head=12, cond_dim=128),
    'mini': dict(n_layer=4, n_embd=128, n_head=4, cond_dim=64),  # nanoGPT's CPU shakespeare size
    'tiny': dict(n_layer=2, n_embd=64, n_head=2, cond_dim=32),  # unit tests and the cyclic toy
}


def model_config(preset='tiny', vocab_size=65, **overrides):
    """The model's config dict: everything needed to rebuild it (stored in checkpoints)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset '{preset}': choose one of {sorted(PRESETS)}")
    cfg = dict(
        preset=preset,
        vocab_size=vocab_size,
        dropout=0.0,
        causal=False,
        dsl=False,  # True: input is z through the converter (or endpoint ids)
        noise_dim=0,  # d of the noise embeddings E; 0 = auto (16 chars, 32 at 2k tokens, 64 GPT-2)
        gamma_max=None,  # SNR of a fully visible token; endpoint ids map to z = gamma_max e_x
        freeze_noise=False,  # keep E fixed (random unit codes) instead of learning it
        lookup_topk=-1,
    )  # DSL soft lookup: 0 = dense (the reference); k > 0 = the k most likely tokens
    # exactly + the tail's mass on the mean row; -1 = auto (dense to 2048, else 64)
    cfg.update(PRESETS[preset])
    for k, v in overrides.items():
        if k not in cfg:
            raise ValueError(f"unknown model config key '{k}': valid keys are {sorted(cfg)}")
        cfg[k] = v
    if (
        cfg['noise_dim'] == 0
    ):  # docs/method.md §3: d ~ 16 ln V / ln 35 to a power of two: 16/32/64 at V = 65/2048/50257
        cfg['noise_dim'] = max(16, 2 ** round(math.log2(16 * math.log(max(vocab_size, 2)) / math.log(35))))
    if cfg['gamma_max'] is None:  # 100 for every vocabulary, as the authors' code (DSL2's snr_max=100)
        cfg['gamma_max'] = 100.0
    if cfg['n_embd'] % cfg['n_head'] != 0:
        raise ValueError(f"n_embd={cfg['n_embd']} is not divisible by n_head={cfg['n_head']}")
    return cfg


class LayerNorm(nn.Module):
    """Bias-free LayerNorm computed in fp32 (as MDLM), whatever the autocast dtype."""

    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            x = F.layer_norm(x.float(), [x.shape[-1]])
        return x * self.weight


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Rotary(nn.Module):
    """Rotary position embedding, non-interleaved ("rotate_half") convention, base 10000."""

    def __init__(self, head_dim, base=10000):
        super().__init__()
        # persistent, because MDLM's checkpoints carry it (rotary_emb.inv_freq)
        self.register_buffer('inv_freq', 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim)))
        self._cache = (None, None, None)

    def forward(self, L, device):
        if torch.compiler.is_compiling() or self._cache[0] != (L, device):  # compiled: no guard on the cache
            freqs = torch.outer(torch.arange(L, device=device, dtype=torch.float32), self.inv_freq.to(device))
            emb = torch.cat((freqs, freqs), dim=-1)[None, None]  # (1, 1, L, hd)
            if torch.compiler.is_compiling():
                return emb.cos(), emb.sin()
            self._cache = ((L, device), emb.cos(), emb.sin())
        return self._cache[1], self._cache[2]


class TimestepEmbedder(nn.Module):
    """MDLM's sigma_map: sinusoidal features of sigma (256) -> MLP -> cond_dim."""

    def __init__(self, cond_dim, freq_dim=256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma):  # (B,) -> (B, cond_dim)
        half = self.freq_dim // 2
        freqs = torch.exp(
            -math.log(10000) * torch.arange(half, device=sigma.device, dtype=torch.float32) / half
        )
        args = sigma[:, None].float() * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class Block(nn.Module):
    """MDLM's DDiTBlock: adaLN-modulated pre-norm attention + GELU-tanh MLP, gated residuals."""

    def __init__(self, n_embd, n_head, cond_dim, dropout, causal):
        super().__init__()
        self.n_head, self.causal, self.dropout = n_head, causal, dropout
        self.norm1 = LayerNorm(n_embd)
        self.attn_qkv = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.attn_out = nn.Linear(n_embd, n_embd, bias=False)
        self.norm2 = LayerNorm(n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd), nn.GELU(approximate='tanh'), nn.Linear(4 * n_embd, n_embd)
        )
        self.adaLN_modulation = nn.Linear(cond_dim, 6 * n_embd)
        for p in self.adaLN_modulation.parameters():  # adaLN-zero (DiT, Peebles & Xie 2023)
            nn.init.zeros_(p)

    def forward(self, h, cos, sin, c):
        B, L, D = h.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c)[:, None].chunk(6, dim=2)
        qkv = self.attn_qkv(modulate(self.norm1(h), shift1, scale1))
        q, k, v = qkv.view(B, L, 3, self.n_head, D // self.n_head).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, hd)
        q = (q * cos + rotate_half(q) * sin).to(v.dtype)
        k = (k * cos + rotate_half(k) * sin).to(v.dtype)
        # no attention dropout: MDLM's flash-attention call uses none, dropout acts on the residual branches
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        y = y.transpose(1, 2).reshape(B, L, D)
        drop = lambda t: F.dropout(t, self.dropout, self.training)
        h = h + gate1 * drop(self.attn_out(y))
        h = h + gate2 * drop(self.mlp(modulate(self.norm2(h), shift2, scale2)))
        return h


class FinalLayer(nn.Module):
    def __init__(self, n_embd, n_out, cond_dim):
        super().__init__()
        self.norm_final = LayerNorm(n_embd)
        self.linear = nn.Linear(n_embd, n_out)
        self.adaLN_modulation = nn.Linear(cond_dim, 2 * n_embd)
        for p in (*self.linear.parameters(), *self.adaLN_modulation.parameters()):
            nn.init.zeros_(p)  # zero init: the untrained model predicts uniform

    def forward(self, h, c):
        shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=2)
        return self.linear(modulate(self.norm_final(h), shift, scale))


class Converter(nn.Module):
    """DSL input converter: p = softmax(beta * z @ [E; 0]^T + b) over the V+1 slots (docs/method.md §3).

    With unit-norm codes, log N(z; gamma e_v, gamma I) = <z, e_v> + const(z, gamma), so the
    single-token posterior over v is softmax(<z, e_v>) for every gamma: beta = 1 is exact at init.
    The all-zero key is [MASK]; b_mask = ln(99 V) reads z = 0 as [MASK] with probability 0.99.
    """

    def __init__(self, V, d, freeze):
        super().__init__()
        # the codes' directions, normalised on use (E)
        self.noise_embed = nn.Parameter(torch.randn(V, d), requires_grad=not freeze)
        self.beta = nn.Parameter(torch.ones(()))
        # the one DSL-specific initialisation: b = 0 for the V tokens and b_mask = ln(99 V) for [MASK], so
        # that z = 0 (all scores 0) reads as [MASK] with probability 99 V / (99 V + V) = 0.99
        bias = torch.zeros(V + 1)
        bias[V] = math.log(99 * V)
        self.bias = nn.Parameter(bias)

    def E(self):  # (V, d) unit-norm noise embeddings
        return F.normalize(self.noise_embed, dim=-1)

    def forward(self, z):  # (..., d) -> (..., V+1) probabilities
        scores = self.beta * (z @ self.E().t().to(z.dtype))  # (..., V)
        scores = torch.cat([scores, torch.zeros_like(scores[..., :1])], dim=-1) + self.bias
        return torch.softmax(scores.float(), dim=-1)


class DiT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = dict(config)
        V = config['vocab_size']
        D, H, C = config['n_embd'], config['n_head'], config['cond_dim']
        self.vocab_size, self.mask_id, self.dsl = V, V, config['dsl']
        if (
            self.config.get('lookup_topk', 0) < 0
        ):  # auto: dense where it is as fast as top-64 (results/speed/README.md)
            self.config['lookup_topk'] = 64 if V > DENSE_LOOKUP_MAX else 0
        if D // H % 2:
            raise ValueError(f"head dim n_embd/n_head = {D // H} must be even for rotary embeddings")
        # registration order = MDLM's backbone.parameters() order (EMA shadow_params rely on it)
        self.vocab_embed = nn.Module()
        self.vocab_embed.embedding = nn.Parameter(torch.empty(V + 1, D))  # (V+1, D), incl. the [MASK] row
        nn.init.kaiming_uniform_(self.vocab_embed.embedding, a=math.sqrt(5))
        self.sigma_map = TimestepEmbedder(C)
        self.rotary_emb = Rotary(D // H)
        self.blocks = nn.ModuleList(
            [Block(D, H, C, config['dropout'], config['causal']) for _ in range(config['n_layer'])]
        )
        self.output_layer = FinalLayer(D, V + 1, C)
        if self.dsl:
            self.converter = Converter(V, config['noise_dim'], config['freeze_noise'])
        # optional (V+1, D) endpoint embeddings for discrete samplers: at gamma_max, and at gamma_commit
        self.table = self.commit_table = self.commit_gamma = None

    def E(self):
        return self.converter.E()

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def endpoint_rows(self, gamma=None, chunk=4096):
        """(V+1, D) input embeddings h of the deterministic states z = gamma e_v (default gamma = gamma_max)
        for v < V, and z = 0 for row V ([MASK]), through the same soft lookup as training (dense or top-k)."""
        V, W = self.vocab_size, self.vocab_embed.embedding
        rows = []
        for i in range(0, V + 1, chunk):
            ids = torch.arange(i, min(i + chunk, V + 1), device=W.device)
            rows.append(self._soft_lookup(self.endpoint_z(ids, gamma)[None])[0])
        return torch.cat(rows).to(W.dtype)

    def build_endpoint_table(self, gamma_commit=None, chunk=4096):
        """Precompute h for the V+1 endpoint states (token v at gamma_max, or z = 0) so that discrete
        samplers skip the V-wide softmax: afterwards model(x=ids) is a row lookup. gamma_commit: also the
        commit table, the same rows at z = gamma_commit e_v, read where forward's `commit` is True.
        Call again after the weights change; `drop_endpoint_table()` removes both."""
        self.table = self.endpoint_rows(chunk=chunk)
        self.commit_gamma = gamma_commit
        self.commit_table = None if gamma_commit is None else self.endpoint_rows(gamma_commit, chunk)

    def drop_endpoint_table(self):
        self.table = self.commit_table = self.commit_gamma = None

    def endpoint_z(self, x, gamma=None):
        """Deterministic endpoint state of ids x: z = gamma e_x (gamma: default gamma_max, a float or a
        tensor broadcastable to x), and z = 0 where x == mask_id."""
        gamma = self.config['gamma_max'] if gamma is None else gamma
        e = self.E()[x.clamp(max=self.vocab_size - 1)]
        return e * (torch.as_tensor(gamma, device=x.device) * (x != self.mask_id))[..., None].to(e.dtype)

    def embed(self, x=None, z=None, commit=None):
        W = self.vocab_embed.embedding
        if z is not None:
            return self._soft_lookup(z)
        if self.dsl:
            if self.table is not None and not self.training:  # a stale table must never leak into training
                if commit is None:
                    return self.table[x]
                return torch.where(commit[..., None], self.commit_table[x], self.table[x])  # (B, L, D)
            gamma = (
                None if commit is None else torch.where(commit, self.commit_gamma, self.config['gamma_max'])
            )
            return self.embed(z=self.endpoint_z(x, gamma))
        return W[x]  # row lookup, never a one-hot matmul

    def _soft_lookup(self, z):  # (B, L, d) -> (B, L, D)
        W, k = self.vocab_embed.embedding, self.config.get('lookup_topk', 0)
        if 0 < k < self.vocab_size:
            return self._sparse_lookup(z, k)
        if torch.is_grad_enabled():
            return self._dense_lookup(z)
        # no grad (sampling, endpoint tables): the converter's probabilities as they are, nothing to keep
        return (self.converter(z) @ W.float()).to(W.dtype)

    def _dense_lookup(self, z, chunk=8192):
        """h = p @ W with the dense p of all V+1 slots, for training: DenseSoftLookup keeps no (B, L, V)
        tensor for the backward, and the row chunks bound the transient (n, V+1) ones to chunk x (V+1)
        floats."""
        conv, W = self.converter, self.vocab_embed.embedding
        zf, out = z.reshape(-1, z.shape[-1]).float(), []  # (N, d)
        # fp32 under autocast too, as in _sparse_lookup: scores reach ~gamma_max (bf16 would be off by ~0.5)
        with torch.autocast(z.device.type, enabled=False):
            E, Wf = conv.E(), W.float()
            for i in range(0, len(zf), chunk):
                out.append(DenseSoftLookup.apply(zf[i : i + chunk], E, conv.beta, conv.bias, Wf))
        return torch.cat(out).reshape(*z.shape[:-1], -1).to(W.dtype)

    def _sparse_lookup(self, z, k, chunk=8192):
        """h = p @ W with p restricted to its k largest real-token entries and the [MASK] slot, all exact,
        plus the remaining (exact) mass r placed on the mean real-token row Wbar:
            h ~= sum_{v in top-k} p_v W_v + p_mask W_mask + r Wbar,   r = 1 - sum_top p_v - p_mask.
        It is exact when r = 0 and when the tail's rows average to Wbar; the V-wide part left is the d-wide
        score matmul and its logsumexp (V d instead of V (d + D) multiply-adds per token). The error is
        measured against the dense form in results/speed/README.md and the tests (bench.py --lookup_error)."""
        conv, W = self.converter, self.vocab_embed.embedding
        V, zf, out = self.vocab_size, z.reshape(-1, z.shape[-1]).float(), []  # (N, d)
        with torch.autocast(
            z.device.type, enabled=False
        ):  # scores reach ~gamma_max: bf16 would be off by ~0.5
            Wf = W.float()
            Wbar = Wf[:V].mean(0)  # (D,)
            for i in range(0, len(zf), chunk):  # bounds the transient (n, V) scores to chunk x V floats
                p_top, p_mask, idx = TopKSoftmax.apply(zf[i : i + chunk], conv.E(), conv.beta, conv.bias, k)
                r = 1 - p_top.sum(-1) - p_mask  # (n,) the exact mass outside the top k
                h = F.embedding_bag(idx, Wf, per_sample_weights=p_top, mode='sum')  # (n, D), no (n, k, D)
                out.append(h + p_mask[:, None] * Wf[V] + r[:, None] * Wbar)
        return torch.cat(out).reshape(*z.shape[:-1], -1).to(W.dtype)

    def forward(self, x=None, z=None, out_idx=None, commit=None, keep=None):
        """x: (B, L) token ids in [0, V] (V = [MASK]), or z: (B, L, d) noisy DSL input.
        out_idx: optional (B, L) bool; the head then runs only there and returns (N, V+1).
        commit: optional (B, L) bool with x (DSL): those tokens are read at z = gamma_commit e_x (the commit
        table of build_endpoint_table(gamma_commit)), the others at gamma_max. Returns logits (B, L, V+1).
        keep: a dict that receives keep['hc'] = (h, c), the trunk's output, for head() at other positions."""
        self._check_input(x, z, out_idx, commit)
        hc = self.trunk(x, z, commit)
        if keep is not None:
            keep['hc'] = hc
        return self.head(*hc, out_idx)

    def trunk(self, x=None, z=None, commit=None):
        """Input converter and blocks: the final hidden states h (B, L, D) and the conditioning c (1, C). A
        sampler whose next input is the same sends them through head() again instead of calling the model
        (sample.call)."""
        h = self.embed(x, z, commit)
        # time conditioning is off: one constant vector per forward (sigma = 0)
        c = F.silu(self.sigma_map(torch.zeros(1, device=h.device)))  # (1, C)
        cos, sin = self.rotary_emb(h.shape[1], h.device)
        for block in self.blocks:
            h = block(h, cos, sin, c)
        return h, c

    def head(self, h, c, out_idx=None):
        """Logits (B, L, V+1) of the final hidden states, or (N, V+1) at the out_idx (B, L) positions only."""
        if out_idx is not None:
            h = h[out_idx][None]  # (1, N, D)
        logits = self.output_layer(h, c)
        return logits[0] if out_idx is not None else logits

    def _check_input(self, x, z, out_idx, commit=None):
        if (x is None) == (z is None):
            raise ValueError("pass exactly one of x (token ids) or z (noisy vectors)")
        if commit is not None:
            if x is None or not self.dsl or self.commit_gamma is None:
                raise ValueError(
                    "commit needs a DSL model, token ids x and build_endpoint_table(gamma_commit=...)"
                )
            if commit.dtype != torch.bool or commit.shape != x.shape:
                raise ValueError(
                    f"commit must be a bool tensor of shape {tuple(x.shape)}, got "
                    f"{tuple(commit.shape)} {commit.dtype}"
                )
        if z is not None:
            if not self.dsl:
                raise ValueError("z input needs a DSL model (config dsl=True); token-mode models take x")
            d = self.config['noise_dim']
            if z.dim() != 3 or z.shape[-1] != d or not z.is_floating_point():
                raise ValueError(
                    f"z must be a float tensor of shape (B, L, {d}), got {tuple(z.shape)} {z.dtype}"
                )
            shape = z.shape[:2]
        else:
            if x.dim() != 2 or x.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"x must be an int64 tensor of shape (B, L), got {tuple(x.shape)} {x.dtype}")
            if (
                x.numel()
                and not x.is_cuda
                and not torch.compiler.is_compiling()
                and (int(x.min()) < 0 or int(x.max()) > self.vocab_size)
            ):
                # (a host-device sync on CUDA, so checked on CPU only; CUDA's own index check still fires)
                raise ValueError(
                    f"token ids must lie in [0, {self.vocab_size}] ({self.vocab_size} = [MASK]), "
                    f"got range [{int(x.min())}, {int(x.max())}]"
                )
            shape = x.shape
        if out_idx is not None and (out_idx.dtype != torch.bool or out_idx.shape != shape):
            raise ValueError(
                f"out_idx must be a bool tensor of shape {tuple(shape)}, got "
                f"{tuple(out_idx.shape)} {out_idx.dtype}"
            )


# ---------------------------------------------------------------------------------------------
# The soft lookup's training paths: exact backwards that keep no (n, V) tensor. They compute what
# Converter then p @ W computes (the tests check it); a reader can skip them.


class TopKSoftmax(torch.autograd.Function):
    """The k largest probabilities of p = softmax([beta z E^T + b_{:V}, b_V]) (the converter's V+1 slots, the
    last one [MASK]) and the [MASK] probability, exact under the full normaliser, with an exact backward that
    never keeps a (n, V) tensor: forward and backward each rebuild the scores with one matmul. For i < V,
    dL/ds_i = p_i (a_i [i in top-k] - c), dL/ds_mask = p_mask (a_mask - c), c = sum_j a_j p_j over the
    returned slots, a = dL/d(returned probabilities)."""

    @staticmethod
    def forward(ctx, z, E, beta, bias, k):  # z (n, d), E (V, d), beta (), bias (V+1,)
        V = E.shape[0]
        # the bias rides in the matmul as an extra column: s = [beta z, 1] @ [E, b]^T, no (n, V) bias pass
        Eb = torch.cat([E, bias[:V, None]], 1)  # (V, d+1)
        zb = torch.cat([z * beta, torch.ones_like(z[:, :1])], 1)  # (n, d+1)
        s = zb @ Eb.t()  # (n, V) scores
        lse = torch.logaddexp(torch.logsumexp(s, -1), bias[V])  # (n,) the exact normaliser over V+1 slots
        top, idx = s.topk(k, -1)  # (n, k)
        p_top, p_mask = (top - lse[:, None]).exp(), (bias[V] - lse).exp()
        ctx.save_for_backward(
            z, E, beta, bias, lse, idx, p_top, p_mask
        )  # Eb, zb are rebuilt: no (V, d) copy kept
        return p_top, p_mask, idx

    @staticmethod
    def backward(ctx, a_top, a_mask, _):
        z, E, beta, bias, lse, idx, p_top, p_mask = ctx.saved_tensors
        Eb = torch.cat([E, bias[: E.shape[0], None]], 1)  # (V, d+1)
        zb = torch.cat([z * beta, torch.ones_like(z[:, :1])], 1)  # (n, d+1)
        c = (a_top * p_top).sum(-1) + a_mask * p_mask  # (n,)
        # p = exp(s - lse) with -lse as one more column of the same matmul; then G = -c p (n, V)
        G = (torch.cat([zb, -lse[:, None]], 1) @ torch.cat([Eb, torch.ones_like(Eb[:, :1])], 1).t()).exp_()
        G.mul_(-c[:, None]).scatter_add_(1, idx, a_top * p_top)  # + a_i p_i on the top-k
        GE = G @ Eb[:, :-1]  # (n, d)
        gEb = G.t() @ zb  # (V, d+1): [grad of E / 1, grad of b_{:V}]
        g_bias = torch.cat([gEb[:, -1], (p_mask * (a_mask - c)).sum()[None]])
        return beta * GE, gEb[:, :-1], (GE * z).sum(), g_bias, None


class DenseSoftLookup(torch.autograd.Function):
    """The dense soft lookup h = p @ W with p = softmax([beta z E^T + b_{:V}, b_V]) over the converter's V+1
    slots (the last one [MASK]), with an exact backward that keeps no (n, V) tensor: autograd through the
    plain formula keeps the (n, V+1) probabilities and the (n, V) pre-bias scores (for beta's gradient), ~16
    KB per token at V = 2048 (results/speed/README.md). Here the backward rebuilds p from z with one matmul
    and one softmax, as TopKSoftmax rebuilds its scores. With g = dL/dh:
        dL/dW = p^T g,   dL/dp = g W^T,   dL/ds = p * (dL/dp - sum_j p_j dL/dp_j),
    then through s = (beta z) [E; 0]^T + b to z, E, beta and b. It keeps the inputs only, not the per-row
    logsumexp either: p = exp(s - lse) would sum to 1 only to ~|s| eps = 1e-5 at s ~ gamma_max, and dL/ds sums
    to zero over a row (as it must) only when p sums to 1; a softmax renormalises."""

    @staticmethod
    def forward(ctx, z, E, beta, bias, W):  # z (n, d), E (V, d), beta (), bias (V+1,), W (V+1, D)
        ctx.save_for_backward(z, E, beta, bias, W)
        return _dense_lookup_forward(z, E, beta, bias, W)

    @staticmethod
    def backward(ctx, g):  # g (n, D)
        z, E, beta, bias, W = ctx.saved_tensors
        zbeta = z * beta
        p = DenseSoftLookup.probabilities(zbeta, E, bias)  # the forward's p, rebuilt
        gW = p.t() @ g  # (V+1, D)
        # the softmax backward in place on dL/dp: G = dL/ds = p * (dL/dp - c), c = sum_j p_j dL/dp_j
        G = g @ W.t()  # (n, V+1) dL/dp
        c = (G * p).sum(-1, keepdim=True)  # (n, 1)
        G.sub_(c).mul_(p)
        del p
        GE = G[:, :-1] @ E  # (n, d) dL/d(beta z); the [MASK] slot's key is zero
        gE = G.t()[:-1] @ zbeta  # (V, d)
        return beta * GE, gE, (GE * z).sum(), G.sum(0), gW

    @staticmethod
    def probabilities(zbeta, E, bias):
        """p = softmax((beta z) [E; 0]^T + b), (n, V+1). The bias rides in the matmul (addmm starts its sum
        from b): no separate (n, V+1) pass. torch.softmax rather than exp(s - logsumexp): peaked rows (z near
        gamma_max e_v) put the other slots ~100 below the max, where eager torch.exp and torch.logsumexp
        produce subnormal floats ~20x slower (80 ms against 4 ms at 2048 x 2049 on one CPU thread); softmax
        does not."""
        Ek = torch.cat([E, E.new_zeros(1, E.shape[1])])  # (V+1, d) keys, [MASK]'s the zero vector
        return torch.softmax(torch.addmm(bias, zbeta, Ek.t()), -1)


# The forward of DenseSoftLookup as an op that torch.compile does not look into. Traced, its p is the same
# expression as the backward's rebuilt one, and the compiled step kept it for the backward after all: 57.5
# against 49.4 KB per token at V = 2048 (`bench.py --memory --compile`; MDLM 48.6), undoing the Function's
# point.
@torch.library.custom_op('dsl::dense_lookup_forward', mutates_args=())
def _dense_lookup_forward(
    z: torch.Tensor, E: torch.Tensor, beta: torch.Tensor, bias: torch.Tensor, W: torch.Tensor
) -> torch.Tensor:
    return DenseSoftLookup.probabilities(z * beta, E, bias) @ W  # p (n, V+1) is freed on return


@_dense_lookup_forward.register_fake
def _(z, E, beta, bias, W):  # the output's shape and dtype, for the compiler
    return z.new_empty(z.shape[0], W.shape[1])


# ---------------------------------------------------------------------------------------------
# Loading: MDLM checkpoints (HF safetensors, Lightning .ckpt with EMA) and this project's own.


def _backbone_state(sd, prefix='backbone.'):
    if any(k.startswith(prefix) for k in sd):
        return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return dict(sd)


def load_backbone(model, sd):
    """Copy an MDLM-layout state dict into `model` (token-mode keys; DSL converter keys optional).
    Any missing or unexpected key is an error that lists them: never a silent partial load."""
    sd = dict(sd)
    sd.setdefault('rotary_emb.inv_freq', model.rotary_emb.inv_freq)
    own = model.state_dict()
    missing = sorted(k for k in own if k not in sd and not k.startswith('converter.'))
    unexpected = sorted(k for k in sd if k not in own)
    if missing or unexpected:
        raise KeyError(
            f"checkpoint does not match the model: missing keys {missing[:20]}"
            f"{' ...' if len(missing) > 20 else ''}, unexpected keys {unexpected[:20]}"
            f"{' ...' if len(unexpected) > 20 else ''}"
        )
    bad = [
        f"{k}: {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in sd.items()
        if v.shape != own[k].shape
    ]
    if bad:
        raise ValueError(f"checkpoint shapes do not match the model: {bad[:10]}")
    model.load_state_dict(sd, strict=False)
    return model


def _read_mdlm_file(path, use_ema=True, trust=False):
    """Returns (backbone state dict, config or None) from a .safetensors, Lightning .ckpt or our .pt."""
    if path.endswith('.safetensors'):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise SystemExit("reading .safetensors needs the optional package: pip install safetensors")
        return _backbone_state(load_file(path)), None
    ckpt = checkpoint_io.load(path, trust)
    if 'model_config' in ckpt and 'model' in ckpt:  # this project's checkpoint (train.py)
        key = 'ema' if use_ema and ckpt.get('ema') is not None else 'model'
        return ckpt[key], ckpt['model_config']
    if 'state_dict' in ckpt:  # MDLM's Lightning checkpoint
        sd = _backbone_state(ckpt['state_dict'])
        shadow = (ckpt.get('ema') or {}).get('shadow_params')
        if use_ema and shadow is not None:
            # EMA weights are an ordered list in backbone.parameters() order; buffers are not in it
            names = [k for k in sd if k != 'rotary_emb.inv_freq']
            if len(names) != len(shadow):
                raise ValueError(
                    f"EMA has {len(shadow)} tensors but the backbone has {len(names)} parameters"
                )
            sd.update(dict(zip(names, shadow)))
        return sd, None
    return _backbone_state(ckpt), None


def infer_config(sd, **overrides):
    """Rebuild an MDLM model config from the shapes in its state dict."""
    V1, D = sd['vocab_embed.embedding'].shape
    n_layer = len({k.split('.')[1] for k in sd if k.startswith('blocks.')})
    cond = sd['sigma_map.mlp.2.weight'].shape[0]
    head_dim = 2 * sd['rotary_emb.inv_freq'].numel() if 'rotary_emb.inv_freq' in sd else 64
    preset = next(
        (n for n, p in PRESETS.items() if (p['n_layer'], p['n_embd'], p['cond_dim']) == (n_layer, D, cond)),
        'small',
    )
    return dict(
        model_config(preset, V1 - 1, n_layer=n_layer, n_embd=D, n_head=D // head_dim, cond_dim=cond),
        **overrides,
    )


def convert_to_dsl(model, **overrides):
    """An MDLM (token-mode) model turned into a DSL model: every backbone weight is kept, vocab_embed
    becomes the converter's value matrix unchanged, and E, beta, b are added at their init
    (docs/method.md §3)."""
    cfg = dict(model.config, dsl=True, **overrides)
    return load_backbone(DiT(cfg).to(model.vocab_embed.embedding.device), model.state_dict())


def load_mdlm(path, dsl=False, use_ema=True, trust=False, **overrides):
    """An MDLM model or ours, from a local file or a hub id; dsl: as convert_to_dsl; trust: as
    checkpoint_io.load."""
    if not os.path.exists(path):
        if path.count('/') != 1 or path.startswith(('.', '/')):
            raise FileNotFoundError(
                f"checkpoint '{path}' not found (pass a local .safetensors/.ckpt/.pt file or a hub id)"
            )
        try:
            import huggingface_hub

            path = huggingface_hub.hf_hub_download(path, 'model.safetensors')
        except ImportError:
            raise SystemExit("a hub id needs: pip install huggingface_hub safetensors (or pass a local file)")
        except Exception as e:
            raise SystemExit(
                f"could not download '{path}' from the hub ({type(e).__name__}); "
                f"offline, pass a local model.safetensors or .ckpt file instead"
            )
    sd, cfg = _read_mdlm_file(path, use_ema, trust)
    if cfg is None:
        # an MDLM file carries no config: rebuild it from the weights' shapes
        cfg = infer_config(sd)
    # a DSL checkpoint stays DSL
    dsl = dsl or bool(cfg.get('dsl'))
    return load_backbone(DiT({**cfg, **overrides, 'dsl': dsl}), sd)

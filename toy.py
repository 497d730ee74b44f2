"""
The cyclic toy (DESIGN.md §9): vocabulary A..G, L = 7, the data are the 7 cyclic shifts of ABCDEFG.

With fixed unit embeddings E the exact Bayes denoiser is a sum over the 7 sequences:
    p(x | z) = exp(sum_i <z_i, e_{x_i}>) / sum_{x' in S} exp(sum_i <z_i, e_{x'_i}>)
`Oracle` wraps it with the model's call signature, so samplers and bounds are tested against it.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

ALPHABET = 'ABCDEFG'
V = L = 7


def shifts():
    """(7, 7) int64: row j is ABCDEFG rotated left by j."""
    return (torch.arange(L)[None, :] + torch.arange(V)[:, None]) % V


def encode(s):
    """'__CDBFF' -> ids, '_' = [MASK] (id V)."""
    return torch.tensor([V if ch == '_' else ALPHABET.index(ch) for ch in s])


def decode(ids):
    return ''.join('_' if int(i) == V else ALPHABET[int(i)] for i in ids)


class Oracle(nn.Module):
    """Exact Bayes denoiser of the cyclic toy. Orthonormal codes (V <= d) make distinct tokens
    exactly distinguishable; token input x is read as the endpoint state z = gamma_max e_x (0 at [MASK])."""

    def __init__(self, d=16, gamma_max=30.0, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
        self.register_buffer('codes', q[:V].contiguous())  # (V, d), orthonormal rows
        self.register_buffer('S', shifts())
        self.vocab_size, self.mask_id, self.dsl = V, V, True
        self.config = dict(vocab_size=V, noise_dim=d, gamma_max=gamma_max, dsl=True)

    def E(self):
        return self.codes

    def endpoint_z(self, x):
        visible = (x != self.mask_id)
        return self.codes[x.clamp(max=V - 1)] * (self.config['gamma_max'] * visible)[..., None]

    def forward(self, x=None, z=None, out_idx=None):
        if z is None:
            z = self.endpoint_z(x)
        zv = z.double() @ self.codes.double().t()  # (B, L, V): <z_i, e_v>
        # score of each of the 7 sequences: sum_i <z_i, e_{S[s, i]}>  -> (B, 7)
        seq = zv[:, torch.arange(L)[None, :], self.S].sum(-1)
        post = torch.log_softmax(seq, dim=-1)  # log p(sequence | z)
        # marginal per position: log sum_{s: S[s,i] = v} p(s | z)
        onehot = F.one_hot(self.S, V).double()  # (7, L, V)
        logits = torch.logsumexp(post[:, :, None, None] + torch.log(onehot)[None], dim=1)  # (B, L, V)
        logits = torch.cat([logits, torch.full_like(logits[..., :1], -float('inf'))], dim=-1).float()
        return logits[out_idx] if out_idx is not None else logits

"""The discretized logistic mixture output head (PixelCNN++, Salimans et al. 2017), for one subpixel at a time.

Each hidden subpixel gets K logistic components on the value scale [-1, 1] (value v sits at v / 127.5 - 1):
weights pi_k (a softmax over K), means mu_k and log-scales. Value v's probability is the mass of its bin,
[v - 0.5, v + 0.5] in pixel units, the end bins stretched to -inf and +inf:

    p(v) = sum_k pi_k (sigmoid((upper_v - mu_k) / s_k) - sigmoid((lower_v - mu_k) / s_k))

computed in log space as  log sigmoid(a) + log sigmoid(-b) + log(1 - e^(b - a))  (a, b the two scaled edges),
which stays exact where the two sigmoids round to the same float. Neighbouring values share mass, so a model
that has seen 200 learns something about 201; the softmax head learns each of the 256 on its own.

`log_probs` gives all 256 values' log-probabilities (what the samplers and metrics read, through
ONADE.head); `nats` only the true value's, at the cost of one bin instead of 256, which is what training uses.
The head sees no other channel's draw: the orderless NADE's masks already condition a subpixel on whichever
channels of its pixel are observed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from onade.config import NUM_LEVELS

PARAMS = 3  # per component: weight logit, mean, log-scale
MIN_LOG_SCALE, MAX_LOG_SCALE = -7.0, 3.0  # a scale of e^3 is flat over [-1, 1]; FAR is still 50 scales out
HALF_BIN = 1.0 / (NUM_LEVELS - 1)  # half a bin on the [-1, 1] scale
FAR = 1e3  # stands for the end bins' infinite edges (an infinity would make 0 * inf gradients)
TABLE_CHUNK = 1024  # subpixels whose 256-value table is computed at once: bounds the scratch memory


def split(params_xP: torch.Tensor, components: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The head's raw outputs [..., 3K] -> (weight log-probs, means, inverse scales), each [..., K], fp32."""
    p = params_xP.float().unflatten(-1, (PARAMS, components))
    log_pi = torch.log_softmax(p[..., 0, :], -1)
    inv_scale = torch.exp(-p[..., 2, :].clamp(MIN_LOG_SCALE, MAX_LOG_SCALE))
    return log_pi, p[..., 1, :], inv_scale


def _bin_log_mass(lower: torch.Tensor, upper: torch.Tensor, mu: torch.Tensor, inv_scale: torch.Tensor):
    a = (upper - mu) * inv_scale
    b = (lower - mu) * inv_scale
    return F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(b - a))


def _edges(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    centre = values.float() / 127.5 - 1
    lower = torch.where(values > 0, centre - HALF_BIN, torch.full_like(centre, -FAR))
    upper = torch.where(values < NUM_LEVELS - 1, centre + HALF_BIN, torch.full_like(centre, FAR))
    return lower, upper


def nats(params_xP: torch.Tensor, values_x: torch.Tensor, components: int) -> torch.Tensor:
    """-log p(value) for every subpixel [...] from its head outputs [..., 3K] and its value (integers 0-255)."""
    log_pi, mu, inv_scale = split(params_xP, components)
    lower, upper = _edges(values_x)
    log_mass = _bin_log_mass(lower[..., None], upper[..., None], mu, inv_scale)
    return -torch.logsumexp(log_pi + log_mass, -1)


def log_probs(params_xP: torch.Tensor, components: int) -> torch.Tensor:
    """Log-probabilities of the 256 values [..., 256] (they sum to 1), computed TABLE_CHUNK subpixels at a time."""
    flat = params_xP.reshape(-1, params_xP.shape[-1])
    lower, upper = _edges(torch.arange(NUM_LEVELS, device=flat.device))
    chunks = [torch.empty(0, NUM_LEVELS, device=flat.device)]
    for i in range(0, flat.shape[0], TABLE_CHUNK):
        log_pi, mu, inv_scale = (t[:, None, :] for t in split(flat[i:i + TABLE_CHUNK], components))
        log_mass = _bin_log_mass(lower[None, :, None], upper[None, :, None], mu, inv_scale)
        chunks.append(torch.logsumexp(log_pi + log_mass, -1))
    return torch.cat(chunks).view(*params_xP.shape[:-1], NUM_LEVELS)

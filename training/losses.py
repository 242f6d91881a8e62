"""The maths of algorithms.md §2–5 as pure tensor functions (no models, no state).

Conventions: per-token tensors are [B, T] with a boolean `mask` of the tokens that count; label codes
are the label engine's (keep=0, insert=1, delete=2, replace=3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from labels import DELETE, INSERT, KEEP, REPLACE


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    x = x * mask
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean over masked entries; 0 where nothing is masked in (never NaN)."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: Tensor, mask: Tensor) -> Tensor:
    mean = masked_mean(x, mask)
    return masked_mean((x - mean) ** 2, mask)


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Scale to unit variance over masked entries; with shift_mean=False the mean is kept (reward whitening)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


# ---- FIGA (§2) -------------------------------------------------------------------------------------


def figa_weights(
    codes: Tensor, is_eos: Tensor, is_revised: Tensor, ce: Tensor,
    alpha: float, beta: float, gamma: float, tau: float, tau_upper: float = 0.0,
) -> Tensor:
    """Per-token weights w_t of the FIGA table. `is_revised` [B, 1] or [B, T]: row is R = x ⊕ y1 ⊕ EOS.

    Revised rows: insert/replace and EOS → +α, keep → +γ. Initial rows: delete/replace (an EOS labelled
    `replace` by the end-of-response rule included) → −β while the gate is open, everything else → 0.
    Gate: CE ≤ τ (the current official code), or the band τ ≤ CE ≤ tau_upper when tau_upper > 0 (an
    earlier version of that code, 0.6 ≤ CE ≤ 1.0). The gate reads CE without gradient: it selects tokens.
    """
    revised = is_revised.expand_as(codes)
    edited_good = (codes == INSERT) | (codes == REPLACE) | is_eos
    kept_good = (codes == KEEP) & ~is_eos
    ce = ce.detach()
    gate = (ce >= tau) & (ce <= tau_upper) if tau_upper > 0 else ce <= tau
    edited_bad = ((codes == DELETE) | (codes == REPLACE)) & gate
    w = torch.zeros_like(ce)
    w = torch.where(revised & edited_good, torch.full_like(w, alpha), w)
    w = torch.where(revised & kept_good, torch.full_like(w, gamma), w)
    w = torch.where(~revised & edited_bad, torch.full_like(w, -beta), w)
    return w


def figa_loss(ce: Tensor, weights: Tensor, mask: Tensor, normalize: str = "token") -> Tensor:
    """L = Σ w·CE / N with N = #tokens whose w ≠ 0 (token), or the mean over rows of that ratio (sequence)."""
    w = weights * mask
    nonzero = (w != 0).to(ce.dtype)
    if normalize == "token":
        return (w * ce).sum() / nonzero.sum().clamp(min=1)
    per_row_n = nonzero.sum(-1)
    per_row = (w * ce).sum(-1) / per_row_n.clamp(min=1)
    rows = (per_row_n > 0).to(ce.dtype)
    return (per_row * rows).sum() / rows.sum().clamp(min=1)


# ---- Reward models (§3, §5) ------------------------------------------------------------------------


def _reduce(r: Tensor, mask: Tensor, reduce: str) -> Tensor:
    return masked_sum(r, mask, -1) if reduce == "sum" else masked_mean(r, mask, -1)


def edit_span_bt(r1: Tensor, r0: Tensor, u1: Tensor, u0: Tensor, reduce: str = "sum") -> Tensor:
    """−log σ(Σ_{U1} r(y1) − Σ_{U0} r(y0)), mean over pairs; an empty set contributes 0.

    reduce="mean" compares the spans' mean rewards instead (our option): the summed margin grows with
    the span length, so on heavy edits it saturates (correct pairs give no gradient, wrong ones a
    gradient that grows with the span) — the mean keeps one pair's gradient bounded whatever its length.
    """
    return -F.logsigmoid(_reduce(r1, u1, reduce) - _reduce(r0, u0, reduce)).mean()


def full_seq_bt(r1: Tensor, r0: Tensor, mask1: Tensor, mask0: Tensor, reduce: str = "sum") -> Tensor:
    """−log σ(R(x, y1) − R(x, y0)) with R the sum (or, reduce="mean", the mean) of token rewards."""
    return -F.logsigmoid(_reduce(r1, mask1, reduce) - _reduce(r0, mask0, reduce)).mean()


def sequence_bt(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Plain BT on sequence scores [B]."""
    return -F.logsigmoid(chosen - rejected).mean()


def keep_l2(r: Tensor, keep_mask: Tensor) -> Tensor:
    """Mean squared reward of keep tokens (pulls them toward 0 so sums are dominated by edits)."""
    return masked_mean(r.pow(2), keep_mask)


def tlcr_targets(codes: Tensor, is_revised: Tensor) -> Tensor:
    """Soft targets [B, T, 2] as (p_bad, p_good): y1 insert/replace → (0,1), y0 delete/replace → (1,0),
    everything else → (0.5, 0.5)."""
    revised = is_revised.expand_as(codes)
    good = revised & ((codes == INSERT) | (codes == REPLACE))
    bad = ~revised & ((codes == DELETE) | (codes == REPLACE))
    p_good = torch.full(codes.shape, 0.5, device=codes.device)
    p_good = torch.where(good, torch.ones_like(p_good), torch.where(bad, torch.zeros_like(p_good), p_good))
    return torch.stack([1 - p_good, p_good], dim=-1)


def tlcr_loss(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Soft-target cross-entropy of the 2-class token head, averaged over response tokens."""
    ce = -(targets * logits.float().log_softmax(-1)).sum(-1)
    return masked_mean(ce, mask)


def tlcr_reward(logits: Tensor) -> Tensor:
    """r_t = 2·p_good − 1."""
    return 2 * logits.float().softmax(-1)[..., 1] - 1


# ---- DPO and dense DPO (§5) -------------------------------------------------------------------------


def dense_weights(codes: Tensor, gamma_d: float) -> Tensor:
    """γ_d on replace tokens, 1 elsewhere (RLHF-V)."""
    return torch.where(codes == REPLACE, torch.full(codes.shape, gamma_d, device=codes.device),
                       torch.ones(codes.shape, device=codes.device))


def weighted_logp(logp: Tensor, mask: Tensor, weights: Tensor | None = None, reduce: str = "sum") -> Tensor:
    """Σ_t w_t·log π(y_t) over the response, or that sum over Σ_t w_t (weighted mean)."""
    w = mask.to(logp.dtype) if weights is None else weights * mask
    total = (logp * w).sum(-1)
    return total if reduce == "sum" else total / w.sum(-1).clamp(min=1e-8)


def dpo_loss(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor, beta: float
) -> tuple[Tensor, Tensor, Tensor]:
    """−log σ(β[(π_c − ref_c) − (π_r − ref_r)]) per pair, with the implicit rewards (chosen, rejected)."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(chosen_reward - rejected_reward)
    return losses, chosen_reward.detach(), rejected_reward.detach()


# ---- PPO (§4) ----------------------------------------------------------------------------------------


def kl_per_token(logp: Tensor, ref_logp: Tensor, estimator: str = "k1") -> Tensor:
    """k1 = log π − log π_ref; k3 = (ρ − 1) − log ρ with ρ = π_ref / π (unbiased, always ≥ 0)."""
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    return torch.expm1(-log_ratio) + log_ratio


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Advantages and returns over [B, L] response-aligned tensors; positions past the mask are terminal."""
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, cliprange: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate: mean over valid tokens of max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε))."""
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    stats = {
        "clipfrac": masked_mean((clipped > unclipped).float(), mask).detach(),
        "approxkl": (0.5 * masked_mean(log_ratio.pow(2), mask)).detach(),
        "ratio": masked_mean(ratio, mask).detach(),
    }
    return loss, stats


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, cliprange_value: float
) -> tuple[Tensor, Tensor]:
    """0.5·mean(max((V − R)², (clip(V, V_old ± c) − R)²)) and the clipped fraction."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_err = (values - returns).pow(2)
    clipped_err = (clipped_values - returns).pow(2)
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err, clipped_err), mask)
    return loss, masked_mean((clipped_err > unclipped_err).float(), mask).detach()


class AdaptiveKLController:
    """Ziegler et al. (2019): β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon)."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon

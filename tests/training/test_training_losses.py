"""The maths of algorithms.md §2–5 against hand-computed values and plain reference implementations."""

from __future__ import annotations

import math

import pytest
import torch

from training import losses
from training.losses import DELETE, INSERT, KEEP, REPLACE


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# ---- FIGA ------------------------------------------------------------------------------------------


def test_figa_weights_follow_the_table_with_tau_gate():
    # Row 0 is revised R (y1 + EOS), row 1 is initial I (y0 + EOS).
    codes = torch.tensor([[KEEP, INSERT, REPLACE, KEEP, KEEP], [KEEP, DELETE, REPLACE, DELETE, KEEP]])
    is_eos = torch.tensor([[0, 0, 0, 0, 1], [0, 0, 0, 0, 1]], dtype=torch.bool)
    is_revised = torch.tensor([[True], [False]])
    ce = torch.tensor([[0.1, 2.0, 0.3, 0.2, 0.5], [0.1, 0.5, 0.6, 0.7, 0.1]])
    w = losses.figa_weights(codes, is_eos, is_revised, ce, alpha=1.0, beta=0.5, gamma=0.25, tau=0.6)
    expected = torch.tensor([
        [0.25, 1.0, 1.0, 0.25, 1.0],  # keep → γ, insert/replace → α, EOS of R → α
        [0.0, -0.5, -0.5, 0.0, 0.0],  # keep → 0; delete CE 0.5 ≤ τ and replace CE 0.6 ≤ τ → −β;
    ])                                # delete with CE 0.7 > τ → 0; EOS of I → 0
    assert torch.equal(w, expected)


def test_figa_loss_token_mean_divides_by_nonzero_weights():
    ce = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.4, 9.0]])
    w = torch.tensor([[1.0, 0.0, 1.0], [-0.5, 0.0, 0.0]])
    mask = torch.ones_like(ce, dtype=torch.bool)
    # (1·1 + 1·3 − 0.5·0.5) / 3 non-zero weights
    assert losses.figa_loss(ce, w, mask, "token").item() == pytest.approx((1 + 3 - 0.25) / 3)
    # sequence mean: row 0 → 4/2 = 2, row 1 → −0.25/1; mean = 0.875
    assert losses.figa_loss(ce, w, mask, "sequence").item() == pytest.approx((2 - 0.25) / 2)


def test_figa_loss_ignores_rows_without_weights_in_sequence_mean():
    ce = torch.tensor([[2.0, 2.0], [5.0, 5.0]])
    w = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert losses.figa_loss(ce, w, torch.ones_like(ce, dtype=torch.bool), "sequence").item() == pytest.approx(2.0)


# ---- reward models ---------------------------------------------------------------------------------


def test_edit_span_bt_hand_computed_and_empty_sets():
    r1 = torch.tensor([[0.5, 1.0, -2.0], [0.3, 0.3, 0.3]])
    r0 = torch.tensor([[0.2, -1.0, 4.0], [1.0, 2.0, 3.0]])
    u1 = torch.tensor([[False, True, False], [False, False, False]])  # pair 2: pure deletion, U1 empty
    u0 = torch.tensor([[False, True, False], [True, False, True]])
    # pair 1: σ(1.0 − (−1.0)) ; pair 2: σ(0 − (1 + 3))
    expected = -(math.log(sig(2.0)) + math.log(sig(-4.0))) / 2
    assert losses.edit_span_bt(r1, r0, u1, u0).item() == pytest.approx(expected, rel=1e-6)


def test_edit_span_bt_with_empty_u0_trains_on_insertions_only():
    r1 = torch.tensor([[0.0, 1.5]], requires_grad=True)
    r0 = torch.tensor([[7.0, 7.0]], requires_grad=True)
    u1 = torch.tensor([[False, True]])
    u0 = torch.zeros((1, 2), dtype=torch.bool)
    loss = losses.edit_span_bt(r1, r0, u1, u0)
    assert loss.item() == pytest.approx(-math.log(sig(1.5)), rel=1e-6)
    loss.backward()
    assert r1.grad[0, 1] < 0 and r1.grad[0, 0] == 0  # only the inserted token's reward is pushed up
    assert torch.all(r0.grad == 0)


def test_full_sequence_bt_and_keep_l2():
    r1, r0 = torch.tensor([[1.0, 2.0, 9.0]]), torch.tensor([[0.5, 0.5, 9.0]])
    m1, m0 = torch.tensor([[True, True, False]]), torch.tensor([[True, True, False]])
    assert losses.full_seq_bt(r1, r0, m1, m0).item() == pytest.approx(-math.log(sig(3.0 - 1.0)), rel=1e-6)
    keep = torch.tensor([[True, False, True]])
    assert losses.keep_l2(r1, keep).item() == pytest.approx((1 + 81) / 2)


def test_tlcr_targets_and_reward():
    codes = torch.tensor([[KEEP, INSERT, REPLACE], [DELETE, REPLACE, KEEP]])
    targets = losses.tlcr_targets(codes, torch.tensor([[True], [False]]))
    assert targets[0].tolist() == [[0.5, 0.5], [0.0, 1.0], [0.0, 1.0]]
    assert targets[1].tolist() == [[1.0, 0.0], [1.0, 0.0], [0.5, 0.5]]
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p_good = 0.75
    assert losses.tlcr_reward(logits).item() == pytest.approx(0.5)
    loss = losses.tlcr_loss(logits[None], torch.tensor([[[0.0, 1.0]]]), torch.tensor([[True]]))
    assert loss.item() == pytest.approx(-math.log(0.75), rel=1e-6)


# ---- DPO -------------------------------------------------------------------------------------------


def test_dpo_loss_matches_direct_computation():
    pc, pr, rc, rr = torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([-4.0]), torch.tensor([-4.5])
    loss, chosen, rejected = losses.dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert loss.item() == pytest.approx(-math.log(sig(0.1 * ((-3 + 4) - (-5 + 4.5)))), rel=1e-6)
    assert chosen.item() == pytest.approx(0.1) and rejected.item() == pytest.approx(-0.05)


def test_dense_dpo_weights_replace_tokens_in_policy_and_reference_sums():
    codes = torch.tensor([[KEEP, REPLACE, INSERT, KEEP], [REPLACE, DELETE, KEEP, KEEP]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, False]])
    policy = torch.tensor([[-1.0, -2.0, -3.0, -50.0], [-0.5, -1.5, -2.5, -50.0]])
    ref = torch.tensor([[-1.5, -1.0, -3.0, -50.0], [-1.0, -1.0, -2.0, -50.0]])
    w = losses.dense_weights(codes, 1.1)
    pc = losses.weighted_logp(policy[:1], mask[:1], w[:1])
    pr = losses.weighted_logp(policy[1:], mask[1:], w[1:])
    rc = losses.weighted_logp(ref[:1], mask[:1], w[:1])
    rr = losses.weighted_logp(ref[1:], mask[1:], w[1:])
    # direct: chosen Σ = −1 − 1.1·2 − 3 = −6.2 ; ref −1.5 − 1.1·1 − 3 = −5.6
    #         rejected Σ = −1.1·0.5 − 1.5 − 2.5 = −4.55 ; ref −1.1·1 − 1 − 2 = −4.1
    assert pc.item() == pytest.approx(-6.2) and rc.item() == pytest.approx(-5.6)
    assert pr.item() == pytest.approx(-4.55) and rr.item() == pytest.approx(-4.1)
    loss, _, _ = losses.dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert loss.item() == pytest.approx(-math.log(sig(0.5 * ((-6.2 + 5.6) - (-4.55 + 4.1)))), rel=1e-5)
    mean = losses.weighted_logp(policy[:1], mask[:1], w[:1], reduce="mean")
    assert mean.item() == pytest.approx(-6.2 / 3.1)


# ---- PPO -------------------------------------------------------------------------------------------


def reference_gae(rewards, values, lengths, gamma, lam):
    """The textbook loop, one sequence at a time, with V after the last token = 0."""
    advantages = []
    for r, v, n in zip(rewards, values, lengths, strict=True):
        adv, last = [0.0] * len(r), 0.0
        for t in reversed(range(n)):
            next_v = v[t + 1] if t + 1 < n else 0.0
            last = r[t] + gamma * next_v - v[t] + gamma * lam * last
            adv[t] = last
        advantages.append(adv)
    return advantages


def test_gae_matches_plain_loop():
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 6), torch.randn(3, 6)
    lengths = [6, 4, 1]
    mask = torch.arange(6)[None, :] < torch.tensor(lengths)[:, None]
    adv, ret = losses.gae(rewards, values, mask, gamma=0.9, lam=0.95)
    expected = reference_gae(rewards.tolist(), values.tolist(), lengths, 0.9, 0.95)
    assert torch.allclose(adv, torch.tensor(expected), atol=1e-5)
    assert torch.allclose(ret, (torch.tensor(expected) + values) * mask, atol=1e-5)


def test_gae_hand_computed_gamma_one():
    # γ=1, λ=0.5, r=[1, 0], V=[0.5, 0.25]: δ1 = 0 − 0.25 = −0.25 ; δ0 = 1 + 0.25 − 0.5 = 0.75
    adv, _ = losses.gae(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.25]]), torch.ones(1, 2), 1.0, 0.5)
    assert adv.tolist() == [[pytest.approx(0.75 - 0.125), pytest.approx(-0.25)]]


def test_clipped_policy_loss_hand_computed():
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.75, 0.25, 0.55]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, -2.0, 3.0]])
    mask = torch.ones(1, 3)
    loss, stats = losses.policy_loss(new, old, adv, mask, cliprange=0.2)
    # token 1: max(−1.5, −1.2) = −1.2 ; token 2: max(1.0, 1.6) = 1.6 ; token 3: max(−3.3, −3.3) = −3.3
    assert loss.item() == pytest.approx((-1.2 + 1.6 - 3.3) / 3, rel=1e-5)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)
    assert stats["ratio"].item() == pytest.approx((1.5 + 0.5 + 1.1) / 3, rel=1e-5)


def test_clipped_value_loss_hand_computed():
    values, old, returns = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[0.0, 0.0]])
    loss, clipfrac = losses.value_loss(values, old, returns, torch.ones(1, 2), cliprange_value=0.2)
    # token 1: clip(1) = 0.7 → max(1², 0.7²) = 1 ; token 2: clip(0) = 0.3 → max(0², 0.3²) = 0.09 (clipped)
    assert loss.item() == pytest.approx(0.5 * (1 + 0.09) / 2)
    assert clipfrac.item() == pytest.approx(0.5)


def test_kl_per_token_k1_and_k3():
    logp, ref = torch.log(torch.tensor([0.5, 0.2])), torch.log(torch.tensor([0.25, 0.4]))
    assert losses.kl_per_token(logp, ref, "k1").tolist() == pytest.approx([math.log(2), math.log(0.5)])
    # k3 with ρ = π_ref/π: ρ=0.5 → −0.5 + log 2 ; ρ=2 → 1 − log 2
    assert losses.kl_per_token(logp, ref, "k3").tolist() == pytest.approx([-0.5 + math.log(2), 1 - math.log(2)])


def test_whiten_with_and_without_mean_shift():
    x, mask = torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[True, True, False]])
    w = losses.whiten(x, mask)
    assert w[0, :2].tolist() == pytest.approx([-1.0, 1.0], rel=1e-4) and w[0, 2] == 0
    kept = losses.whiten(x, mask, shift_mean=False)
    assert kept[0, :2].tolist() == pytest.approx([1.0, 3.0], rel=1e-4)  # std 1 → unchanged, mean kept


def test_adaptive_kl_controller_moves_toward_target():
    ctl = losses.AdaptiveKLController(0.1, target=6.0, horizon=100)
    ctl.update(current_kl=12.0, n_steps=10)  # error clipped to 0.2
    assert ctl.value == pytest.approx(0.1 * 1.02)
    ctl.update(current_kl=3.0, n_steps=10)  # error −0.5 → clipped to −0.2
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.98)


def test_figa_band_gate_pushes_down_only_inside_tau_and_tau_upper():
    codes = torch.tensor([[DELETE, DELETE, REPLACE, DELETE]])
    ce = torch.tensor([[0.3, 0.6, 0.9, 1.2]])
    args = (codes, torch.zeros_like(codes, dtype=torch.bool), torch.tensor([[False]]), ce)
    official = losses.figa_weights(*args, alpha=1.0, beta=0.5, gamma=0.0, tau=0.6)
    band = losses.figa_weights(*args, alpha=1.0, beta=0.5, gamma=0.0, tau=0.6, tau_upper=1.0)
    assert official.tolist() == [[-0.5, -0.5, 0.0, 0.0]]
    assert band.tolist() == [[0.0, -0.5, -0.5, 0.0]]


def test_span_mean_bounds_the_margin_whatever_the_span_length():
    r1, r0 = torch.full((1, 40), 0.5), torch.full((1, 40), -0.5)
    for n in (1, 10, 40):
        u = torch.zeros(1, 40, dtype=torch.bool)
        u[0, :n] = True
        summed = losses.edit_span_bt(r1, r0, u, u, "sum").item()
        mean = losses.edit_span_bt(r1, r0, u, u, "mean").item()
        assert summed == pytest.approx(-math.log(sig(n * 1.0)), rel=1e-5)
        assert mean == pytest.approx(-math.log(sig(1.0)), rel=1e-5)

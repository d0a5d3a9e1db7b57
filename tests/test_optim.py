"""AdamW against the algorithm written out from PyTorch's documentation, clipping, the schedule.

Every AdamW test runs on the reference (optim.AdamW) and on its fast twin (fast.AdamW, what training uses)."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minigpt import Tensor, fast, nn, optim

BOTH = pytest.mark.parametrize("AdamW", [optim.AdamW, fast.AdamW], ids=["reference", "fast"])


def reference_adamw(p, grads, lr, betas, eps, wd):
    """torch.optim.AdamW's documented algorithm, in float64, one parameter."""
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        p = p - lr[t - 1] * wd * p
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        p = p - lr[t - 1] * m_hat / (np.sqrt(v_hat) + eps)
    return p


@given(seed=st.integers(0, 2**31), wd=st.sampled_from([0.0, 0.1]), beta2=st.sampled_from([0.99, 0.999]),
       steps=st.integers(1, 8))
@BOTH
def test_adamw_matches_the_algorithm(seed, wd, beta2, steps, AdamW):
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal((3, 2))
    grads = [rng.standard_normal((3, 2)) for _ in range(steps)]
    lrs = list(rng.uniform(1e-3, 1e-1, steps))
    p = nn.Parameter(p0.copy())
    opt = AdamW([p], lr=lrs[0], betas=(0.9, beta2), eps=1e-8, weight_decay=wd)
    for g, lr in zip(grads, lrs):
        opt.param_groups[0]["lr"] = lr
        p.grad = g.copy()
        opt.step()
    np.testing.assert_allclose(p.data, reference_adamw(p0, grads, lrs, (0.9, beta2), 1e-8, wd), rtol=1e-10, atol=1e-12)


@BOTH
def test_param_groups_take_their_own_options_and_skip_missing_grads(AdamW):
    a, b, c = (nn.Parameter(np.ones(2)) for _ in range(3))
    opt = AdamW([{"params": [a], "weight_decay": 0.5}, {"params": [b, c], "weight_decay": 0.0}], lr=0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]
    assert opt.param_groups[1]["betas"] == (0.9, 0.999)
    a.grad, b.grad = np.zeros(2), np.zeros(2)
    opt.step()
    np.testing.assert_allclose(a.data, 1 - 0.1 * 0.5)  # only decay: zero gradient
    np.testing.assert_allclose(b.data, 1.0)
    np.testing.assert_allclose(c.data, 1.0)
    assert id(c) not in opt.state


@BOTH
def test_float32_parameters_stay_float32(AdamW):
    p = nn.Parameter(np.ones(4, dtype=np.float32))
    p.grad = np.full(4, 0.5, dtype=np.float32)
    opt = AdamW([p])
    opt.step()
    assert p.dtype == np.float32 and opt.state[id(p)]["exp_avg"].dtype == np.float32


@BOTH
def test_optimizer_state_dict_round_trip_continues_identically(AdamW):
    rng = np.random.default_rng(0)
    p1, p2 = nn.Parameter(rng.standard_normal(3)), None
    opt1 = AdamW([p1], lr=0.01, weight_decay=0.1)
    grads = [rng.standard_normal(3) for _ in range(6)]
    for g in grads[:3]:
        p1.grad = g.copy()
        opt1.step()
    p2 = nn.Parameter(p1.data.copy())
    opt2 = AdamW([p2], lr=0.5)
    sd = opt1.state_dict()
    assert sd["state"][0]["step"] == 3 and sd["param_groups"][0]["params"] == [0]
    opt2.load_state_dict(sd)
    assert opt2.param_groups[0]["lr"] == 0.01
    for g in grads[3:]:
        p1.grad, p2.grad = g.copy(), g.copy()
        opt1.step()
        opt2.step()
    np.testing.assert_array_equal(p1.data, p2.data)


@BOTH
def test_adamw_rejects_bad_options(AdamW):
    p = nn.Parameter(np.ones(2))
    for kwargs in ({"lr": -1.0}, {"betas": (1.0, 0.9)}, {"eps": -1.0}, {"weight_decay": -0.1}):
        with pytest.raises(ValueError):
            AdamW([p], **kwargs)
    with pytest.raises(ValueError):
        AdamW([])


def test_clip_grad_norm_scales_to_max_norm_and_returns_the_norm():
    a, b = nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(1))
    a.grad, b.grad = np.array([3.0, 0.0]), np.array([4.0])
    total = optim.clip_grad_norm_([a, b], 1.0)
    assert total == pytest.approx(5.0)
    assert math.sqrt((a.grad**2).sum() + (b.grad**2).sum()) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(a.grad, [3 / 5, 0], rtol=1e-5)
    a.grad = np.array([0.3, 0.4])
    assert optim.clip_grad_norm_(a, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(a.grad, [0.3, 0.4])  # under the limit: untouched
    assert optim.clip_grad_norm_([nn.Parameter(np.zeros(1))], 1.0) == 0.0


@pytest.mark.parametrize("max_norm", [0.05, 1e3])  # clipping, and not
def test_clip_grad_norm_on_float32_equals_the_formula_in_float64_bit_for_bit(max_norm):
    """The norm of float32 gradients: each parameter's squared norm (a float32 dot product), added
    in Python floats (float64) in parameter order; the factor min(1, max_norm / (total + 1e-6))
    rounded to float32, as torch multiplies by it."""
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(s).astype(np.float32) for s in [(7, 5), (5,), (3, 2, 4), (1,)]]
    params = [nn.Parameter(np.zeros(g.shape, dtype=np.float32)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.copy()
    total = optim.clip_grad_norm_(params, max_norm)
    expected = math.sqrt(sum(float(np.vdot(g.ravel(), g.ravel())) for g in grads))
    assert type(total) is float and total == expected
    factor = np.float32(min(1.0, max_norm / (expected + 1e-6)))
    for p, g in zip(params, grads):
        np.testing.assert_array_equal(p.grad, g * factor)
        assert p.grad.dtype == np.float32


def test_clip_grad_norm_with_a_nan_gradient_makes_every_gradient_nan_as_torch():
    a, b = nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(1))
    a.grad, b.grad = np.array([np.nan, 1.0]), np.array([4.0])
    assert math.isnan(optim.clip_grad_norm_([a, b], 1.0))
    assert np.isnan(a.grad).all() and np.isnan(b.grad).all()  # torch: the factor is NaN, and so is g * NaN


def test_clip_grad_norm_with_an_inf_gradient_zeroes_the_others_as_torch():
    a, b = nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(1))
    a.grad, b.grad = np.array([np.inf, 1.0]), np.array([4.0])
    with np.errstate(invalid="ignore"):  # inf * 0
        assert optim.clip_grad_norm_([a, b], 1.0) == math.inf
    # torch: the factor is max_norm / (inf + 1e-6) = 0, so inf * 0 = NaN and every finite entry 0
    assert np.isnan(a.grad[0]) and a.grad[1] == 0.0 and b.grad[0] == 0.0


def test_clip_grad_norm_without_read_back_returns_the_norm_as_an_array():
    a = nn.Parameter(np.zeros(2))
    a.grad = np.array([3.0, 4.0])
    total = optim.clip_grad_norm_([a], 1.0, read_back=False)
    assert isinstance(total, np.ndarray) and total.shape == () and float(total) == 5.0
    np.testing.assert_allclose(a.grad, [0.6, 0.8], rtol=1e-6)
    assert optim.clip_grad_norm_([nn.Parameter(np.zeros(1))], 1.0, read_back=False) is None  # no gradient


def test_cosine_lr_with_no_room_to_decay_is_the_floor_after_warmup():
    kw = dict(lr=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=50)
    assert optim.cosine_lr(99, **kw) == pytest.approx(1e-3 * 100 / 101)
    assert optim.cosine_lr(100, **kw) == optim.cosine_lr(75, **dict(kw, warmup_iters=0)) == 1e-4


def test_cosine_lr_schedule():
    kw = dict(lr=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=2000)
    assert optim.cosine_lr(0, **kw) == pytest.approx(1e-3 * 1 / 101)
    assert optim.cosine_lr(99, **kw) == pytest.approx(1e-3 * 100 / 101)
    assert optim.cosine_lr(100, **kw) == pytest.approx(1e-3)
    assert optim.cosine_lr(1050, **kw) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))
    assert optim.cosine_lr(2000, **kw) == pytest.approx(1e-4)
    assert optim.cosine_lr(5000, **kw) == 1e-4
    lrs = [optim.cosine_lr(i, **kw) for i in range(100, 2001)]
    assert all(x >= y for x, y in zip(lrs, lrs[1:]))  # decays monotonically


@BOTH
def test_training_a_linear_model_reduces_the_loss(AdamW):
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((64, 3)).astype(np.float32))
    y = x.data @ np.array([1.0, -2.0, 0.5], dtype=np.float32)
    lin = nn.Linear(3, 1)
    opt = AdamW(lin.parameters(), lr=0.05, weight_decay=0.0)
    for _ in range(300):
        loss = ((lin(x).reshape(-1) - Tensor(y)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-3

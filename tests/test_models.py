"""The GPT and the bigram model: nanoGPT's names and shapes, init, causality, gradients, generation."""

import math

import numpy as np
import pytest

import minigpt
from minigpt import Tensor, gradcheck, nn
from minigpt import functional as F


def nanogpt_keys(n_layer, bias=True):
    """The state_dict layout of nanoGPT's GPT (its .attn.bias mask buffers left out), in order."""
    def lin(name):
        return [f"{name}.weight"] + ([f"{name}.bias"] if bias else [])

    def ln(name):
        return [f"{name}.weight"] + ([f"{name}.bias"] if bias else [])

    keys = ["transformer.wte.weight", "transformer.wpe.weight"]
    for i in range(n_layer):
        h = f"transformer.h.{i}"
        keys += ln(f"{h}.ln_1") + lin(f"{h}.attn.c_attn") + lin(f"{h}.attn.c_proj") + ln(f"{h}.ln_2")
        keys += lin(f"{h}.mlp.c_fc") + lin(f"{h}.mlp.c_proj")
    return keys + ln("transformer.ln_f") + ["lm_head.weight"]


def nanogpt_shape(key, c):
    V, T, C = c.vocab_size, c.block_size, c.n_embd
    table = {"wte.weight": (V, C), "wpe.weight": (T, C), "c_attn.weight": (3 * C, C), "c_attn.bias": (3 * C,),
             "attn.c_proj.weight": (C, C), "attn.c_proj.bias": (C,), "c_fc.weight": (4 * C, C), "c_fc.bias": (4 * C,),
             "mlp.c_proj.weight": (C, 4 * C), "mlp.c_proj.bias": (C,), "lm_head.weight": (V, C)}
    for suffix, shape in table.items():
        if key.endswith(suffix):
            return shape
    return (C,)  # layer norms


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_has_exactly_nanogpts_keys_and_shapes(bias):
    cfg = nn.GPTConfig(block_size=16, vocab_size=11, n_layer=3, n_head=2, n_embd=8, bias=bias)
    sd = nn.GPT(cfg).state_dict()
    assert list(sd) == nanogpt_keys(3, bias)
    for k, v in sd.items():
        assert v.shape == nanogpt_shape(k, cfg), k


def test_weight_tying_and_parameter_count():
    cfg = nn.GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128)
    m = nn.GPT(cfg)
    assert m.lm_head.weight is m.transformer.wte.weight
    C, V, L = 128, 65, 4
    per_block = 2 * 2 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)
    assert m.num_params() == V * C + 64 * C + L * per_block + 2 * C
    assert m.num_params(non_embedding=True) == m.num_params() - 64 * C


def test_gpt2_initialisation():
    minigpt.manual_seed(0)
    cfg = nn.GPTConfig(block_size=32, vocab_size=50, n_layer=8, n_head=4, n_embd=64)
    sd = nn.GPT(cfg).state_dict()
    assert sd["transformer.h.0.attn.c_attn.weight"].std() == pytest.approx(0.02, rel=0.05)
    assert sd["transformer.wte.weight"].std() == pytest.approx(0.02, rel=0.1)
    resid = np.concatenate([sd[f"transformer.h.{i}.mlp.c_proj.weight"].ravel() for i in range(8)])
    assert resid.std() == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.05)
    assert all((v == 0).all() for k, v in sd.items() if k.endswith(".bias") and "ln" not in k)
    assert all((v == 1).all() for k, v in sd.items() if "ln" in k and k.endswith("weight"))


def small_gpt(**kw):
    cfg = dict(block_size=8, vocab_size=13, n_layer=2, n_head=2, n_embd=8)
    cfg.update(kw)
    return nn.GPT(nn.GPTConfig(**cfg))


def test_forward_shapes_and_initial_loss():
    m = small_gpt()
    idx = np.random.default_rng(0).integers(0, 13, (3, 8))
    logits, loss = m(idx)
    assert logits.shape == (3, 8, 13) and loss is None and logits.dtype == np.float32
    targets = np.random.default_rng(1).integers(0, 13, (3, 8))
    _, loss = m(idx, targets)
    assert loss.item() == pytest.approx(math.log(13), abs=0.1)  # small init: nearly uniform
    with pytest.raises(ValueError, match="block_size"):
        m(np.zeros((1, 9), dtype=np.int64))


def test_the_whole_model_is_causal():
    m = small_gpt().eval()
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 13, (2, 8))
    a = m(idx)[0].data
    idx2 = idx.copy()
    idx2[:, 5:] = rng.integers(0, 13, (2, 3))
    b = m(idx2)[0].data
    np.testing.assert_array_equal(a[:, :5], b[:, :5])
    assert not np.allclose(a[:, 5:], b[:, 5:])


def test_gpt_gradients_by_central_differences():
    m = small_gpt(vocab_size=5, n_embd=4, n_head=2, n_layer=1, block_size=4).to(dtype=np.float64)
    idx = np.array([[0, 3, 1, 4], [2, 2, 0, 1]])
    targets = np.array([[3, 1, 4, 0], [2, 0, 1, 3]])
    params = dict(m.named_parameters())
    checked = ["transformer.wte.weight", "transformer.h.0.attn.c_attn.weight", "transformer.h.0.mlp.c_fc.bias",
               "transformer.h.0.ln_1.weight", "transformer.ln_f.bias", "transformer.wpe.weight"]

    for name in checked:
        p = params[name]
        fn = lambda value, p=p: _forward_with(m, p, value, idx, targets)  # noqa: E731
        assert gradcheck(fn, [Tensor(p.data.copy(), requires_grad=True)], atol=1e-6), name


def _forward_with(model, param, replacement, idx, targets):
    """The loss with ``param`` replaced, wherever it is used (both ends of a tied weight), by
    the Tensor ``replacement`` that gradcheck perturbs and differentiates."""
    owners = [(mod, attr) for mod in model.modules() for attr, v in vars(mod).items() if v is param]
    for mod, attr in owners:
        object.__setattr__(mod, attr, replacement)
    try:
        return model(idx, targets)[1]
    finally:
        for mod, attr in owners:
            object.__setattr__(mod, attr, param)


def test_dropout_only_in_training_mode():
    m = small_gpt(dropout=0.5)
    idx = np.random.default_rng(0).integers(0, 13, (2, 8))
    m.eval()
    np.testing.assert_array_equal(m(idx)[0].data, m(idx)[0].data)
    m.train()
    assert not np.array_equal(m(idx)[0].data, m(idx)[0].data)


def test_generate_shapes_crop_and_reproducibility():
    m = small_gpt().eval()
    idx = np.array([[1, 2, 3]])
    minigpt.manual_seed(5)
    a = m.generate(idx, 20)
    assert a.shape == (1, 23) and a.dtype == np.int64  # grew past block_size 8: cropped as it went
    np.testing.assert_array_equal(a[:, :3], idx)
    assert a.min() >= 0 and a.max() < 13
    minigpt.manual_seed(5)
    np.testing.assert_array_equal(m.generate(idx, 20), a)
    t = m.generate(Tensor(idx), 2)
    assert isinstance(t, Tensor) and t.shape == (1, 5)


def test_greedy_and_top_k_one_agree():
    m = small_gpt().eval()
    idx = np.array([[4, 4], [0, 7]])
    greedy = m.generate(idx, 6, temperature=0)
    assert (m.generate(idx, 6, top_k=1) == greedy).all()
    logits = m(greedy[:, :-1][:, -8:])[0].data[:, -1]
    np.testing.assert_array_equal(greedy[:, -1], logits.argmax(-1))


def test_sampling_follows_the_distribution():
    from minigpt.nn.gpt import sample_next

    logits = np.log(np.array([[0.7, 0.2, 0.1, 1e-9]]))
    draws = np.array([sample_next(logits)[0] for _ in range(4000)])
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, [0.7, 0.2, 0.1, 0.0], atol=0.03)
    top2 = np.array([sample_next(logits, top_k=2)[0] for _ in range(2000)])
    assert set(top2.tolist()) <= {0, 1}
    assert abs((top2 == 0).mean() - 0.7 / 0.9) < 0.04


def test_bigram_model_is_the_notebooks():
    m = nn.BigramLanguageModel(65)
    assert [k for k in m.state_dict()] == ["token_embedding_table.weight"]
    assert m.token_embedding_table.weight.shape == (65, 65)
    xb = np.random.default_rng(0).integers(0, 65, (4, 8))
    logits, loss = m(xb)
    assert logits.shape == (4, 8, 65) and loss is None
    logits, loss = m(xb, xb)
    assert logits.shape == (32, 65)  # as in the notebook: viewed (B*T, C) when targets are given
    expected = F.cross_entropy(Tensor(m.token_embedding_table.weight.data[xb.reshape(-1)]), xb.reshape(-1))
    assert loss.item() == pytest.approx(expected.item())
    out = m.generate(np.zeros((1, 1), dtype=np.int64), 100)
    assert out.shape == (1, 101)


@pytest.mark.parametrize("kwargs", [{}, {"temperature": 0}, {"temperature": 0.7, "top_k": 4}])
def test_kv_cache_gives_the_same_tokens_as_recomputing(kwargs):
    m = small_gpt(block_size=8).eval()
    idx = np.array([[1, 2, 3], [4, 5, 6]])
    minigpt.manual_seed(11)
    cached = m.generate(idx, 25, **kwargs)  # 28 > block_size 8: fills, then slides the window
    minigpt.manual_seed(11)
    full = m.generate(idx, 25, use_cache=False, **kwargs)
    np.testing.assert_array_equal(cached, full)


def test_kv_cache_logits_match_the_full_forward():
    m = small_gpt(block_size=8).eval()
    idx = np.random.default_rng(2).integers(0, 13, (2, 6))
    caches = [m._new_cache(2) for _ in m.transformer.h]
    step_logits = [m._forward_cached(idx[:, :3], caches, 0).data[:, -1]]
    for t in range(3, 6):
        step_logits.append(m._forward_cached(idx[:, t:t + 1], caches, t).data[:, -1])
    full = m(idx)[0].data
    np.testing.assert_allclose(np.stack(step_logits, 1), full[:, 2:], rtol=1e-5, atol=1e-6)

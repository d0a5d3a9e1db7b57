"""nn.Module and the layers: parameters, modes, state_dict round trips and their errors."""

import numpy as np
import pytest

import minigpt
from minigpt import Tensor, gradcheck, nn
from minigpt import functional as F


class Tiny(nn.Module):
    def __init__(self):
        self.emb = nn.Embedding(5, 4)
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4, bias=False)])
        self.ln = nn.LayerNorm(4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4, 5, bias=False)
        self.head.weight = self.emb.weight  # tied, as GPT ties lm_head to wte

    def forward(self, idx):
        x = self.emb(idx)
        for b in self.blocks:
            x = F.gelu(b(x))
        return self.head(self.drop(self.ln(x)))


def test_named_parameters_are_dotted_unique_and_in_order():
    m = Tiny()
    names = [n for n, _ in m.named_parameters()]
    assert names == ["emb.weight", "blocks.0.weight", "blocks.0.bias", "blocks.1.weight",
                     "ln.weight", "ln.bias"]
    assert m.num_params() == 5 * 4 + 16 + 4 + 16 + 4 + 4
    assert list(m.state_dict()) == names + ["head.weight"]  # the tied pair both appear
    assert m.state_dict()["head.weight"] is m.state_dict()["emb.weight"]


def test_layer_shapes_and_init():
    lin = nn.Linear(3, 7)
    assert lin.weight.shape == (7, 3) and lin.bias.shape == (7,)
    assert np.abs(lin.weight.data).max() <= 1 / np.sqrt(3)
    assert nn.Linear(3, 7, bias=False).bias is None
    ln = nn.LayerNorm(6, bias=False)
    np.testing.assert_array_equal(ln.weight.data, 1.0)
    assert ln.bias is None and [n for n, _ in ln.named_parameters()] == ["weight"]
    assert nn.Embedding(10, 3).weight.dtype == np.float32
    assert "Linear(in_features=3, out_features=7, bias=True)" in repr(lin)


def test_train_eval_switch_every_module():
    m = Tiny()
    m.eval()
    assert not any(x.training for x in m.modules())
    x = m(np.array([[1, 2, 3]]))
    np.testing.assert_array_equal(x.data, m(np.array([[1, 2, 3]])).data)  # dropout off: deterministic
    m.train()
    assert all(x.training for x in m.modules())


def test_gradients_reach_every_parameter_and_zero_grad_clears_them():
    m = Tiny()
    m.eval()
    out = m(np.array([[0, 1, 4]]))
    F.cross_entropy(out, np.array([[1, 2, 3]])).backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_layers_gradcheck_through_modules():
    lin = nn.Linear(3, 2).to(dtype=np.float64)
    x = Tensor(np.random.default_rng(0).standard_normal((4, 3)), requires_grad=True)
    assert gradcheck(lambda t, w, b: F.linear(t, w, b), [x, lin.weight, lin.bias])


def test_state_dict_round_trip():
    a, b = Tiny(), Tiny()
    assert not np.array_equal(a.emb.weight.data, b.emb.weight.data)
    result = b.load_state_dict({k: v.copy() for k, v in a.state_dict().items()})
    assert result.missing_keys == [] and result.unexpected_keys == []
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        np.testing.assert_array_equal(va, vb)
    assert b.head.weight is b.emb.weight  # loading keeps the tie


def test_load_state_dict_names_a_missing_entry():
    sd = Tiny().state_dict()
    del sd["blocks.0.bias"]
    with pytest.raises(RuntimeError, match=r"missing key\(s\): blocks\.0\.bias"):
        Tiny().load_state_dict(sd)
    assert Tiny().load_state_dict(sd, strict=False).missing_keys == ["blocks.0.bias"]


def test_load_state_dict_names_an_unexpected_entry():
    sd = dict(Tiny().state_dict())
    sd["blocks.7.weight"] = np.zeros((4, 4))
    with pytest.raises(RuntimeError, match=r"unexpected key\(s\): blocks\.7\.weight"):
        Tiny().load_state_dict(sd)


def test_load_state_dict_names_a_misshaped_entry_and_changes_nothing():
    m = Tiny()
    before = m.ln.weight.data.copy()
    sd = {k: v.copy() + 1 for k, v in Tiny().state_dict().items()}
    sd["blocks.1.weight"] = np.zeros((4, 3))
    with pytest.raises(RuntimeError, match=r"size mismatch for blocks\.1\.weight.*\(4, 3\).*\(4, 4\)"):
        m.load_state_dict(sd, strict=False)
    np.testing.assert_array_equal(m.ln.weight.data, before)


def test_load_state_dict_casts_to_the_parameter_dtype():
    m = Tiny()
    sd = {k: v.astype(np.float64) for k, v in m.state_dict().items()}
    m.load_state_dict(sd)
    assert all(p.dtype == np.float32 for p in m.parameters())


def test_to_casts_in_place_and_returns_the_module():
    m = Tiny()
    assert m.to(dtype=np.float64) is m
    assert all(p.dtype == np.float64 for p in m.parameters())
    assert m.head.weight is m.emb.weight


def test_init_follows_manual_seed():
    minigpt.manual_seed(3)
    a = Tiny().state_dict()
    minigpt.manual_seed(3)
    b = Tiny().state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_module_moves_to_device(device):
    m = Tiny().to(device)
    assert all(p.device == device for p in m.parameters())
    m.eval()
    out = m(np.array([[1, 2]]))
    assert out.device == device

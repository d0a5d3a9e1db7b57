"""Every exercise's checker is itself checked: it fails on the untouched blank, names each planted
mistake, and passes with the reference op plugged in through the same file a learner edits."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from minigpt import exercises

REPO = Path(__file__).resolve().parents[1]
HEADER = "import numpy as np\nfrom minigpt import Tensor\nfrom minigpt import functional as F\n\n"

# the reference, through the learner's interface: each body calls minigpt's reference op
SOLUTIONS = {
    "linear": """
def forward(x, W, b):
    return x @ W.T + b

def backward(x, W, b, dy):
    tx, tW, tb = (Tensor(a, requires_grad=True) for a in (x, W, b))
    F.linear(tx, tW, tb).backward(dy)
    return tx.grad, tW.grad, tb.grad
""",
    "embedding": """
def forward(idx, W):
    return W[idx]

def backward(idx, W, dout):
    tW = Tensor(W, requires_grad=True)
    F.embedding(idx, tW).backward(dout)
    return tW.grad
""",
    "softmax": """
def forward(x):
    return F.softmax(Tensor(x)).data

def backward(y, dy):
    from minigpt.functional import softmax_backward
    return softmax_backward(y, dy, axis=-1)
""",
    "cross_entropy": """
def forward(logits, targets):
    return float(F.cross_entropy(Tensor(logits), targets).data)

def backward(logits, targets):
    t = Tensor(logits, requires_grad=True)
    F.cross_entropy(t, targets).backward()
    return t.grad
""",
    "layer_norm": """
def forward(x, w, b):
    return F.layer_norm(Tensor(x), Tensor(w), Tensor(b)).data

def backward(x, w, b, dy):
    tx, tw, tb = (Tensor(a, requires_grad=True) for a in (x, w, b))
    F.layer_norm(tx, tw, tb).backward(dy)
    return tx.grad, tw.grad, tb.grad
""",
    "gelu": """
def forward(x):
    return F.gelu(Tensor(x)).data

def backward(x, dy):
    t = Tensor(x, requires_grad=True)
    F.gelu(t).backward(dy)
    return t.grad
""",
    "adamw": """
from minigpt import optim

def step(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
    param = Tensor(p.copy(), requires_grad=True)
    param.grad = g.copy()
    opt = optim.AdamW([param], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
    state = opt.init_state(param)
    state.update(step=t - 1, exp_avg=m.copy(), exp_avg_sq=v.copy())
    opt.step()
    return param.data, state["exp_avg"], state["exp_avg_sq"]
""",
    "attention": """
def forward(q, k, v):
    return F.scaled_dot_product_attention(Tensor(q[None, None]), Tensor(k[None, None]), Tensor(v[None, None])).data[0, 0]

def backward(q, k, v, dy):
    tq, tk, tv = (Tensor(a[None, None], requires_grad=True) for a in (q, k, v))
    F.scaled_dot_product_attention(tq, tk, tv).backward(dy[None, None])
    return tq.grad[0, 0], tk.grad[0, 0], tv.grad[0, 0]
""",
}
SOLUTIONS["fix_layer_norm"] = SOLUTIONS["layer_norm"]
SOLUTIONS["fix_softmax"] = SOLUTIONS["softmax"]
SOLUTIONS["fix_cross_entropy"] = SOLUTIONS["cross_entropy"]
DRILLS = {"fix_layer_norm": "the mean and the variance are taken as constants",  # the bug each drill holds
          "fix_softmax": "the term -y * sum(y * dy) is missing", "fix_cross_entropy": "the 1/N of the mean is missing"}
SOLUTIONS["multihead"] = """
def _split(a, nh):
    T, C = a.shape
    return a.reshape(T, nh, C // nh).transpose(1, 0, 2)[None]

def forward(q, k, v, n_head):
    y = F.scaled_dot_product_attention(*(Tensor(_split(a, n_head)) for a in (q, k, v))).data
    return y[0].transpose(1, 0, 2).reshape(q.shape)

def backward(q, k, v, n_head, dy):
    ts = [Tensor(_split(a, n_head), requires_grad=True) for a in (q, k, v)]
    F.scaled_dot_product_attention(*ts).backward(_split(dy, n_head))
    return tuple(t.grad[0].transpose(1, 0, 2).reshape(q.shape) for t in ts)
"""
SOLUTIONS["numerical_gradient"] = """
def numerical_gradient(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        keep = x[i]
        x[i] = keep + h
        up = f(x)
        x[i] = keep - h
        down = f(x)
        x[i] = keep
        g[i] = (up - down) / (2 * h)
    return g
"""
SOLUTIONS["bigram"] = """
def probabilities(ids, V):
    counts = np.ones((V, V))
    np.add.at(counts, (ids[:-1], ids[1:]), 1)
    return counts / counts.sum(axis=1, keepdims=True)

def nll(P, ids):
    return -np.log(P[ids[:-1], ids[1:]]).mean()
"""
SOLUTIONS["averaging"] = """
def with_matmul(x):
    T = x.shape[1]
    w = np.tril(np.ones((T, T)))
    return (w / w.sum(1, keepdims=True)) @ x

def with_softmax(x):
    T = x.shape[1]
    scores = np.where(np.tril(np.ones((T, T), dtype=bool)), 0.0, -np.inf)
    return F.softmax(Tensor(scores)).data @ x
"""
# one head of attention written out by hand: the lines MASK, SCALE and SOFTMAX_BACKWARD are planted on
ATTENTION_BY_HAND = """
def _att(q, k):
    T, hs = q.shape
    scores = q @ k.T / np.sqrt(hs)  # SCALE
    scores = np.where(np.tril(np.ones((T, T), dtype=bool)), scores, -np.inf)  # MASK
    e = np.exp(scores - scores.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)

def forward(q, k, v):
    return _att(q, k) @ v

def backward(q, k, v, dy):
    att = _att(q, k)
    dv = att.T @ dy
    datt = dy @ v.T
    dscores = att * (datt - (att * datt).sum(1, keepdims=True))  # SOFTMAX_BACKWARD
    scale = 1 / np.sqrt(q.shape[1])
    return dscores @ k * scale, dscores.T @ q * scale, dv
"""
# AdamW written out by hand, as a learner would: DECAY, CORRECT and DECAY_INTO_GRADIENT are the planted lines
ADAMW_BY_HAND = """
def step(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
    p = p * (1 - lr * weight_decay)  # DECAY
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)  # CORRECT
    return p - lr * m_hat / (np.sqrt(v_hat) + eps), m, v
"""
LAYER_NORM_CONSTANTS = SOLUTIONS["layer_norm"].replace(
    "    return tx.grad, tw.grad, tb.grad",
    "    return dy * w / np.sqrt(x.var(-1, keepdims=True) + 1e-5), tw.grad, tb.grad")

# (exercise, what the learner wrote instead, words the diagnosis must contain)
MISTAKES = [
    ("bigram", SOLUTIONS["bigram"].replace("counts.sum(axis=1, keepdims=True)", "counts.sum(axis=0, keepdims=True)"),
     "each column sums to 1, not each row"),
    ("bigram", SOLUTIONS["bigram"].replace("np.ones((V, V))", "np.zeros((V, V))").replace(
        "return counts / counts.sum(axis=1, keepdims=True)",
        "return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)"), "the +1 is missing"),
    ("bigram", SOLUTIONS["bigram"].replace(".mean()", ".sum()"), "the sum, not the mean"),
    ("averaging", SOLUTIONS["averaging"].replace("w = np.tril(np.ones((T, T)))", "w = np.ones((T, T))"),
     "the future is included"),
    ("averaging", SOLUTIONS["averaging"].replace("return (w / w.sum(1, keepdims=True)) @ x", "return w @ x"),
     "the sum, not the mean"),
    ("averaging", SOLUTIONS["averaging"].replace(
        "    scores = np.where(np.tril(np.ones((T, T), dtype=bool)), 0.0, -np.inf)\n"
        "    return F.softmax(Tensor(scores)).data @ x",
        "    return (F.softmax(Tensor(np.zeros((T, T)))).data * np.tril(np.ones((T, T)))) @ x"),
     "the mask is applied after the softmax"),
    ("linear", SOLUTIONS["linear"].replace("return tx.grad, tW.grad, tb.grad", "return dy @ W, x.T @ dy, dy.sum(0)"),
     "dW has shape (4, 3), expected (3, 4): the gradient is transposed"),
    ("linear", SOLUTIONS["linear"].replace("return tx.grad, tW.grad, tb.grad", "return dy @ W, dy.T @ x, dy"),
     "db has shape (5, 3), expected (3,): the sum over the batch axis is missing"),
    ("linear", SOLUTIONS["linear"].replace("return tx.grad, tW.grad, tb.grad", "return dy @ W, dy.T @ x, dy.mean(0)"),
     "db is wrong: the largest error"),
    ("linear", SOLUTIONS["linear"].replace("return tx.grad, tW.grad, tb.grad", "return dy @ W, dy.T @ x"),
     "backward must return a tuple of 3"),
    ("embedding", SOLUTIONS["embedding"].replace(
        "    tW = Tensor(W, requires_grad=True)\n    F.embedding(idx, tW).backward(dout)\n    return tW.grad",
        "    dW = np.zeros_like(W)\n    dW[idx] = dout\n    return dW"),
     "repeated indices lose their gradients"),
    ("softmax", SOLUTIONS["softmax"].replace("return F.softmax(Tensor(x)).data",
                                             "return np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True)"),
     "the max-shift is left out"),
    ("softmax", SOLUTIONS["softmax"].replace("    from minigpt.functional import softmax_backward\n"
                                             "    return softmax_backward(y, dy, axis=-1)", "    return y * dy"),
     "the term -y * sum(y * dy) is missing"),
    ("softmax", SOLUTIONS["softmax"].replace("    from minigpt.functional import softmax_backward\n"
                                             "    return softmax_backward(y, dy, axis=-1)", "    return y * (1 - y) * dy"),
     "only the diagonal of the Jacobian"),
    ("cross_entropy", SOLUTIONS["cross_entropy"].replace("    return t.grad", "    return t.grad * len(targets)"),
     "the 1/N of the mean is missing"),
    ("cross_entropy", SOLUTIONS["cross_entropy"].replace("    return t.grad", "    return -t.grad"),
     "the sign is flipped"),
    ("cross_entropy", SOLUTIONS["cross_entropy"].replace(
        "    return float(F.cross_entropy(Tensor(logits), targets).data)",
        "    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)\n"
        "    return -np.log(p[np.arange(len(targets)), targets]).mean()"),
     "the max-shift is left out"),
    ("cross_entropy", SOLUTIONS["cross_entropy"].replace(
        "    t = Tensor(logits, requires_grad=True)\n    F.cross_entropy(t, targets).backward()\n    return t.grad",
        "    p = np.exp(logits - logits.max(1, keepdims=True))\n    p /= p.sum(1, keepdims=True)\n"
        "    return p / len(targets)"),
     "the one-hot of the targets is not subtracted"),
    ("layer_norm", LAYER_NORM_CONSTANTS, "the mean and the variance are taken as constants"),
    ("layer_norm", SOLUTIONS["layer_norm"].replace("    return tx.grad, tw.grad, tb.grad",
                                                   "    return tx.grad, tw.grad, dy"),
     "db has shape (5, 6), expected (6,): the sum over the rows is missing"),
    ("gelu", SOLUTIONS["gelu"].replace("    t = Tensor(x, requires_grad=True)\n    F.gelu(t).backward(dy)\n    return t.grad",
                                       "    return 0.5 * (1 + np.tanh(F.GELU_K * (x + F.GELU_A * x**3))) * dy"),
     "the term through tanh is missing"),
    ("attention", ATTENTION_BY_HAND.replace(
        "    scores = np.where(np.tril(np.ones((T, T), dtype=bool)), scores, -np.inf)  # MASK\n", "").replace(
        "    return e / e.sum(1, keepdims=True)",
        "    return e / e.sum(1, keepdims=True) * np.tril(np.ones((T, T)))"), "the mask is applied after the softmax"),
    ("attention", ATTENTION_BY_HAND.replace(
        "    scores = np.where(np.tril(np.ones((T, T), dtype=bool)), scores, -np.inf)  # MASK\n", ""),
     "no causal mask"),
    ("attention", ATTENTION_BY_HAND.replace("scores = q @ k.T / np.sqrt(hs)", "scores = q @ k.T"),
     "the 1/sqrt(hs) scale is missing"),
    ("attention", ATTENTION_BY_HAND.replace("    att = _att(q, k)\n    dv", "    att = _att(q, k)\n    full = np.exp(q @ k.T "
                                            "/ np.sqrt(q.shape[1])); full /= full.sum(1, keepdims=True)\n    dv").replace(
        "dscores = att * (datt - (att * datt).sum(1, keepdims=True))",
        "dscores = full * (datt - (full * datt).sum(1, keepdims=True))"),
     "gradient flows into the masked positions"),
    ("attention", ATTENTION_BY_HAND.replace("    scale = 1 / np.sqrt(q.shape[1])", "    scale = 1.0"),
     "the 1/sqrt(hs) scale is missing from dq"),
    ("numerical_gradient", SOLUTIONS["numerical_gradient"].replace("x[i] = keep - h\n        down = f(x)",
                                                                   "x[i] = keep\n        down = f(x)").replace(
        "(up - down) / (2 * h)", "(up - down) / h"), "a one-sided difference"),
    ("numerical_gradient", SOLUTIONS["numerical_gradient"].replace("(up - down) / (2 * h)", "(up - down) / h"),
     "divided by h instead of 2h"),
    ("numerical_gradient", SOLUTIONS["numerical_gradient"].replace("        x[i] = keep\n        g[i]", "        g[i]"),
     "changes its argument 2 in place"),
    ("multihead", SOLUTIONS["multihead"].replace(
        "    return a.reshape(T, nh, C // nh).transpose(1, 0, 2)[None]", "    return a.reshape(nh, T, C // nh)[None]").replace(
        "    return y[0].transpose(1, 0, 2).reshape(q.shape)", "    return y[0].reshape(q.shape)"),
     "the heads are split by rows"),
    ("multihead", SOLUTIONS["multihead"].replace(
        "    y = F.scaled_dot_product_attention(*(Tensor(_split(a, n_head)) for a in (q, k, v))).data",
        "    y = F.scaled_dot_product_attention(*(Tensor(_split(a, n_head)) for a in (q, k, v)),\n"
        "                                       scale=1 / np.sqrt(q.shape[1])).data"),
     "the scale uses C"),
    ("adamw", ADAMW_BY_HAND.replace("m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)", "m_hat, v_hat = m, v"),
     "the bias correction is missing"),
    ("adamw", ADAMW_BY_HAND.replace("    p = p * (1 - lr * weight_decay)  # DECAY\n", "    g = g + weight_decay * p\n"),
     "the weight decay goes through the gradient"),
    ("adamw", ADAMW_BY_HAND.replace("p * (1 - lr * weight_decay)", "p * (1 - weight_decay)"),
     "the weight decay is not scaled by the learning rate"),
    ("adamw", ADAMW_BY_HAND.replace("m = beta1 * m + (1 - beta1) * g", "m = beta1 * m + g"),
     "the new m is wrong"),
    ("adamw", ADAMW_BY_HAND.replace("np.sqrt(v_hat) + eps", "np.sqrt(v_hat + eps)"),
     "eps is added inside the square root"),
    ("adamw", ADAMW_BY_HAND.replace("    p = p * (1 - lr * weight_decay)  # DECAY\n", "    p *= 1 - lr * weight_decay\n"),
     "step changes its argument 1 in place"),
    ("linear", SOLUTIONS["linear"].replace("return tx.grad, tW.grad, tb.grad",
                                           "return [tx.grad.astype(np.float32), tW.grad, tb.grad]"),
     "dx is float32: compute in float64"),
    ("linear", SOLUTIONS["linear"].replace("return tx.grad, tW.grad, tb.grad", "raise SystemExit(0)"),
     "backward called exit()"),
    ("cross_entropy", SOLUTIONS["cross_entropy"].replace(
        "    t = Tensor(logits, requires_grad=True)\n    F.cross_entropy(t, targets).backward()\n    return t.grad",
        "    p = np.exp(logits)\n    p /= p.sum(1, keepdims=True)\n    p[np.arange(len(targets)), targets] -= 1\n"
        "    return p / len(targets)"),
     "backward gives inf or NaN for logits near 1000"),
]


def write(tmp_path, name, body):
    (tmp_path / f"{name}.py").write_text(HEADER + body)
    return tmp_path


def test_the_track_is_in_the_lecture_order_and_every_exercise_has_a_blank():
    assert list(exercises.TRACK) == ["bigram", "averaging", "linear", "embedding", "softmax", "cross_entropy", "layer_norm", "gelu",
                                     "attention", "multihead", "adamw", "numerical_gradient", "fix_softmax",
                                     "fix_cross_entropy", "fix_layer_norm"]
    for name in exercises.TRACK:
        assert (exercises.BLANKS / f"{name}.py").is_file()


@pytest.mark.parametrize("name", list(exercises.TRACK))
def test_the_untouched_blank_fails(name, tmp_path):
    exercises.copy_blanks(tmp_path)
    result = exercises.check(name, tmp_path)
    expected = DRILLS.get(name, "not implemented yet")  # a drill holds one bug; an exercise, nothing yet
    assert not result.passed and expected in result.message, result.message


def test_attention_written_by_hand_passes(tmp_path):
    assert exercises.check("attention", write(tmp_path, "attention", ATTENTION_BY_HAND)).passed


@pytest.mark.parametrize("name", list(exercises.TRACK))
def test_the_reference_plugged_into_the_file_passes(name, tmp_path):
    result = exercises.check(name, write(tmp_path, name, SOLUTIONS[name]))
    assert result.passed, result.message
    assert "all checks pass. Compare with the reference: " in result.message


@pytest.mark.parametrize("name, body, diagnosis", MISTAKES, ids=[f"{m[0]}-{i}" for i, m in enumerate(MISTAKES)])
def test_each_planted_mistake_is_found_and_named(name, body, diagnosis, tmp_path):
    assert body != SOLUTIONS[name]  # the mistake was planted
    result = exercises.check(name, write(tmp_path, name, body))
    assert not result.passed and diagnosis in result.message, result.message


def test_a_list_for_a_tuple_passes(tmp_path):
    body = SOLUTIONS["linear"].replace("return tx.grad, tW.grad, tb.grad", "return [tx.grad, tW.grad, tb.grad]")
    assert exercises.check("linear", write(tmp_path, "linear", body)).passed


def test_adamw_written_by_hand_passes(tmp_path):
    assert exercises.check("adamw", write(tmp_path, "adamw", ADAMW_BY_HAND)).passed


def test_a_backward_consistent_with_nothing_is_caught_by_gradcheck(tmp_path):
    """A backward that matches the reference at the checked shapes but not the learner's own
    forward elsewhere cannot hide: gradcheck compares it with the forward's central differences."""
    body = SOLUTIONS["softmax"].replace("def forward(x):\n    return F.softmax(Tensor(x)).data",
                                        "def forward(x):\n    y = F.softmax(Tensor(x)).data\n"
                                        "    return y if x.shape != (3, 4) or abs(x).max() > 100 else y * 1.001")
    result = exercises.check("softmax", write(tmp_path, "softmax", body))
    assert not result.passed and result.message.startswith("gradcheck:"), result.message


def test_copying_never_overwrites_an_edited_file(tmp_path):
    (tmp_path / "linear.py").write_text("# my work\n")
    done = dict(exercises.copy_blanks(tmp_path))
    assert done[str(tmp_path / "linear.py")] == "kept" and (tmp_path / "linear.py").read_text() == "# my work\n"
    assert done[str(tmp_path / "softmax.py")] == "copied"


def minigpt(*args, cwd):
    return subprocess.run([sys.executable, "-m", "minigpt", *args], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)


def test_the_commands_exit_0_pass_1_mistake_2_bad_input(tmp_path):
    assert minigpt("exercises", cwd=tmp_path).returncode == 0
    r = minigpt("check", "linear", cwd=tmp_path)
    assert r.returncode == 1 and "not implemented yet" in r.stdout
    write(tmp_path / "exercises", "linear", SOLUTIONS["linear"])
    r = minigpt("check", "linear", cwd=tmp_path)
    assert r.returncode == 0 and "all checks pass" in r.stdout
    for bad in (["check", "nope"], ["check", "linear", "--dir", "nowhere"], ["check"]):
        r = minigpt(*bad, cwd=tmp_path)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (bad, r.stderr)
    (tmp_path / "exercises" / "softmax.py").write_text("def forward(x:\n")
    r = minigpt("check", "softmax", cwd=tmp_path)
    assert r.returncode == 2 and "does not import" in r.stderr
    r = minigpt("check", "--list", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.splitlines()[0].split()[:2] == ["1.", "bigram"]

"""Optimisation: ``AdamW``, ``clip_grad_norm_`` and nanoGPT's ``cosine_lr`` schedule."""

from __future__ import annotations

import math
from typing import Any, Iterable

from minigpt import backend
from minigpt.tensor import Tensor, iter_tensors


class AdamW:
    """Adam with decoupled weight decay, exactly PyTorch's ``torch.optim.AdamW``.

    For each parameter p with gradient g, at step t (counted per parameter):
        p ← p · (1 - lr · wd)                       decoupled weight decay
        m ← m + (1 - β1) (g - m)                    first moment (torch's lerp form)
        v ← β2 v + (1 - β2) g²                      second moment
        p ← p - (lr / (1 - β1ᵗ)) · m / (√v / √(1 - β2ᵗ) + ε)
    ``params`` is an iterable of Tensors or of dicts ``{"params": [...], "lr": ..., ...}``
    (param groups; missing options take the defaults). Each group's ``"lr"`` can be set
    between steps (that is how a schedule drives it). Parameters without ``.grad`` are skipped.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        self.defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        check_hyperparameters(self.defaults)
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        self.param_groups: list[dict[str, Any]] = []
        for group in params:
            group = {**self.defaults, **group, "params": list(iter_tensors(group["params"]))}
            group["betas"] = tuple(group["betas"])
            check_hyperparameters(group)
            self.param_groups.append(group)
        seen: set[int] = set()
        for p in self._params():
            if id(p) in seen:
                raise ValueError("a parameter appears in more than one place in the optimizer's groups")
            seen.add(id(p))
        self.state: dict[int, dict[str, Any]] = {}  # id(param) -> {"step", "exp_avg", "exp_avg_sq"}

    def _params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self) -> None:
        """Forget every gradient (set to None, as torch's default)."""
        for p in self._params():
            p.grad = None

    def init_state(self, p: Tensor) -> dict[str, Any]:
        """The state of parameter ``p``, made on its first step: the step count and the two
        moments m and v, zeros of p's shape."""
        if id(p) not in self.state:
            self.state[id(p)] = {"step": 0, "exp_avg": p.xp.zeros_like(p.data), "exp_avg_sq": p.xp.zeros_like(p.data)}
        return self.state[id(p)]

    def step(self) -> None:
        """One AdamW update of every parameter that has a gradient."""
        for group in self.param_groups:
            self.update_group(group)

    def update_group(self, group: dict[str, Any]) -> None:
        """The update of the class docstring, parameter by parameter, in place."""
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.init_state(p)
            state["step"] += 1
            t, g, m, v = state["step"], p.grad, state["exp_avg"], state["exp_avg_sq"]
            p.data *= 1.0 - lr * wd  # decoupled weight decay
            m += (g - m) * (1.0 - beta1)  # first moment: a running mean of g
            v *= beta2  # second moment: a running mean of g²
            v += (g * g) * (1.0 - beta2)
            denom = p.xp.sqrt(v) / math.sqrt(1.0 - beta2**t) + eps  # sqrt(v̂) + eps, v̂ = v / (1 - β2ᵗ)
            p.data -= (m / denom) * (lr / (1.0 - beta1**t))  # p -= lr * m̂ / denom, m̂ = m / (1 - β1ᵗ)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """torch's layout: {"state": {index: {...}}, "param_groups": [{..., "params": [index, ...]}]}.

        Parameters are numbered in the order of the groups; arrays are the live buffers.
        """
        index = {id(p): i for i, p in enumerate(self._params())}
        state = {index[k]: dict(v) for k, v in self.state.items() if k in index}
        groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": [index[id(p)] for p in g["params"]]} for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (buffers are copied to each parameter's device)."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"optimizer state has {len(groups)} param groups, this optimizer has "
                             f"{len(self.param_groups)}")
        for saved, group in zip(groups, self.param_groups):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError("optimizer state does not match the parameter groups' sizes")
        params = self._params()
        new_state: dict[int, dict[str, Any]] = {}
        for key, st in state_dict["state"].items():
            p = params[int(key)]
            entry = {"step": int(st["step"])}
            for name in ("exp_avg", "exp_avg_sq"):
                buf = backend.move(backend.unwrap(st[name]), p.device)
                if tuple(buf.shape) != p.shape:
                    raise ValueError(f"optimizer state for parameter {key} has shape {tuple(buf.shape)}, "
                                     f"the parameter has {p.shape}")
                entry[name] = p.xp.array(buf, dtype=p.dtype, copy=True)
            new_state[id(p)] = entry
        for saved, group in zip(groups, self.param_groups):
            group.update({k: v for k, v in saved.items() if k != "params"})
            group["betas"] = tuple(group["betas"])
        self.state = new_state


def check_hyperparameters(group: dict[str, Any]) -> None:
    """Raise ValueError for a negative or NaN setting, as torch does for a negative one (a NaN would
    pass a test like ``lr < 0`` and then turn every weight into NaN at the first step)."""
    lr, eps, betas, wd = group["lr"], group["eps"], tuple(group["betas"]), group["weight_decay"]
    if not lr >= 0.0:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not eps >= 0.0:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if len(betas) != 2 or not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
        raise ValueError(f"Invalid betas: {betas} (each must lie in [0, 1))")
    if not wd >= 0.0:
        raise ValueError(f"Invalid weight_decay value: {wd}")


def clip_grad_norm_(params: Iterable[Tensor] | Tensor, max_norm: float, norm_type: float = 2.0, *,
                    read_back: bool = True) -> Any:
    """Scale all gradients together so that their global norm is at most ``max_norm``.

    total = (sum over every gradient element of |g|^norm_type)^(1/norm_type)
    (the max of |g| for norm_type inf); every gradient is multiplied by
    min(1, max_norm / (total + 1e-6)), as torch. A NaN gradient makes the factor, and so every
    gradient, NaN; an infinite one makes the factor 0, so every other gradient becomes 0 and the
    infinite entries NaN (inf · 0), as torch's. Returns ``total`` before clipping, as a float.

    ``read_back=False`` returns it as a 0-d array on the gradients' device instead (None when no
    parameter has a gradient): reading a GPU's value stops the host until the GPU gets there, so
    the training loop does not. The factor is computed on the device too, and every gradient
    multiplied by it, 1.0 included (x · 1.0 == x exactly), so nothing waits to decide whether to
    clip. The squared norms add up in float64, one parameter after another: exactly as a Python
    sum of floats would."""
    grads = [p.grad for p in iter_tensors(params) if p.grad is not None]
    if not grads:
        return 0.0 if read_back else None
    xp = backend.get_array_module(grads[0])
    if norm_type == math.inf:
        per_param = [xp.abs(g).max() for g in grads]
        total = xp.stack(per_param).astype(xp.float64).max()
    else:
        if norm_type == 2.0:
            per_param = [xp.vdot(g.ravel(), g.ravel()) for g in grads]  # sum of g², one BLAS call each
        else:
            per_param = [(xp.abs(g) ** norm_type).sum() for g in grads]
        total = xp.cumsum(xp.stack(per_param).astype(xp.float64))[-1]  # added in order, in float64
        total = xp.sqrt(total) if norm_type == 2.0 else total ** (1.0 / norm_type)
    coef = clip_coefficient(total, max_norm)
    factor: dict[Any, Any] = {}  # the factor rounded to each gradient dtype, as torch: g *= coef
    for g in grads:
        if g.dtype not in factor:
            factor[g.dtype] = coef.astype(g.dtype)
        g *= factor[g.dtype]
    return float(total) if read_back else backend.ensure_array(total)  # NumPy gives a scalar: a 0-d array


def clip_coefficient(total: Any, max_norm: float) -> Any:
    """min(1, max_norm / (total + 1e-6)): what every gradient is multiplied by, given their total
    norm (a 0-d float64 array; the result is one too, on the same device; NaN for a NaN norm)."""
    return backend.get_array_module(total).minimum(max_norm / (total + 1e-6), 1.0)


def cosine_lr(it: int, *, lr: float, min_lr: float, warmup_iters: int, lr_decay_iters: int) -> float:
    """nanoGPT's schedule: linear warmup, then cosine decay from ``lr`` to ``min_lr``.

        it < warmup_iters:              lr · (it + 1) / (warmup_iters + 1)
        it > lr_decay_iters:            min_lr
        lr_decay_iters <= warmup_iters: min_lr (no room to decay: the floor once warmup ends)
        otherwise, with r = (it - warmup_iters) / (lr_decay_iters - warmup_iters) in [0, 1]:
                                        min_lr + ½ (1 + cos(π r)) (lr - min_lr)
    """
    if it < warmup_iters:
        return lr * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters or lr_decay_iters <= warmup_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (lr - min_lr)

"""Fast twin of ``optim.AdamW``: one flat buffer per parameter group, updated tile by tile."""

from __future__ import annotations

import math
from typing import Any

from minigpt import backend, optim
from minigpt.fast import tiling
from minigpt.fast.switch import is_disabled


def consecutive_pieces(arrays: list[Any]) -> Any:
    """The flat NumPy array that ``arrays`` cut into, in order, end to end: each a contiguous
    view of one buffer, starting where the one before it ends (the gradients a data-parallel
    all-reduce leaves, distributed.py). Reading that slice equals concatenating them, without the
    copy. None when they are anything else (CuPy arrays included). Empty pieces are skipped:
    they add nothing, and NumPy gives them no meaningful address."""
    arrays = [a for a in arrays if a.size]
    base = arrays[0].base if arrays else None
    if not isinstance(base, backend.numpy.ndarray) or base.ndim != 1 or not base.flags.c_contiguous:
        return None
    item, origin = base.itemsize, base.ctypes.data
    start = end = (arrays[0].ctypes.data - origin) // item
    for a in arrays:
        if (a.base is not base or a.dtype != base.dtype or not a.flags.c_contiguous
                or a.ctypes.data != origin + end * item):
            return None
        end += a.size
    return base[start:end]


class AdamW(optim.AdamW):
    """Twin of ``optim.AdamW`` (same arguments, same state, same numbers).

    The reference updates each parameter on its own, five whole-array lines each: for the GPT's
    ~40 small tensors that is ~40 × 12 NumPy calls per step, each paying Python's and NumPy's
    per-call overhead. Here each group's parameters (and their two moments) live in one flat
    buffer, every parameter's ``.data`` a view into it, and one update runs over the buffer,
    tile by tile so that each tile stays in cache through the chain. The formulas and their
    order are the reference's, so the results are the same. What it gains is measured by
    benchmarks/bench_fast_ops.py (docs/performance.md).

    A group where only some parameters have a gradient, whose step counts differ (after loading
    a partial state), or whose parameters differ in dtype (one flat buffer would cast them all to
    the widest), is updated by the reference, parameter by parameter. So is everything inside
    ``minigpt.fast.disabled()``.

    On a GPU this twin runs too (each "tile" is then the whole buffer, tiling.py): one update is
    about 15 kernel launches per group instead of 14 per parameter (the GPT's ~40), and the
    launches, not the arithmetic, are what an update of small tensors costs there.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._flats: dict[int, dict[str, Any]] = {}  # group index -> flat buffers (see _flat)

    def step(self) -> None:
        """One AdamW update of every parameter that has a gradient."""
        params = [p for group in self.param_groups for p in group["params"]]
        if not params or is_disabled():
            return super().step()
        for gi, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                self.init_state(p)
            steps = {self.state[id(p)]["step"] for p in params}
            if len(params) != len(group["params"]) or len(steps) != 1 or len({p.dtype for p in params}) != 1:
                self.update_group(group)  # the reference, parameter by parameter
                continue
            flat = self._flat(gi, group)
            g = consecutive_pieces([p.grad for p in params])  # an all-reduce's buffer (distributed.py): no copy
            if g is None:
                g = params[0].xp.concatenate([p.grad.reshape(-1) for p in params])
            g = g.astype(flat["p"].dtype, copy=False)
            for p in params:
                self.state[id(p)]["step"] += 1
            adamw_update(flat["p"], g, flat["m"], flat["v"], group, steps.pop() + 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._flats = {}  # the moments are new arrays: rebuild the flat buffers on the next step

    def _flat(self, gi: int, group: dict[str, Any]) -> dict[str, Any]:
        """One flat buffer each for the group's parameters and their two moments, with every
        parameter's .data (and state) a view into it, so one vectorised update serves them all.
        Rebuilt whenever something replaced a view (Module.to, load_state_dict of the optimizer)."""
        params = group["params"]
        cache = self._flats.get(gi)
        if cache is not None and all(p.data.base is cache["p"] and self.state[id(p)]["exp_avg"].base is cache["m"]
                                     and self.state[id(p)]["exp_avg_sq"].base is cache["v"] for p in params):
            return cache
        xp = params[0].xp
        cache = {}
        for key, arrays in (("p", [p.data for p in params]),
                            ("m", [self.state[id(p)]["exp_avg"] for p in params]),
                            ("v", [self.state[id(p)]["exp_avg_sq"] for p in params])):
            cache[key] = xp.concatenate([a.reshape(-1) for a in arrays])
        offset = 0
        for p in params:
            n, st = p.size, self.state[id(p)]
            p.data = cache["p"][offset:offset + n].reshape(p.shape)
            st["exp_avg"] = cache["m"][offset:offset + n].reshape(p.shape)
            st["exp_avg_sq"] = cache["v"][offset:offset + n].reshape(p.shape)
            offset += n
        self._flats[gi] = cache
        return cache


def adamw_update(p: Any, g: Any, m: Any, v: Any, group: dict[str, Any], t: int) -> None:
    """The reference's update (optim.AdamW.update_group) of the flat buffers p, m, v by the
    gradient g at step t, in place, tile by tile. Each element's update reads only its own p, g, m
    and v, so any slice of the buffers can be updated alone with the same result (fast/parallel.py
    updates one rank's part)."""
    lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
    beta1, beta2 = group["betas"]
    xp = backend.get_array_module(p)
    step_size = lr / (1.0 - beta1**t)
    bias_correction2_sqrt = math.sqrt(1.0 - beta2**t)
    tmp_buf = xp.empty(tiling.tile_rows(xp, p.size), dtype=p.dtype)
    for sl in tiling.tiles(xp, p.size):
        pc, gc, mc, vc, tmp = p[sl], g[sl], m[sl], v[sl], tmp_buf[: sl.stop - sl.start]
        pc *= 1.0 - lr * wd  # decoupled weight decay
        xp.subtract(gc, mc, out=tmp)  # m <- m + (1 - beta1) (g - m)
        tmp *= 1.0 - beta1
        mc += tmp
        vc *= beta2  # v <- beta2 v + (1 - beta2) g²
        xp.multiply(gc, gc, out=tmp)
        tmp *= 1.0 - beta2
        vc += tmp
        xp.sqrt(vc, out=tmp)  # denom = sqrt(v) / sqrt(1 - beta2^t) + eps
        tmp /= bias_correction2_sqrt
        tmp += eps
        xp.divide(mc, tmp, out=tmp)  # p <- p - lr / (1 - beta1^t) * m / denom
        tmp *= step_size
        pc -= tmp

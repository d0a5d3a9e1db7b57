"""``Module``: a tree of layers that owns parameters, as torch.nn.Module.

A Module finds its parameters and sub-modules from its attributes, in the order they
were first assigned, so ``named_parameters()`` gives dotted names such as
``transformer.h.0.attn.c_attn.weight`` that match the PyTorch model with the same layout.
A parameter shared by two modules (weight tying) is one object: ``parameters()`` yields
it once, ``state_dict()`` lists it under both names, as torch does.
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple

from minigpt import backend
from minigpt.tensor import Tensor


class Parameter(Tensor):
    """A Tensor that is a learnable parameter of a Module (requires_grad by default)."""

    def __init__(self, data: Any, requires_grad: bool = True) -> None:
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter" + super().__repr__()[len("Tensor"):]


class LoadResult(NamedTuple):
    """What ``load_state_dict`` did not match (both empty under ``strict=True``)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


class Module:
    """Base class of layers and models: override ``forward``; call the module to run it."""

    training: bool = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    # ------------------------------------------------------------------ the tree
    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def modules(self) -> Iterator[Module]:
        """This module and every module below it, depth first."""
        yield self
        for _, child in self.named_children():
            yield from child.modules()

    def _named_parameters_all(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """Every (dotted name, parameter), shared ones under each of their names."""
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
        for name, child in self.named_children():
            yield from child._named_parameters_all(prefix + name + ".")

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, parameter) pairs, each parameter once (under its first name)."""
        seen: set[int] = set()
        for name, p in self._named_parameters_all():
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def num_params(self) -> int:
        """How many numbers the model learns (a tied weight counted once)."""
        return sum(p.size for p in self.parameters())

    # ------------------------------------------------------------------ modes and grads
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def to(self, device: str | None = None, dtype: Any = None) -> Module:
        """Move (and/or cast) every parameter in place; returns the module."""
        device = backend.check_device(device) if device is not None else None
        for p in self.parameters():
            for attr in ("data", "grad"):
                value = getattr(p, attr)
                if value is None:
                    continue
                if device is not None:
                    value = backend.move(value, device)
                if dtype is not None:
                    value = value.astype(dtype, copy=False)
                setattr(p, attr, value)
        return self

    # ------------------------------------------------------------------ state dict
    def state_dict(self) -> dict[str, Any]:
        """{dotted name: array} for every parameter (tied ones under each name)."""
        return {name: p.data for name, p in self._named_parameters_all()}

    def load_state_dict(self, state_dict: dict[str, Any], strict: bool = True) -> LoadResult:
        """Copy arrays into the parameters, in place (cast to their dtype and device).

        Raises a RuntimeError naming every missing or unexpected key (when ``strict``)
        and every entry whose shape differs from the parameter's. Nothing is changed
        unless everything matches.
        """
        own = dict(self._named_parameters_all())
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        errors = []
        if strict and missing:
            errors.append("missing key(s): " + ", ".join(missing))
        if strict and unexpected:
            errors.append("unexpected key(s): " + ", ".join(unexpected))
        for name, p in own.items():
            if name in state_dict:
                shape = tuple(getattr(state_dict[name], "shape", ()))
                if shape != p.shape:
                    errors.append(f"size mismatch for {name}: checkpoint has shape {shape}, "
                                  f"the model has shape {p.shape}")
        if errors:
            raise RuntimeError(f"error(s) loading state_dict for {type(self).__name__}: " + "; ".join(errors))
        for name, p in own.items():
            if name in state_dict:
                value = backend.unwrap(state_dict[name])
                p.data[...] = backend.move(value, p.device)  # assignment casts to p's dtype
        return LoadResult(missing, unexpected)

    # ------------------------------------------------------------------ printing
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        children = list(self.named_children())
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}("]
        for name, child in children:
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        return "\n".join(lines) + "\n)"


class ModuleList(Module):
    """A list of modules, named "0", "1", ... (as in torch: ``transformer.h.0.attn``)."""

    def __init__(self, modules: list[Module] | None = None) -> None:
        for m in modules or []:
            self.append(m)

    def append(self, module: Module) -> None:
        setattr(self, str(len(self)), module)

    def __len__(self) -> int:
        return sum(1 for _ in self.named_children())

    def __iter__(self) -> Iterator[Module]:
        return (m for _, m in self.named_children())

    def __getitem__(self, i: int) -> Module:
        return list(self)[i]


class ModuleDict(Module):
    """Named modules reachable as attributes (``transformer.wte``), as torch.nn.ModuleDict."""

    def __init__(self, modules: dict[str, Module] | None = None) -> None:
        for name, m in (modules or {}).items():
            setattr(self, name, m)

    def __getitem__(self, name: str) -> Module:
        return getattr(self, name)

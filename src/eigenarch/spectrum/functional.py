"""Maps of layers whose weight a model uses without calling the layer (SPEC section 3).

Some models hold an ``nn.Linear`` / ``nn.Conv2d`` but pass its weight to a function
themselves: torchvision's Swin attention calls ``F.linear(x, self.qkv.weight, ...)`` and
never ``self.qkv(x)``, so no module hook sees those maps. :class:`WeightUses`, a
``TorchFunctionMode``, watches every torch function called during the model's forward: a
layer's weight given to the functional form of its own layer (``F.linear`` for a
``Linear``, ``F.conv2d`` for a ``Conv2d``, ``F.conv_transpose2d`` for a
``ConvTranspose2d``) outside the layer's own call is collected as a call of the layer (its
input the call's first argument, its output the call's result); any other use while the
layer is not running (``multi_head_attention_forward``, ``torch.matmul`` on ``weight.t()``,
a cast) cannot be, and is recorded in :attr:`WeightUses.missed` so that it is named.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

#: The function that computes each hooked layer type's output from its weight: a call of it
#: with a layer's weight is collected as a call of that layer.
LAYER_FUNCTIONS: tuple[tuple[type[nn.Module], Callable[..., Tensor]], ...] = (
    (nn.ConvTranspose2d, F.conv_transpose2d),
    (nn.Conv2d, F.conv2d),
    (nn.Linear, F.linear),
)

#: What a layer's hook is given for a functional call: the layer, its input and its output.
LayerCall = Callable[[nn.Module, Tensor, Tensor], None]


def layer_function(module: nn.Module) -> Callable[..., Tensor]:
    """The functional form of a hooked layer (``F.linear`` for an ``nn.Linear``, ...)."""
    return next(function for kind, function in LAYER_FUNCTIONS if isinstance(module, kind))


def function_name(func: Callable[..., Any]) -> str:
    """``torch.nn.functional.multi_head_attention_forward``, ``torch.matmul``, ``Tensor.t``,
    ``Tensor.T``: a function as a user would write it."""
    if getattr(func, "__name__", None) == "__get__":  # a property of a tensor (``.T``)
        func = getattr(func, "__self__", func)
    name = getattr(func, "__name__", repr(func))
    if hasattr(func, "__objclass__"):  # a method or property of Tensor
        return f"Tensor.{name}"
    if getattr(func, "__qualname__", "").startswith("_VariableFunctionsClass."):
        return f"torch.{name}"
    module = getattr(func, "__module__", None)
    module = "torch.nn.functional" if module == "torch._C._nn" else module  # F.linear, ...
    return f"{module}.{name}" if module else name


class WeightUses(TorchFunctionMode):
    """Collect functional calls of hooked layers' weights; record the uses it cannot collect.

    Args:
        model: the module whose forward is watched (uses outside its forward are ignored).
        layers: each hooked layer with the function to call for a functional use of its
            weight (``layer, input, output``).
    """

    def __init__(self, model: nn.Module, layers: Iterable[tuple[nn.Module, LayerCall]]) -> None:
        super().__init__()
        self.model = model
        self._layers: dict[int, list[tuple[nn.Module, LayerCall]]] = {}  # id(weight) ->
        for module, call in layers:  # ... its layers, in module order (tied weights: several)
            self._layers.setdefault(id(module.weight), []).append((module, call))
        self._running: dict[int, int] = {}  # id(module) -> calls of it under way
        #: Layers whose weight was used by a function other than their layer's, while the
        #: layer was not running: layer -> the first such function's name.
        self.missed: dict[nn.Module, str] = {}

    def attach(self) -> list[RemovableHandle]:
        """Hooks that tell when the model and each layer run. Register them after the
        collector's own forward hooks (they must stay first to see the layers' outputs)."""
        handles = []
        layers = (m for owners in self._layers.values() for m, _ in owners)
        modules = {id(m): m for m in [self.model, *layers]}
        for key, module in modules.items():
            handles.append(module.register_forward_pre_hook(self._enter_hook(key)))
            handles.append(module.register_forward_hook(self._exit_hook(key), always_call=True))
        return handles

    def _enter_hook(self, key: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple) -> None:
            self._running[key] = self._running.get(key, 0) + 1

        return hook

    def _exit_hook(self, key: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            self._running[key] = max(0, self._running.get(key, 0) - 1)

        return hook

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if not self._running.get(id(self.model)) or not _has_tensor(result):
            return result  # outside the forward, or no tensor made (``.shape``, ``.device``)
        for value in _tensors(args, kwargs):
            owners = [(m, call) for m, call in self._layers.get(id(value), ()) if m.weight is value]
            if not owners or any(self._running.get(id(m)) for m, _ in owners):
                continue  # not a layer's weight, or used by (one of) its layers' own call
            weight = _weight_argument(args, kwargs) is value
            calls = [(m, call) for m, call in owners if weight and func is layer_function(m)]
            if calls:  # tied weights: the first layer of the function's type takes the call
                module, call = calls[0]
                call(module, args[0] if args else kwargs["input"], result)
            else:
                for module, _ in owners:
                    self.missed.setdefault(module, function_name(func))
        return result


def _weight_argument(args: tuple, kwargs: dict) -> object:
    """The weight of an ``F.linear`` / ``F.conv2d`` / ``F.conv_transpose2d`` call."""
    return args[1] if len(args) > 1 else kwargs.get("weight")


def _has_tensor(result: object) -> bool:
    """Is ``result`` a tensor, or a list / tuple holding one?"""
    if isinstance(result, (list, tuple)):
        return any(isinstance(v, Tensor) for v in result)
    return isinstance(result, Tensor)


def _tensors(args: tuple, kwargs: dict) -> Iterable[Tensor]:
    """The tensors among a call's arguments, and in its list / tuple arguments."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (v for v in value if isinstance(v, Tensor))


class UncollectedMapsWarning(UserWarning):
    """Selected maps that the collection could not see in full."""


def missed_note(missed: dict[str, str]) -> str:
    """The one line naming the maps of layers whose weight was used in a way that cannot be
    collected (``missed``: map name -> the function that used it)."""
    names = list(missed)
    listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    functions = ", ".join(dict.fromkeys(missed.values()))
    return (
        f"{len(names)} map(s) not collected in full: {listed} (the model used their layer's "
        f"weight through {functions} without calling the layer; only F.linear / F.conv2d / "
        "F.conv_transpose2d calls with it are collected)"
    )

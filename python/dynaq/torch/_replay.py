"""Replaying the float model's blocks: a budget's sensitivity pass runs the model once per layer
with that layer alone quantized, and everything that ran before that layer computes what the
float model computed. Those modules' outputs are recorded once and returned instead of being
computed again.

On all-MiniLM-L6-v2 (37 layers, 64 sentences) this cut the per-layer passes' model time by
about half: a layer in the last encoder block reruns one block, not six.

Which modules are recorded: those holding at least two of the measured layers (transformer
blocks, their attention) but not all of them (the model's trunk is never before a layer).
Replay is only used after it is proven on this model. For each depth of the recorded modules,
one pass replays all of that depth at once, and the model's output must equal the float
output bit for bit (every sample). Otherwise nothing is replayed. Replayed outputs are fresh
copies, so code that writes into its input in place cannot corrupt the record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils import _pytree

__all__ = ["Replay"]


class Replay:
    """The recorded outputs of a model's blocks, and which blocks ran before each layer.

    Parameters
    ----------
    root : torch.nn.Module
        The float model.
    targets : mapping of str to torch.nn.Module
        The layers to be measured (name -> module).

    Notes
    -----
    The caller runs the samples (calling :meth:`begin_sample` before each): once under
    :meth:`record`, then under :meth:`prove`, then once per layer inside
    :meth:`replaying` of :meth:`before` that layer.
    """

    def __init__(self, root: nn.Module, targets: Mapping[str, nn.Module]) -> None:
        self.root = root
        self.ok = False
        self._outputs: dict[int, list[list[Any]]] = {}  # module id -> per sample, per call
        self._calls: dict[int, int] = {}
        self._sample = 0
        self._order: dict[int, tuple[int, int]] = {}  # module id -> (first start, last end)
        everything = list(root.named_modules(remove_duplicate=False))
        if len({id(m) for _, m in everything}) != len(everything):
            return  # a module in two places: not a tree, replay is not attempted
        self._parent: dict[int, Optional[nn.Module]] = {id(root): None}
        for _, mod in everything:
            for child in mod.children():
                self._parent[id(child)] = mod
        ids = {id(m) for m in targets.values()}
        self._targets = targets
        self._recorded = [
            m for _, m in everything
            if m is not root and 2 <= self._count(m, ids) < len(ids)
        ]  # fmt: skip
        self.ok = bool(self._recorded)

    def _count(self, mod: nn.Module, ids: set[int]) -> int:
        return sum(id(m) in ids for m in mod.modules())

    def _ancestors(self, mod: nn.Module) -> list[nn.Module]:
        out = []
        parent = self._parent.get(id(mod))
        while parent is not None:
            out.append(parent)
            parent = self._parent.get(id(parent))
        return out

    def begin_sample(self, index: int) -> None:
        """The next calls belong to sample ``index``."""
        self._sample = index
        self._calls = {}

    def record(self, samples: int, run: Callable[[], Any]) -> None:
        """Runs the float model once (``run()``), recording the blocks' outputs and the order
        every module started and ended in (the first sample's)."""
        if not self.ok:
            return
        counter = [0]
        recorded = {id(m) for m in self._recorded}
        self._outputs = {i: [[] for _ in range(samples)] for i in recorded}

        def pre(mod: nn.Module, args: Any) -> None:
            if self._sample == 0 and id(mod) not in self._order:
                self._order[id(mod)] = (counter[0], -1)
            counter[0] += 1

        def post(mod: nn.Module, args: Any, out: Any) -> None:
            if self._sample == 0:
                start, _ = self._order[id(mod)]
                self._order[id(mod)] = (start, counter[0])
            counter[0] += 1
            if id(mod) in recorded:
                self._outputs[id(mod)][self._sample].append(_copy(out))

        handles = []
        for mod in self.root.modules():
            handles.append(mod.register_forward_pre_hook(pre))
            handles.append(mod.register_forward_hook(post))
        try:
            run()
        finally:
            for h in handles:
                h.remove()
        # Modules that never ran (a pooler the output does not use still runs; a branch not
        # taken does not) cannot be replayed.
        self._recorded = [m for m in self._recorded if id(m) in self._order]

    def before(self, name: str) -> list[nn.Module]:
        """The recorded modules that ended before layer ``name`` first started and do not hold
        it, outermost only."""
        if not self.ok:
            return []
        target = self._targets[name]
        start = self._order.get(id(target), (-1, -1))[0]
        holders = {id(m) for m in self._ancestors(target)}
        chosen = [
            m for m in self._recorded
            if id(m) not in holders and 0 <= self._order[id(m)][1] < start
        ]  # fmt: skip
        ids = {id(m) for m in chosen}
        return [m for m in chosen if not any(id(a) in ids for a in self._ancestors(m))]

    def depths(self) -> list[list[nn.Module]]:
        """The recorded modules by how many recorded modules hold them."""
        ids = {id(m) for m in self._recorded}
        levels: dict[int, list[nn.Module]] = {}
        for m in self._recorded:
            depth = sum(id(a) in ids for a in self._ancestors(m))
            levels.setdefault(depth, []).append(m)
        return [levels[d] for d in sorted(levels)]

    def prove(self, run: Callable[[], bool]) -> None:
        """Replays each depth of the recorded modules in one pass (``run()`` says whether the
        outputs equal the float model's); any difference turns replay off."""
        for level in self.depths() if self.ok else []:
            with self.replaying(level):
                if not run():
                    self.ok = False
                    return

    def replaying(self, modules: list[nn.Module]) -> _Replaying:
        """A context in which ``modules`` return their recorded outputs."""
        return _Replaying(self, modules if self.ok else [])

    def _replay(self, mod: nn.Module) -> Any:
        call = self._calls.get(id(mod), 0)
        self._calls[id(mod)] = call + 1
        return _copy(self._outputs[id(mod)][self._sample][call])


class _Replaying:
    def __init__(self, replay: Replay, modules: list[nn.Module]) -> None:
        self._replay = replay
        self._modules = modules

    def __enter__(self) -> None:
        for mod in self._modules:
            # An instance attribute shadows the class's forward; nn.Module calls self.forward.
            object.__setattr__(mod, "forward", _Replayer(self._replay, mod))

    def __exit__(self, *exc: Any) -> None:
        for mod in self._modules:
            object.__delattr__(mod, "forward")


class _Replayer:
    def __init__(self, replay: Replay, mod: nn.Module) -> None:
        self._replay = replay
        self._mod = mod

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._replay._replay(self._mod)


def _copy(out: Any) -> Any:
    """A copy of a module's output: its tensors cloned (detached), its containers rebuilt."""
    return _pytree.tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, out)

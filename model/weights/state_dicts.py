"""Reading weights files into state dicts, and loading state dicts strictly.

The one place that opens weights: `.safetensors`, or `torch.load(weights_only=True)` with numpy
arrays allowed as data (PANNs ships some). A pickle that needs any other code is refused with
UnsafeCheckpointError; nothing is ever unpickled beyond data. Every loader in `model/` reads
through `read_state_dict` and loads through `strict_load`, so all of them refuse the same files
and report mismatches the same way.

torch is imported where it is used: the weights registry (and with it `dub weights`) imports
this module for its error classes without paying for torch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dub.errors import short_error

if TYPE_CHECKING:
    import torch
    from torch import nn

StateDict = dict[str, "torch.Tensor"]

# Keys under which training scripts and publishers nest the weights, most specific first.
WRAPPER_KEYS = ("state_dict", "generator", "model", "module", "net", "network", "weights", "params", "ema")
MAX_LISTED_KEYS = 20


class WeightsError(Exception):
    """Base class of weights problems; the message says what to do."""


class MissingWeightsError(WeightsError, FileNotFoundError):
    """A weights file is not where it was looked for."""


class UnsafeCheckpointError(WeightsError, ValueError):
    """The file is a pickle that needs code beyond plain data to load; it is refused."""


class UnreadableWeightsError(WeightsError, ValueError):
    """The file is damaged, or holds no state dict of tensors."""


@dataclass(frozen=True)
class CheckpointLayout:
    """How a state dict sat inside a checkpoint: the wrapper keys walked through
    (e.g. ("generator",)), top-level entries dropped (optimizer, ...) and scalar extras kept."""

    nesting: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    extras: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ reading


def read_checkpoint(path: str | os.PathLike) -> Any:
    """`torch.load(weights_only=True)` on the CPU, numpy arrays allowed (they are data).
    Anything whose unpickling would need other code raises UnsafeCheckpointError."""
    import pickle

    import torch

    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        culprit = re.search(r"(?:Unsupported global|GLOBAL)[: ]+([\w.]+)", str(err))
        what = f" (it asks for {culprit.group(1)})" if culprit else ""
        raise UnsafeCheckpointError(
            f"refusing to load {path}: unpickling it would run code beyond plain tensors{what}. dub only "
            "loads safetensors or torch.load(weights_only=True). If you trust the file, convert it to "
            "safetensors yourself in an isolated environment, or get a safetensors release from its publisher."
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UnreadableWeightsError(
            f"cannot read {path} as a PyTorch checkpoint ({short_error(err)}); is the download complete?"
        ) from err


def read_weights_file(
    path: str | os.PathLike,
    *,
    suffixes: Sequence[str] | None = None,
    device: str = "cpu",
    what: str = "weights file",
) -> Any:
    """The raw content of a weights file: the tensors of a `.safetensors` file, else whatever
    `read_checkpoint` unpickles. `suffixes` limits the accepted non-safetensors suffixes
    (None: any); `what` names the file in error messages."""
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"{what} not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device=device)
    if suffixes is not None and path.suffix not in suffixes:
        raise ValueError(f"unsupported {what} type {path.name!r}: use {_one_of(['.safetensors', *suffixes])}")
    return read_checkpoint(path)


def read_state_dict(
    source: str | os.PathLike | Mapping[str, Any],
    expect_key: str | None = None,
    *,
    wrappers: Sequence[str] = WRAPPER_KEYS,
    flatten: bool = False,
    strip: Sequence[str] = (),
    suffixes: Sequence[str] | None = None,
    device: str = "cpu",
    what: str = "weights file",
) -> StateDict:
    """A flat {name: tensor} state dict from a weights file (see `read_weights_file`) or a
    mapping, unwrapped as `unwrap_state_dict` says (`expect_key`, `wrappers`, `flatten`), with
    the prefixes in `strip` removed where every key has them (DDP's "module.", ...)."""
    if isinstance(source, Mapping):
        obj, name = source, "the state dict"
    elif isinstance(source, (str, os.PathLike)):
        obj = read_weights_file(source, suffixes=suffixes, device=device, what=what)
        name = str(source)
    else:
        raise TypeError(
            f"expected a weights file path or a state dict (mapping of tensors), got {type(source).__name__}"
        )
    state, _ = unwrap_state_dict(obj, expect_key, wrappers=wrappers, flatten=flatten, source=name)
    state = strip_prefixes(state, strip)
    if device != "cpu":
        state = {k: v.to(device) for k, v in state.items()}
    return state


def unwrap_state_dict(
    obj: Any,
    expect_key: str | None = None,
    *,
    wrappers: Sequence[str] = WRAPPER_KEYS,
    flatten: bool = False,
    source: str = "the checkpoint",
) -> tuple[StateDict, CheckpointLayout]:
    """The state dict inside a loaded checkpoint, and how it sat there.

    Descends through wrapper keys ({"generator": sd}, {"state_dict": sd}, ...) while the level
    is not the state dict yet. With `expect_key`, the state dict is the first level holding that
    key (the top, then the wrappers in order, then any other entry) and KeyError says when none
    does. Otherwise it is a level of tensors; `flatten` (for importing published files) walks
    any depth, turns nested dicts into dotted names, keeps plain values beside the weights as
    layout extras (epoch, ...) and drops the rest (optimizer states); without it the state dict
    must be a dict of tensors at most one wrapper down. numpy arrays become tensors.
    """
    nesting: list[str] = []
    dropped: list[str] = []
    extras: dict[str, Any] = {}
    level = obj
    while isinstance(level, Mapping) and not _is_state_level(level, expect_key):
        wrapper = _pick_wrapper(level, expect_key, wrappers, flatten)
        if wrapper is None:
            break
        prefix = "".join(f"{key}." for key in nesting)
        for key, value in level.items():
            if key != wrapper:
                _set_aside(prefix + str(key), value, extras, dropped)
        nesting.append(wrapper)
        level = level[wrapper]
    if not isinstance(level, Mapping):
        raise UnreadableWeightsError(f"{source} holds a {type(level).__name__}, not a state dict")
    if expect_key is not None and expect_key not in level:
        raise KeyError(
            f"no {expect_key!r} in the weights (top-level keys: {sorted(map(str, obj))[:8]}); "
            "is this the right checkpoint?"
        )
    if flatten:
        state = _flatten(level, extras, dropped)
        if not state:
            raise UnreadableWeightsError(f"{source} holds no tensors")
    elif _all_tensors(level):
        state = {key: _as_tensor(value) for key, value in level.items()}
    else:
        found = sorted(map(str, obj))[:MAX_LISTED_KEYS] if isinstance(obj, Mapping) else [type(obj).__name__]
        raise UnreadableWeightsError(
            f"{source} holds no state dict of tensors (top level: {found}); expected a dict of tensors "
            f"or one nested under {list(wrappers)}"
        )
    return state, CheckpointLayout(tuple(nesting), tuple(dropped), extras)


def strip_prefixes(state: Mapping[str, Any], prefixes: Iterable[str]) -> dict[str, Any]:
    """Remove each prefix (in order) where every key carries it, as DistributedDataParallel
    ("module.") and torch.compile ("_orig_mod.") add them."""
    state = dict(state)
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


# ------------------------------------------------------------------------------ loading


def strict_load(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    what: str = "checkpoint",
    *,
    against: str = "model",
    detail: str = "",
    hint: str = "",
    error: type[ValueError] = ValueError,
    may_be_missing: Callable[[str], bool] | None = None,
) -> None:
    """Load `state` into `module` only if it fits exactly; else raise `error` naming every
    missing and unexpected key and each shape mismatch with both shapes, before touching the
    module. Keys for which `may_be_missing` is true may be absent (the module keeps its own
    values). A module built on the meta device gets CPU storage before loading.

    The message reads "{what} does not match the {against}{detail}: <counts>", one line per
    kind of problem, then `hint`.
    """
    expected = module.state_dict()
    missing = sorted(k for k in expected if k not in state and not (may_be_missing and may_be_missing(k)))
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs {against} {tuple(expected[k].shape)}"
        for k in sorted(state)
        if k in expected and state[k].shape != expected[k].shape
    ]
    problems = [
        (missing, "missing key", "missing keys"),
        (unexpected, "unexpected key", "unexpected keys"),
        (mismatched, "shape mismatch", "shape mismatches"),
    ]
    if missing or unexpected or mismatched:
        counts = ", ".join(f"{len(items)} {one if len(items) == 1 else many}" for items, one, many in problems if items)
        lines = [f"{what} does not match the {against}{detail}: {counts}"]
        lines += [f"  {many}: {_listed(items)}" for items, _, many in problems if items]
        raise error("\n".join(lines + ([hint] if hint else [])))
    if any(p.is_meta for p in module.parameters()):
        module.to_empty(device="cpu")
    module.load_state_dict(state, strict=may_be_missing is None)


# ------------------------------------------------------------------------------ helpers


def _is_state_level(level: Mapping, expect_key: str | None) -> bool:
    return expect_key in level if expect_key is not None else _all_tensors(level)


def _pick_wrapper(level: Mapping, expect_key: str | None, wrappers: Sequence[str], flatten: bool) -> Any:
    """The entry to descend into: a wrapper that holds (or, flattening, may lead to) the state
    dict; with `expect_key`, failing the wrappers, any entry holding that key."""
    candidates = [*wrappers, *level] if expect_key is not None else list(wrappers)
    for key in candidates:
        inner = level.get(key)
        if not isinstance(inner, Mapping):
            continue
        if expect_key is not None:
            if expect_key in inner:
                return key
        elif flatten or _all_tensors(inner):
            return key
    return None


def _flatten(level: Mapping, extras: dict[str, Any], dropped: list[str]) -> StateDict:
    import torch

    flat: StateDict = {}

    def visit(prefix: str, node: Mapping) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, torch.Tensor) or _is_numeric_array(value):
                flat[name] = _as_tensor(value)
            elif isinstance(value, Mapping):
                visit(name + ".", value)
            else:
                _set_aside(name, value, extras, dropped)

    visit("", level)
    return flat


def _set_aside(name: str, value: Any, extras: dict[str, Any], dropped: list[str]) -> None:
    scalar = _json_scalar(value)
    if scalar is not None:
        extras[name] = scalar
    else:
        dropped.append(name)


def _all_tensors(node: Mapping) -> bool:
    import torch

    return bool(node) and all(isinstance(v, torch.Tensor) or _is_numeric_array(v) for v in node.values())


def _is_numeric_array(value: Any) -> bool:
    import numpy as np

    return isinstance(value, np.ndarray) and value.dtype != object


def _as_tensor(value: Any) -> torch.Tensor:
    import numpy as np
    import torch

    return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))


def _json_scalar(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return None


def _numpy_safe_globals() -> list:
    """numpy arrays and scalars as pickled by numpy 1.x (numpy.core) and 2.x (numpy._core)."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    allowed: list = [
        multiarray._reconstruct,
        multiarray.scalar,
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
        np.ndarray,
        np.dtype,
    ]
    for kind in (
        np.bool_,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.float16,
        np.float32,
        np.float64,
        np.complex64,
        np.complex128,
    ):
        allowed.append(type(np.dtype(kind)))
    return allowed


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED_KEYS])
    more = len(items) - MAX_LISTED_KEYS
    return shown + (f", ... and {more} more" if more > 0 else "")


def _one_of(options: Sequence[str]) -> str:
    return options[0] if len(options) == 1 else ", ".join(options[:-1]) + f" or {options[-1]}"


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata in a safetensors file's header (dub writes its network config, the
    import provenance and user notes there); the tensors are not read."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})

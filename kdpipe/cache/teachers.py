"""Teachers of every supported kind behind one interface: ``Member.predict(batch) -> logits``.

Supported kinds: a ``torch.nn.Module``; a TorchScript file (``.pt``, ``.pth``, ``.ts``);
a joblib-pickled scikit-learn classifier (``.joblib``, ``.pkl``, ``.pickle``) or a
``torch.save()``d whole module, both only when the caller trusts pickles by name
(``trust_pickled``; unpickling runs code from the file); a fitted scikit-learn
classifier; any callable ``batch -> logits``. A list of these is an ensemble.

What each kind receives: a batch of rows ``(b, *sample_shape)`` as stored (the sample
shape is kept: a CNN teacher gets ``(b, 1, 28, 28)``). Torch teachers get it through
:func:`kdpipe.rows.to_model_dtype` when it is ``uint8`` (float32 ``x / 255``: the uint8
rule students follow too), then in the model's own floating dtype; other floating rows
are cast to the model's dtype, and other integer rows pass unchanged (token ids).
scikit-learn classifiers get the rows in their stored dtype (they convert themselves),
flattened to ``(b, prod(sample_shape))`` as scikit-learn needs, except a kdpipe
estimator fitted on this very sample shape (its ``sample_shape_``), which takes the
rows whole; a classifier trained on scaled images wants the same scaling in a
``Pipeline`` step. Callables get the rows exactly as stored.

Prepared models (loaded from file, moved to a GPU, switched to eval mode) are kept in a
per-process table, so each worker process loads a teacher once, not once per task.
"""

from __future__ import annotations

import copy
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kdpipe.cache import fingerprint as fp
from kdpipe.cache.manifest import TeacherInfo
from kdpipe.errors import InputError
from kdpipe.labels import class_columns, class_list
from kdpipe.rows import to_model_dtype

__all__ = [
    "PRECISIONS",
    "Member",
    "parse_precision",
    "resolve_members",
    "resolve_classes",
    "torch_file_format",
    "holds_state_dict",
    "load_pickled_module",
    "PICKLE_SUFFIXES",
]

PRECISIONS = ("model", "float16", "bfloat16")

_TORCHSCRIPT_SUFFIXES = {".pt", ".pth", ".ts"}
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")  # joblib-pickled scikit-learn classifiers
_ALIGN = 16  # bytes; numpy allocates at least this aligned
_PREPARED: dict[tuple[Any, str], tuple[Any, Any]] = {}  # (key, device) -> (source object, prepared)
_PREPARED_LOCK = threading.RLock()  # re-entered: preparing a file teacher first loads it


def _load_torchscript(path: str) -> Any:
    import torch

    with warnings.catch_warnings():
        # torch >= 2.10 deprecates TorchScript; loading existing files is still supported
        warnings.filterwarnings(
            "ignore", message=r".*torch\.jit\.load.*deprecated", category=DeprecationWarning
        )
        return torch.jit.load(path, map_location="cpu")


def parse_precision(value: Any) -> str:
    """Return the precision of torch teachers' forward passes.

    ``"model"``: the model's own dtype, no autocast (the default). ``"float16"`` or
    ``"bfloat16"``: ``torch.autocast`` to that dtype on the build's device.
    """
    if value not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {value!r}")
    return str(value)


def torch_file_format(path: str | os.PathLike[str]) -> str:
    """What a ``.pt``-style file holds: ``"torchscript"``, ``"pickle"`` (``torch.save``) or ``"unknown"``.

    Read from the archive's table of contents, without loading (or unpickling) anything.
    """
    import zipfile

    with open(path, "rb") as f:
        if f.read(1) == b"\x80":  # a pickle protocol opcode: torch.save's legacy format
            return "pickle"
    if not zipfile.is_zipfile(path):
        return "unknown"
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(n.endswith("/constants.pkl") for n in names):  # only TorchScript archives have it
        return "torchscript"
    return "pickle" if any(n.endswith("/data.pkl") for n in names) else "unknown"


def holds_state_dict(path: str | os.PathLike[str]) -> bool:
    """Whether a ``torch.save`` file holds a dict (a ``state_dict``) rather than a whole module.

    Read from the pickle's opcodes (``pickletools``), without unpickling anything: a
    ``state_dict`` pickles as an ``OrderedDict`` (or a plain dict) at the top, a module as
    its class.
    """
    import io
    import pickletools
    import zipfile

    skip = 0
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
            if name is None:
                return False
            data = archive.read(name)
    else:
        with open(path, "rb") as f:
            data = f.read()
        skip = 3  # torch's legacy format: magic number, protocol version and system info come first
    stream = io.BytesIO(data)
    try:
        for _ in range(skip):
            for _ in pickletools.genops(stream):
                pass
        strings: list[str] = []
        for opcode, arg, _ in pickletools.genops(stream):
            if opcode.name in ("PROTO", "FRAME", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                continue
            if opcode.name == "EMPTY_DICT":
                return True
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(str(arg))
                continue
            if opcode.name == "GLOBAL":
                return str(arg).replace(" ", ".") in ("collections.OrderedDict", "builtins.dict")
            if opcode.name == "STACK_GLOBAL":
                return ".".join(strings[-2:]) in ("collections.OrderedDict", "builtins.dict")
            return False
    except ValueError:  # not a pickle, or a damaged one
        return False
    return False


def load_pickled_module(path: str | os.PathLike[str]) -> Any:
    """Unpickle a whole ``torch.nn.Module`` saved with ``torch.save(model, path)``.

    Unpickling runs code named in the file: call this only for files you trust. The
    module's class must be importable here.

    Raises
    ------
    InputError
        The file holds something other than a module, or its class cannot be imported.
    """
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ImportError) as exc:
        raise InputError(
            f"teacher file {str(path)!r}: cannot unpickle its module ({exc}); its class must be "
            "importable here, or save the teacher as TorchScript (torch.jit.script(model).save(path))"
        ) from exc
    if not isinstance(obj, torch.nn.Module):
        raise InputError(
            f"teacher file {str(path)!r} holds a {type(obj).__name__} object, not a torch.nn.Module "
            f"({STATE_DICT_HINT})"
        )
    return obj.eval()


STATE_DICT_HINT = (
    "a state_dict holds weights without the model: load it into its model "
    "(model.load_state_dict(torch.load(path))), then save the model as TorchScript, "
    "torch.jit.script(model).save(path)"
)


def _is_sklearn(obj: Any) -> bool:
    return hasattr(obj, "classes_") and (
        hasattr(obj, "decision_function") or hasattr(obj, "predict_proba")
    )


@dataclass
class Member:
    """One ensemble member: what it is, its fingerprint, and how to run it.

    ``columns`` reorders the member's output columns into the ensemble's class order
    (None when they already agree).
    """

    kind: str  # "torch" | "torchscript" | "sklearn" | "callable"
    name: str
    fingerprint: str
    obj: Any = None  # the teacher itself, or None for a file loaded per process
    path: str | None = None
    columns: np.ndarray | None = None

    def info(self) -> TeacherInfo:
        return TeacherInfo(kind=self.kind, name=self.name, fingerprint=self.fingerprint)

    def teacher(self) -> Any:
        """The teacher object; file teachers are loaded once per process."""
        if self.obj is not None:
            return self.obj
        return self._prepared("file", lambda: _load_file(self.path, self.kind))

    def own_classes(self) -> np.ndarray | None:
        """Class labels the teacher declares (``classes_`` or ``classes``), if any."""
        teacher = self.teacher()
        for attr in ("classes_", "classes"):
            value = getattr(teacher, attr, None)
            if value is not None and not callable(value):
                return np.asarray(value)
        return None

    def _prepared(self, device: str, make: Any) -> Any:
        key = (self.path if self.obj is None else id(self.obj), device)
        with _PREPARED_LOCK:
            entry = _PREPARED.get(key)
            if entry is None or (self.obj is not None and entry[0] is not self.obj):
                entry = (self.obj, make())
                _PREPARED[key] = entry
            return entry[1]

    def predict(self, x: np.ndarray, device: Any, precision: str = "model") -> np.ndarray:
        """Raw logits of ``x`` (a numpy batch) as a numpy array, in ensemble class order.

        ``precision`` applies to torch teachers (see :func:`parse_precision`).
        """
        if self.kind in ("torch", "torchscript"):
            module = self._prepared(
                str(device), lambda: _prepare_module(self.teacher(), device, owned=self.obj is None)
            )
            out = _torch_forward(module, x, device, precision)
        elif self.kind == "sklearn":
            out = _sklearn_logits(self.teacher(), x)
        else:
            out = self.obj(x)
            if hasattr(out, "detach"):
                out = out.detach().float().cpu().numpy()
            out = np.asarray(out)
        if self.columns is not None and out.ndim == 2 and out.shape[1] == len(self.columns):
            out = out[:, self.columns]
        return out


def _load_file(path: str | None, kind: str) -> Any:
    """Load a file teacher; only reached for a pickle the caller trusted (see :func:`_member`)."""
    assert path is not None
    if kind == "torchscript":
        return _load_torchscript(path)
    if kind == "torch":  # a torch.save()d whole module
        return load_pickled_module(path)
    import joblib

    obj = joblib.load(path)
    if not _is_sklearn(obj):
        raise InputError(
            f"teacher file {path!r} holds a {type(obj).__name__} object, not a fitted scikit-learn "
            "classifier (one with classes_ and decision_function or predict_proba)"
        )
    return obj


def _prepare_module(module: Any, device: Any, owned: bool) -> Any:
    """``module`` in eval mode on ``device``; a copy unless kdpipe ``owned`` it (loaded it from file).

    The caller's module is never changed (not moved, not switched to eval mode).
    """
    if owned:
        return module.to(device).eval()
    if device.type == "cpu" and not module.training:
        return module
    with warnings.catch_warnings():
        # a ScriptModule's parameters are not leaves to Module._apply, which reads their
        # .grad and makes torch warn once per parameter; nothing here uses gradients
        warnings.filterwarnings(
            "ignore",
            message="The .grad attribute of a Tensor that is not a leaf",
            category=UserWarning,
        )
        return copy.deepcopy(module).to(device).eval()


def _torch_forward(module: Any, x: np.ndarray, device: Any, precision: str = "model") -> np.ndarray:
    import contextlib

    import torch

    param = next(iter(module.parameters()), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    if x.dtype == np.uint8:
        x = to_model_dtype(x)  # the uint8 rule: float32 x / 255, as students receive it
    x = np.require(x, requirements=["C", "W"])  # torch wants writable memory
    if x.ctypes.data % _ALIGN:
        # MKL's results can differ in the last bit with the batch's address (seen for batches
        # 4 or 8 bytes off a 16-byte boundary, e.g. rows unpickled on a dask worker): copy
        # into a fresh (aligned) array, so the logits do not depend on where the rows lie
        x = x.copy()
    batch = torch.from_numpy(x)
    if batch.is_floating_point():
        batch = batch.to(dtype)
    autocast = (
        contextlib.nullcontext()
        if precision == "model"
        else torch.autocast(device_type=device.type, dtype=getattr(torch, precision))
    )
    with torch.inference_mode():
        if device.type != "cuda":
            with autocast:
                return module(batch).float().numpy()
        pinned = batch.pin_memory()  # kept alive until the stream is synchronized below
        with autocast:
            out = module(pinned.to(device, non_blocking=True))
        out = out.float()
        host = torch.empty(out.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(out, non_blocking=True)
        torch.cuda.current_stream(device).synchronize()
        return host.numpy()


def _sklearn_logits(estimator: Any, x: np.ndarray) -> np.ndarray:
    """Logits of a scikit-learn classifier, from rows flattened to 2-D (see the module notes).

    ``decision_function`` when there is one; a binary decision of shape (n,) becomes the
    zero-mean pair ``[-d/2, d/2]``, whose softmax is ``[1 - sigmoid(d), sigmoid(d)]``.
    Otherwise ``log(predict_proba)``, with probabilities clipped at float32's smallest
    normal so that a zero probability gives a large negative logit, not ``-inf``.
    """
    fitted_shape = getattr(estimator, "sample_shape_", None)  # a kdpipe estimator takes N-d rows
    x2 = x if x.ndim == 2 or tuple(fitted_shape or ()) == x.shape[1:] else x.reshape(len(x), -1)
    if hasattr(estimator, "decision_function"):
        d = np.asarray(estimator.decision_function(x2), dtype=np.float64)
        if d.ndim == 1:
            d = np.stack([-d / 2, d / 2], axis=1)
        return d.astype(np.float32)
    p = np.asarray(estimator.predict_proba(x2), dtype=np.float64)
    return np.log(np.maximum(p, np.finfo(np.float32).tiny)).astype(np.float32)


_TRUST = "trust_pickled_teachers=True"  # the opt-in's name in the API (--trust-pickled-teachers in the CLI)


def _member(teacher: Any, trust_pickled: bool = False) -> Member:
    if isinstance(teacher, (str, os.PathLike)):
        path = str(Path(teacher).resolve())
        suffix = Path(path).suffix.lower()
        if not Path(path).is_file():
            raise InputError(f"teacher file {teacher!r} does not exist")
        if suffix in _TORCHSCRIPT_SUFFIXES:
            kind = "torchscript"
            found = torch_file_format(path)
            if found == "pickle" and holds_state_dict(path):
                raise InputError(
                    f"teacher file {teacher!r} is a state_dict, not a teacher: {STATE_DICT_HINT}"
                )
            if found == "pickle" and trust_pickled:
                kind = "torch"
            elif found != "torchscript":
                raise InputError(
                    f"teacher file {teacher!r} is not TorchScript (a torch.save() pickle, or not a torch "
                    "file); unpickling runs code from the file, so kdpipe does not do it unless asked: save "
                    f"the teacher with torch.jit.script(model).save(path), or, if you trust the file, pass {_TRUST}"
                )
        elif suffix in PICKLE_SUFFIXES:
            kind = "sklearn"
            if not trust_pickled:
                raise InputError(
                    f"teacher file {teacher!r} is a pickle ({suffix}); unpickling runs code from the file, so "
                    f"kdpipe does not do it unless asked: pass {_TRUST} if you trust the file"
                )
        else:
            raise InputError(
                f"teacher file {teacher!r}: expected .pt/.pth/.ts (TorchScript) or .joblib/.pkl/.pickle"
            )
        return Member(kind, Path(path).name, "file:" + fp.fingerprint_file(path), path=path)
    try:
        import torch

        if isinstance(teacher, torch.nn.Module):
            return Member(
                "torch", type(teacher).__name__, fp.fingerprint_torch_module(teacher), obj=teacher
            )
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if _is_sklearn(teacher):
        return Member(
            "sklearn", type(teacher).__name__, fp.fingerprint_sklearn(teacher), obj=teacher
        )
    if callable(teacher):
        name = getattr(teacher, "__qualname__", type(teacher).__qualname__)
        return Member("callable", name, fp.fingerprint_callable(teacher), obj=teacher)
    raise InputError(f"cannot use a {type(teacher).__name__} as a teacher")


def resolve_members(
    teachers: Any, versions: Any = None, trust_pickled: bool = False
) -> list[Member]:
    """Wrap a teacher or a list of teachers into :class:`Member` objects.

    Teacher files that unpickle (``.joblib``, ``.pkl``, ``.pickle``, a ``torch.save()``
    ``.pt``) are refused before anything is read from them unless ``trust_pickled``.

    ``versions``: a version string per teacher (None where not given), or one string for
    a single teacher. A version is recorded in the member's fingerprint; it is what lets
    a build resume from a teacher whose content kdpipe cannot hash (a weak fingerprint).
    """
    items = list(teachers) if isinstance(teachers, (list, tuple)) else [teachers]
    if not items:
        raise InputError("teachers is an empty list")
    if versions is None:
        versions = [None] * len(items)
    elif isinstance(versions, str):
        versions = [versions]
    versions = list(versions)
    if len(versions) != len(items) or not all(v is None or isinstance(v, str) for v in versions):
        raise InputError(
            f"teacher_versions must give one string (or None) per teacher ({len(items)}), got {versions!r}"
        )
    members = [_member(t, trust_pickled) for t in items]
    for member, version in zip(members, versions):
        if version is not None:
            member.fingerprint = f"version:{version}|{member.fingerprint}"
    return members


def resolve_classes(members: list[Member], classes: Any = None) -> np.ndarray | None:
    """The ensemble's class order; set each member's column permutation to match it.

    The order is ``classes`` when given, else that of the first member that declares its
    classes. Every member that declares classes must have the same set (members whose
    order differs are permuted). Returns None when nobody declares classes: the caller
    then uses ``range(C)`` from the members' output width.

    Raises
    ------
    ClassMismatchError
        A member's class set differs from the ensemble's.
    """
    declared = [m.own_classes() for m in members]
    order = classes if classes is not None else next((c for c in declared if c is not None), None)
    if order is None:
        return None
    order = class_list(order, "classes")
    for i, (member, own) in enumerate(zip(members, declared)):
        if own is not None:
            member.columns = class_columns(own, order, f"member {i} ({member.name})")
    return order

"""Reversible edits.

Every method returns a :class:`Patch`: a set of weight deltas, each either dense or low-rank
(``scale * B @ A``, which is how a merged LoRA adapter or a rank-d projection is stored, never
as a full matrix). A Patch can be

* applied to a model (the touched weights are backed up first),
* reverted bit-exactly (the backups are copied back),
* saved as ``patch.safetensors`` + ``manifest.json`` and loaded again,
* exported as merged Hugging Face weights, with what is needed to undo the merge bit-exactly
  (:meth:`Patch.export_merged`, :meth:`Patch.unmerge`).

The in-memory edit is always produced by :meth:`Patch.apply` on the base weights, so loading a
saved patch onto the base model and applying it gives the same weights bit for bit. Half-precision
weights (bf16, fp16) get the delta added in fp32 and are rounded once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from trustedit.rundir import atomic_dir
from trustedit.errors import TrusteditError

PATCH_FORMAT = "trustedit-patch/1"
EXPORT_INFO = "trustedit-patch.json"  # in a merged export: the patch manifest, fingerprints, revert data
REVERT_FILE = "trustedit-revert.st"  # safetensors format; not *.safetensors, so no loader takes it for weights
HALF_DTYPES = ("torch.bfloat16", "torch.float16")


@dataclass
class Delta:
    """A change to one parameter (``module.weight`` by default)."""

    kind: str  # "dense" | "lowrank"
    tensors: dict  # dense: {"delta"}; lowrank: {"B", "A"} (+ scale)
    scale: float = 1.0

    def materialise(self, like):
        """The full delta in ``like``'s dtype and device."""
        return self.full(like).to(dtype=like.dtype)

    def full(self, like=None, precise: bool = False):
        """The full delta on ``like``'s device, in fp32 (or ``like``'s dtype where that is wider);
        without ``like``, as stored (dense) or in fp32 (low rank). ``precise``: a low-rank product is
        computed in fp64 and rounded once, so that it does not depend on the BLAS library's
        summation order (used to undo a merge)."""
        import torch

        if self.kind == "dense":
            d = self.tensors["delta"]
        elif self.kind == "lowrank":
            B, A = self.tensors["B"], self.tensors["A"]
            d = (B.double() @ A.double()) * self.scale if precise else (B.float() @ A.float()) * self.scale
        else:
            raise TrusteditError(f"unknown delta kind {self.kind!r}")
        if like is None:
            return d
        if tuple(d.shape) != tuple(like.shape):
            raise TrusteditError(f"delta shape {tuple(d.shape)} does not match parameter shape {tuple(like.shape)}")
        wide = like.dtype if like.dtype.is_floating_point and like.dtype.itemsize > 4 else torch.float32
        return d.to(device=like.device, dtype=wide)

    @property
    def numel(self) -> int:
        return sum(t.numel() for t in self.tensors.values())


@dataclass
class Patch:
    method: str
    deltas: dict[str, Delta]  # parameter name (as in model.named_parameters()) -> Delta
    manifest: dict = field(default_factory=dict)
    _backup: dict = field(default_factory=dict, repr=False)
    # other edits from the same fit, evaluated side by side by a job but never saved with this one
    # (e.g. Ext-Sub's expert alone and plain negation of the same two adapters): name -> Patch
    variants: dict = field(default_factory=dict, repr=False)
    # a runtime component (see RUNTIME_KINDS): hooks installed on apply, removed on revert; it
    # writes no weight (a scope gate, GRACE's codebook, IKE's or SERAC's edit memory)
    gate: object = None

    # ---- lifecycle -------------------------------------------------------------------------
    @property
    def applied(self) -> bool:
        return bool(self._backup) or (self.gate is not None and self.gate.installed)

    def apply(self, model, check_fingerprint: str | None = None) -> "Patch":
        """Add every delta to its parameter. With ``check_fingerprint`` the manifest's
        base-model fingerprint must match."""
        import torch

        if self.applied:
            raise TrusteditError("patch is already applied")
        base = self.manifest.get("base_model", {}).get("fingerprint")
        if check_fingerprint and base and base != check_fingerprint:
            raise TrusteditError(f"patch was made for base model {base}, not {check_fingerprint}")
        params = dict(model.named_parameters())
        missing = [n for n in self.deltas if n not in params]
        if missing:
            raise TrusteditError(f"patch names parameters the model lacks: {missing[:3]}")
        stack = _applied_on(model)
        with torch.no_grad():
            try:
                stack.append(self)
                for name, delta in self.deltas.items():
                    p = params[name]
                    d = delta.full(p)
                    self._backup[name] = p.detach().clone()
                    _add_rounded(p, d)
                    if not torch.isfinite(p).all():
                        raise TrusteditError(f"applying the patch made {name} non-finite; nothing was changed")
                if self.gate is not None:
                    self.gate.install(model)
            except BaseException:  # all or nothing
                if self.applied:
                    self.revert(model)
                else:
                    _forget(stack, self)
                raise
        return self

    def revert(self, model) -> None:
        """Restore the backed-up weights exactly."""
        import torch

        if not self.applied:
            raise TrusteditError("patch is not applied")
        stack = _applied_on(model)
        at = [i for i, p in enumerate(stack) if p is self]  # by identity: patches hold tensors, == would compare them
        later = stack[at[0] + 1:] if at else []
        blocking = [p for p in later if set(p._backup) & set(self._backup)]
        if blocking:
            raise TrusteditError(f"revert the {blocking[-1].method} patch first: patches that touch the same weights "
                                 "revert in the reverse order of applying")
        if self.gate is not None:
            self.gate.remove()
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, saved in self._backup.items():
                params[name].copy_(saved)
        self._backup = {}
        _forget(stack, self)

    # ---- persistence -----------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``patch.safetensors`` and ``manifest.json`` into ``folder`` (atomically)."""
        from safetensors.torch import save_file

        with atomic_dir(folder, overwrite=True) as tmp:
            tensors, index = {}, {}
            for i, (name, delta) in enumerate(sorted(self.deltas.items())):
                keys = {}
                for k, t in delta.tensors.items():
                    key = f"d{i}.{k}"
                    tensors[key] = t.detach().to("cpu").contiguous()
                    keys[k] = key
                index[name] = {"kind": delta.kind, "scale": delta.scale, "tensors": keys}
            if self.gate is not None:
                tensors.update(self.gate.tensors())
            save_file(tensors, str(tmp / "patch.safetensors"), metadata={"format": PATCH_FORMAT})
            manifest = {**self.manifest, "format": PATCH_FORMAT, "method": self.method, "deltas": index}
            if self.gate is not None:
                manifest["gate"] = self.gate.describe()
            manifest.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            manifest["num_delta_parameters"] = sum(d.numel for d in self.deltas.values())
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
        return Path(folder)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "Patch":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        mpath, tpath = folder / "manifest.json", folder / "patch.safetensors"
        for p in (mpath, tpath):
            if not p.is_file():
                raise TrusteditError(f"{p}: missing (not a trustedit patch folder)")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise TrusteditError(f"{mpath}: invalid JSON at line {e.lineno}: {e.msg}") from None
        except UnicodeDecodeError as e:
            raise TrusteditError(f"{mpath}: not UTF-8 text ({e.reason})") from None
        if not isinstance(manifest, dict):
            raise TrusteditError(f"{mpath}: expected a JSON object, got {type(manifest).__name__}")
        if manifest.get("format") != PATCH_FORMAT:
            raise TrusteditError(f"{mpath}: field 'format' is {manifest.get('format')!r}, expected {PATCH_FORMAT!r}")
        try:
            tensors = load_file(str(tpath))
        except (SafetensorError, OSError) as e:
            raise TrusteditError(f"{tpath}: unreadable ({e})") from None
        index = manifest.get("deltas", {})
        if not isinstance(index, dict):
            raise TrusteditError(f"{mpath}: field 'deltas' must be an object, got {type(index).__name__}")
        deltas = {}
        for name, entry in index.items():
            deltas[name] = _delta_from(mpath, name, entry, tensors)
        gate = None
        if manifest.get("gate") is not None:
            gate = runtime_from_saved(str(mpath), manifest["gate"], tensors)
        return cls(manifest.get("method", "?"), deltas, manifest, gate=gate)

    def digest(self) -> str:
        """SHA-256 of the patch's content (parameter names, kinds, scales, tensor bytes): what a
        merged export records, so that ``patch revert`` can tell the patch that made it."""
        h = hashlib.sha256(PATCH_FORMAT.encode())
        for name in sorted(self.deltas):
            d = self.deltas[name]
            h.update(json.dumps([name, d.kind, float(d.scale)]).encode())
            for k in sorted(d.tensors):
                t = d.tensors[k].detach().to("cpu").contiguous()
                h.update(json.dumps([k, str(t.dtype), list(t.shape)]).encode())
                h.update(_tensor_bytes(t))
        if self.gate is not None:
            h.update(json.dumps(self.gate.describe(), sort_keys=True).encode())
            for k, t in sorted(self.gate.tensors().items()):
                h.update(k.encode())
                h.update(_tensor_bytes(t))
        return h.hexdigest()

    def export_merged(self, model, tokenizer, folder: str | os.PathLike, base_fingerprint: str | None = None,
                      overwrite: bool = True) -> Path:
        """Save the patched model as a plain HF folder (applies temporarily if needed).

        Besides the weights, the folder holds ``trustedit-patch.json`` (the manifest, the patch's
        :meth:`digest`, the base model's fingerprint and the merged folder's own fingerprint, as
        :func:`trustedit.models.load_model` computes it) and ``trustedit-revert.st``: the original
        value of every element that ``merged - delta`` does not give back exactly (0.4 % of the
        touched elements, 1.3 MB, for a rank-8 LoRA on q/v/gate of SmolLM2-135M in fp32), so that :meth:`unmerge` restores the base bit for bit."""
        from safetensors.torch import save_file

        from trustedit.models import folder_fingerprint, save_plain, sha256_file

        if self.gate is not None:
            what = RUNTIME_WHAT.get(runtime_kind(self.gate.describe()), "a runtime component")
            raise TrusteditError(f"a {self.method} patch holds {what} (it acts while the model runs), "
                                 "which merged weights cannot express; use the patch folder itself "
                                 "(trustedit eval/audit --patch, or Patch.load(...).apply(model))")
        was_applied = self.applied
        if not was_applied:
            self.apply(model)
        try:
            params = dict(model.named_parameters())
            corrections, record = {}, {"file": REVERT_FILE, "elements": 0, "corrections": 0, "tensors": {}}
            for name, delta in sorted(self.deltas.items()):
                merged, base = params[name].detach(), self._backup[name]
                back = _unmerged(merged, delta.full(merged, precise=True))
                idx = (_bits(back) != _bits(base)).flatten().nonzero().flatten()
                corrections[f"{name}:index"] = idx.to("cpu", _index_dtype(base.numel())).contiguous()
                corrections[f"{name}:value"] = base.flatten()[idx].to("cpu").contiguous()
                record["tensors"][name] = {"dtype": str(base.dtype).replace("torch.", ""), "sha256": _tensor_sha256(base)}
                record["elements"] += base.numel()
                record["corrections"] += int(idx.numel())
            with atomic_dir(folder, overwrite=overwrite) as tmp:
                save_plain(model, tokenizer, tmp)
                save_file(corrections, str(tmp / REVERT_FILE), metadata={"format": "trustedit-revert/1"})
                record["file_sha256"] = sha256_file(tmp / REVERT_FILE)
                info = {k: v for k, v in self.manifest.items() if k != "deltas"}
                info.update({
                    "method": self.method,
                    "patch_sha256": self.digest(),
                    "base_model": {**(info.get("base_model") if isinstance(info.get("base_model"), dict) else {}),
                                   **({"fingerprint": base_fingerprint} if base_fingerprint else {})},
                    "merged": {"fingerprint": "folder-sha256:" + folder_fingerprint(tmp)},
                    "revert": record,
                })
                (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=1, default=str))
            return Path(folder)
        finally:
            if not was_applied:
                self.revert(model)

    def unmerge(self, model, corrections: dict | None = None) -> dict:
        """Subtract every delta from a model that has it merged in (e.g. an exported folder).

        With ``corrections`` (an export's ``trustedit-revert.st``, see :func:`read_export`) the
        result is the base bit for bit; without, ``(w + d) - d`` need not equal ``w`` (an error
        of about one unit in the last place on a small share of the elements). Returns, per
        parameter, the SHA-256 of the result (compare with the export's record). In memory,
        :meth:`revert` restores the backed-up weights exactly."""
        import torch

        params = dict(model.named_parameters())
        missing = [n for n in self.deltas if n not in params]
        if missing:
            raise TrusteditError(f"patch names parameters the model lacks: {missing[:3]}")
        out = {}
        with torch.no_grad():
            for name, delta in self.deltas.items():
                p = params[name]
                back = _unmerged(p.detach(), delta.full(p, precise=corrections is not None))
                if corrections is not None:
                    idx, val = corrections.get(f"{name}:index"), corrections.get(f"{name}:value")
                    if idx is None or val is None:
                        raise TrusteditError(f"{REVERT_FILE}: no corrections for {name}")
                    flat = back.view(-1)
                    if idx.numel() and (idx.min() < 0 or idx.max() >= flat.numel() or idx.numel() != val.numel()):
                        raise TrusteditError(f"{REVERT_FILE}: corrections for {name} do not fit its shape")
                    flat[idx.to(device=flat.device, dtype=torch.long)] = val.to(device=flat.device, dtype=flat.dtype)
                p.copy_(back)
                out[name] = _tensor_sha256(p.detach())
        return out


# Runtime components a Patch can carry (``patch.gate``): ``describe()["kind"]`` -> "module:Class".
# A class has ``install(model)``, ``remove()``, ``installed``, ``describe() -> dict`` (JSON, with
# "kind"), ``tensors() -> {"gate.<name>": tensor}`` and ``from_saved(where, info, tensors)``; it
# never writes a weight, so removing its hooks restores the base model bit for bit.
RUNTIME_KINDS = {
    "scope": "trustedit.scope_gate:ScopeGate",
    "grace": "trustedit.methods.grace:Codebook",
    "ike": "trustedit.incontext:ContextEditor",
    "serac": "trustedit.incontext:ContextEditor",
}
RUNTIME_WHAT = {"scope": "a scope gate (a decision taken while the model runs)",
                "grace": "GRACE's key-value codebook", "ike": "IKE's edit memory and demonstrations",
                "serac": "SERAC's edit memory and scope classifier"}


def runtime_kind(info: dict) -> str:
    """The kind of a saved runtime component (scope gates saved before kinds existed have none)."""
    return str(info.get("kind", "scope")) if isinstance(info, dict) else "scope"


def runtime_from_saved(where: str, info, tensors: dict):
    """The runtime component a manifest's ``gate`` entry describes (one-line error for an unknown kind)."""
    import importlib

    if not isinstance(info, dict):
        raise TrusteditError(f"{where}: field 'gate' must be an object")
    kind = runtime_kind(info)
    entry = RUNTIME_KINDS.get(kind)
    if entry is None:
        raise TrusteditError(f"{where}: field 'gate.kind' is {kind!r} (known: {', '.join(sorted(RUNTIME_KINDS))})")
    mod, attr = entry.split(":")
    return getattr(importlib.import_module(mod), attr).from_saved(where, info, tensors)


def _applied_on(model) -> list:
    """The patches applied to ``model``, in the order they were applied (kept on the model, so
    that a patch under another one that touches the same weights cannot be reverted first)."""
    stack = model.__dict__.get("_trustedit_patches")
    if stack is None:
        stack = []
        object.__setattr__(model, "_trustedit_patches", stack)
    return stack


def _forget(stack: list, patch) -> None:
    """Remove ``patch`` (by identity) from a model's list of applied patches."""
    stack[:] = [p for p in stack if p is not patch]


class PatchStack:
    """Several patches composed: applied in the given order (each delta added to the weights the
    previous patches left, so patches that touch the same weights sum), reverted in reverse order,
    which restores the base weights bit for bit (each patch restores the weights it found).

    ``with stack.applied(model): ...`` applies and always reverts. A failure while applying
    reverts what was applied, so the model is never left half-patched."""

    def __init__(self, patches):
        self.patches = list(patches)
        self._applied: list = []

    @property
    def method(self) -> str:
        return "+".join(p.method for p in self.patches)

    def apply(self, model, check_fingerprint: str | None = None) -> "PatchStack":
        if self._applied:
            raise TrusteditError("patch stack is already applied")
        try:
            for p in self.patches:
                p.apply(model, check_fingerprint)
                self._applied.append(p)
        except BaseException:
            self.revert(model)
            raise
        return self

    def revert(self, model) -> None:
        while self._applied:
            self._applied.pop().revert(model)

    @contextmanager
    def applied(self, model, check_fingerprint: str | None = None):
        self.apply(model, check_fingerprint)
        try:
            yield self
        finally:
            self.revert(model)


def _delta_from(mpath: Path, name: str, entry, tensors: dict) -> Delta:
    """One manifest entry as a Delta, checked (kind, tensor names, scale, shapes)."""
    where = f"{mpath}: delta {name!r}"
    if not isinstance(entry, dict) or not isinstance(entry.get("tensors"), dict):
        raise TrusteditError(f"{where}: expected an object with 'kind', 'scale' and 'tensors'")
    kind, scale, keys = entry.get("kind"), entry.get("scale", 1.0), entry["tensors"]
    want = {"dense": {"delta"}, "lowrank": {"A", "B"}}.get(kind)
    if want is None:
        raise TrusteditError(f"{where}: unknown kind {kind!r} (dense or lowrank)")
    if set(keys) != want:
        raise TrusteditError(f"{where}: a {kind} delta has tensors {sorted(want)}, the manifest names {sorted(keys)}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise TrusteditError(f"{where}: field 'scale' must be a finite number, got {scale!r}")
    try:
        ts = {k: tensors[v] for k, v in keys.items()}
    except (KeyError, TypeError) as e:
        raise TrusteditError(f"{where} refers to missing {e}") from None
    if not all(t.is_floating_point() for t in ts.values()):
        raise TrusteditError(f"{where}: tensors must be floating point")
    if kind == "lowrank" and (ts["B"].dim() != 2 or ts["A"].dim() != 2 or ts["B"].shape[1] != ts["A"].shape[0]):
        raise TrusteditError(f"{where}: B {tuple(ts['B'].shape)} and A {tuple(ts['A'].shape)} do not multiply")
    return Delta(kind, ts, float(scale))


def read_export(folder: str | os.PathLike) -> tuple[dict, dict]:
    """``(info, corrections)`` of a merged export: its ``trustedit-patch.json`` and the tensors of
    its ``trustedit-revert.st`` (checked against the SHA-256 recorded in the former). One-line
    TrusteditErrors for a folder that is not an export or whose revert data is damaged."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from trustedit.models import sha256_file

    folder = Path(folder)
    ipath = folder / EXPORT_INFO
    if not folder.is_dir() or not ipath.is_file():
        raise TrusteditError(f"{folder}: no {EXPORT_INFO} (not a folder written by `trustedit patch export`)")
    try:
        info = json.loads(ipath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TrusteditError(f"{ipath}: unreadable ({e})") from None
    revert = info.get("revert") if isinstance(info, dict) else None
    merged = info.get("merged") if isinstance(info, dict) else None
    if not isinstance(revert, dict) or not isinstance(merged, dict) or not merged.get("fingerprint") \
            or not info.get("patch_sha256"):
        raise TrusteditError(f"{ipath}: records no merged fingerprint, patch digest and revert data "
                             "(exported by an older trustedit, or edited); export it again")
    rpath = folder / str(revert.get("file", REVERT_FILE))
    if not rpath.is_file():
        raise TrusteditError(f"{rpath}: missing (the export's revert data)")
    if sha256_file(rpath) != revert.get("file_sha256"):
        raise TrusteditError(f"{rpath}: does not match the SHA-256 that {EXPORT_INFO} records")
    try:
        corrections = load_file(str(rpath))
    except (SafetensorError, OSError) as e:
        raise TrusteditError(f"{rpath}: unreadable ({e})") from None
    return info, corrections


def _add_rounded(p, d) -> None:
    """``p += d`` with ``d`` in fp32: half-precision weights are added in fp32 and rounded once."""
    if str(p.dtype) in HALF_DTYPES:
        p.copy_((p.float() + d).to(p.dtype))
    else:
        p.add_(d.to(p.dtype))


def _unmerged(merged, d):
    """``merged - d``, rounded as :func:`_add_rounded` rounds the sum."""
    if str(merged.dtype) in HALF_DTYPES:
        return (merged.float() - d.float()).to(merged.dtype)
    return merged - d.to(merged.dtype)


def _bits(t):
    """``t`` as integers of the same width, so that equality is bitwise (-0.0 != 0.0, NaN == NaN)."""
    import torch

    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _index_dtype(n: int):
    import torch

    return torch.int32 if n < 2**31 else torch.int64


def _tensor_bytes(t) -> bytes:
    return _bits(t.detach().to("cpu")).numpy().tobytes()


def _tensor_sha256(t) -> str:
    return hashlib.sha256(_tensor_bytes(t)).hexdigest()


def sum_patches(patches, method: str) -> Patch:
    """One dense Patch holding, per parameter, the sum of the patches' full deltas (the net change
    of edits applied one after the other, as in sequential editing)."""
    total: dict = {}
    for p in patches:
        for name, d in p.deltas.items():
            if d.kind == "dense":  # as Delta.materialise: a dense delta is used as stored
                t = d.tensors["delta"]
            else:
                t = (d.tensors["B"].float() @ d.tensors["A"].float()) * d.scale
            total[name] = t.clone() if name not in total else total[name] + t
    return Patch(method, {k: Delta("dense", {"delta": v}) for k, v in total.items()})


def dense_patch_from(model, before: dict, method: str, manifest: dict | None = None) -> Patch:
    """Patch holding ``current - before`` for every parameter in ``before`` (a name -> tensor
    snapshot), then the model is restored to ``before`` so the caller applies the patch."""
    import torch

    params = dict(model.named_parameters())
    deltas = {}
    with torch.no_grad():
        for name, old in before.items():
            d = params[name].detach() - old
            deltas[name] = Delta("dense", {"delta": d.to("cpu").clone()})
            params[name].copy_(old)
    return Patch(method, deltas, dict(manifest or {}))

"""Reversible edits.

Every method returns a :class:`Patch`: a set of weight deltas, each either dense or low-rank
(``scale * B @ A``, which is how a merged LoRA adapter or a rank-d projection is stored, never
as a full matrix). A Patch can be

* applied to a model (the touched weights are backed up first),
* reverted bit-exactly (the backups are copied back),
* saved as ``patch.safetensors`` + ``manifest.json`` and loaded again,
* exported as merged Hugging Face weights.

The in-memory edit is always produced by :meth:`Patch.apply` on the base weights, so loading a
saved patch onto the base model and applying it gives the same weights bit for bit.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from trustedit.rundir import atomic_dir
from trustedit.errors import TrusteditError

PATCH_FORMAT = "trustedit-patch/1"


@dataclass
class Delta:
    """A change to one parameter (``module.weight`` by default)."""

    kind: str  # "dense" | "lowrank"
    tensors: dict  # dense: {"delta"}; lowrank: {"B", "A"} (+ scale)
    scale: float = 1.0

    def full(self):
        """The full delta as stored (dense) or as ``scale * B @ A`` in fp32 (low rank)."""
        if self.kind == "dense":
            return self.tensors["delta"]
        if self.kind == "lowrank":
            B, A = self.tensors["B"], self.tensors["A"]
            return (B.float() @ A.float()) * self.scale
        raise TrusteditError(f"unknown delta kind {self.kind!r}")

    def materialise(self, like):
        """The full delta in ``like``'s dtype and device."""
        d = self.full()
        if tuple(d.shape) != tuple(like.shape):
            raise TrusteditError(f"delta shape {tuple(d.shape)} does not match parameter shape {tuple(like.shape)}")
        return d.to(device=like.device, dtype=like.dtype)

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

    # ---- lifecycle -------------------------------------------------------------------------
    @property
    def applied(self) -> bool:
        return bool(self._backup)

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
        with torch.no_grad():
            try:
                for name, delta in self.deltas.items():
                    p = params[name]
                    d = delta.materialise(p)
                    self._backup[name] = p.detach().clone()
                    p.add_(d)
                    if not torch.isfinite(p).all():
                        raise TrusteditError(f"applying the patch made {name} non-finite; nothing was changed")
            except BaseException:  # all or nothing
                if self._backup:
                    self.revert(model)
                raise
        return self

    def revert(self, model) -> None:
        """Restore the backed-up weights exactly."""
        import torch

        if not self.applied:
            raise TrusteditError("patch is not applied")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, saved in self._backup.items():
                params[name].copy_(saved)
        self._backup = {}

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
            save_file(tensors, str(tmp / "patch.safetensors"), metadata={"format": PATCH_FORMAT})
            manifest = {**self.manifest, "format": PATCH_FORMAT, "method": self.method, "deltas": index}
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
            manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise TrusteditError(f"{mpath}: invalid JSON at line {e.lineno}: {e.msg}") from None
        if manifest.get("format") != PATCH_FORMAT:
            raise TrusteditError(f"{mpath}: field 'format' is {manifest.get('format')!r}, expected {PATCH_FORMAT!r}")
        try:
            tensors = load_file(str(tpath))
        except (SafetensorError, OSError) as e:
            raise TrusteditError(f"{tpath}: unreadable ({e})") from None
        deltas = {}
        for name, entry in manifest.get("deltas", {}).items():
            try:
                deltas[name] = Delta(entry["kind"], {k: tensors[v] for k, v in entry["tensors"].items()}, entry["scale"])
            except KeyError as e:
                raise TrusteditError(f"{mpath}: delta {name!r} refers to missing {e}") from None
        return cls(manifest.get("method", "?"), deltas, manifest)

    def export_merged(self, model, tokenizer, folder: str | os.PathLike) -> Path:
        """Save the patched model as a plain HF folder (applies temporarily if needed)."""
        from trustedit.models import save_folder

        was_applied = self.applied
        if not was_applied:
            self.apply(model)
        try:
            info = json.dumps({k: v for k, v in self.manifest.items() if k != "deltas"}, indent=1, default=str)
            return save_folder(model, tokenizer, folder, {"trustedit-patch.json": info})
        finally:
            if not was_applied:
                self.revert(model)

    def unmerge(self, model) -> None:
        """Subtract every delta from a model that has it merged in (e.g. an exported folder).

        Exact only up to float rounding: ``(w + d) - d`` need not equal ``w``. In memory,
        :meth:`revert` restores the backed-up weights bit for bit; use that where possible.
        """
        import torch

        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, delta in self.deltas.items():
                params[name].sub_(delta.materialise(params[name]))


def sum_patches(patches, method: str) -> Patch:
    """One dense Patch holding, per parameter, the sum of the patches' full deltas (the net change
    of edits applied one after the other, as in sequential editing)."""
    total: dict = {}
    for p in patches:
        for name, d in p.deltas.items():
            t = d.full()
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

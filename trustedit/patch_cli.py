"""``trustedit patch show|apply|export|revert``: a saved patch and a model folder.

* ``apply`` / ``export`` write the merged weights (plus ``trustedit-patch.json``: the manifest, the
  patch's digest, the base and the merged fingerprints, and ``trustedit-revert.st``, the data
  that makes the revert bit-exact), after checking that ``--out`` can be written and that the
  model is the patch's base.
* ``revert`` undoes an export: ``--model`` must be the folder that ``export`` wrote for this very
  patch, unchanged (its fingerprint is recomputed); the result is the base bit for bit, checked
  tensor by tensor against the SHA-256 the export recorded.

Imports nothing heavy until a command runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from trustedit.errors import TrusteditError, UsageError


def run(args) -> int:
    """Run one ``patch`` command (``args``: action, patch, model, out, device, overwrite)."""
    from trustedit.patch import Patch
    from trustedit.rundir import check_target

    if args.action != "show":
        if not args.out:
            raise UsageError(f"patch {args.action} needs --out FOLDER for the resulting weights")
        if args.action == "revert" and not args.model:
            raise UsageError("patch revert needs --model MERGED_FOLDER (the patched weights to undo)")
        check_target(args.out, args.overwrite)  # before anything is loaded
    patch = Patch.load(args.patch)
    if args.action == "show":
        print(json.dumps({k: v for k, v in patch.manifest.items() if k != "deltas"}, indent=1, default=str))
        return 0
    if args.action in ("apply", "export"):
        if patch.gate is not None:
            from trustedit.patch import RUNTIME_WHAT, runtime_kind

            what = RUNTIME_WHAT.get(runtime_kind(patch.gate.describe()), "a runtime component")
            raise UsageError(f"{args.patch}: a {patch.method} patch holds {what} (it acts while the model runs), "
                             "which merged weights cannot express; use the patch folder itself (trustedit "
                             "eval/audit --patch)")
        return _export(patch, args)
    return _revert(patch, args)


def _export(patch, args) -> int:
    from trustedit.models import load_model

    lm = load_model(args.model or _base(patch).get("spec"), args.device, "float32")
    check_base(patch, lm)
    out = patch.export_merged(lm.model, lm.tokenizer, args.out, base_fingerprint=lm.fingerprint, overwrite=args.overwrite)
    info = json.loads((out / "trustedit-patch.json").read_text())
    r = info["revert"]
    print(f"wrote merged weights to {args.out} (fingerprint {info['merged']['fingerprint']}; revert data: "
          f"{r['corrections']} of {r['elements']} edited values)")
    return 0


def _revert(patch, args) -> int:
    from trustedit.models import folder_fingerprint, load_model, save_folder
    from trustedit.patch import read_export

    folder = Path(args.model)
    info, corrections = read_export(folder)
    digest = patch.digest()
    if info["patch_sha256"] != digest:
        raise TrusteditError(f"{folder} was exported with another patch (digest {info['patch_sha256'][:16]}…), "
                             f"not {args.patch} ({digest[:16]}…)")
    fingerprint = "folder-sha256:" + folder_fingerprint(folder)
    if fingerprint != info["merged"]["fingerprint"]:
        raise TrusteditError(f"{folder}: weights changed since the export (fingerprint {fingerprint}, the export "
                             f"recorded {info['merged']['fingerprint']}); reverting would not give the base model")
    dtypes = {t.get("dtype") for t in info["revert"].get("tensors", {}).values()}
    dtype = dtypes.pop() if len(dtypes) == 1 else "float32"
    lm = load_model(str(folder), args.device, dtype)
    if lm.fingerprint != fingerprint:
        raise TrusteditError(f"{folder}: changed while it was being read; try again")
    got = patch.unmerge(lm.model, corrections)
    want = {n: t.get("sha256") for n, t in info["revert"]["tensors"].items()}
    bad = sorted(n for n in got if got[n] != want.get(n))
    if bad or set(want) != set(got):
        raise TrusteditError(f"reverting {folder} did not give the base weights back bit for bit ({len(bad)} of "
                             f"{len(got)} tensors differ, e.g. {(bad or sorted(set(want) ^ set(got)))[0]}); "
                             "nothing was written")
    record = {"reverted_from": str(folder), "merged_fingerprint": fingerprint, "patch_sha256": digest,
              "method": patch.method, "base_model": info.get("base_model", {}), "bit_exact": True,
              "tensors_checked": len(got)}
    save_folder(lm.model, lm.tokenizer, args.out, {"trustedit-revert.json": json.dumps(record, indent=1)},
                overwrite=args.overwrite)
    print(f"wrote {args.out}: {folder} with the {patch.method} patch removed, bit-exact ({len(got)} edited tensors "
          "checked against the export's SHA-256)")
    return 0


def check_base(patch, lm) -> None:
    """The model must be the one the patch was made for (when the manifest names one)."""
    fp = _base(patch).get("fingerprint")
    if fp and fp != lm.fingerprint:
        raise TrusteditError(f"{patch.manifest.get('method')} patch was made for {fp}, this model is {lm.fingerprint}")


def _base(patch) -> dict:
    base = patch.manifest.get("base_model")
    return base if isinstance(base, dict) else {}

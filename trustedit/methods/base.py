"""What every method shares: a config dataclass whose fields carry their own help text, the
way configs are resolved from a file and ``--set key=value``, and the training loop."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from trustedit.errors import NumericalError, UsageError


def opt(default, help: str, **kw):
    """A config field with its help text (PEFT style)."""
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class MethodConfig:
    seed: int = opt(0, "Random seed for data order, dropout and initialisation.")
    batch_size: int = opt(8, "Training batch size (sequences).")

    @classmethod
    def help_table(cls) -> list[tuple[str, object, str]]:
        out = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out.append((f.name, default, f.metadata.get("help", "")))
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def resolve(cls, file: str | None = None, sets: list[str] | None = None, **overrides):
        """Defaults, then ``file`` (JSON; a top-level ``method`` section is also accepted), then
        ``--set key=value`` items, then keyword overrides."""
        values: dict = {}
        if file:
            p = Path(file)
            if not p.is_file():
                raise UsageError(f"--config {file}: no such file")
            try:
                data = json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise UsageError(f"--config {file}: invalid JSON at line {e.lineno}: {e.msg}") from None
            if not isinstance(data, dict):
                raise UsageError(f"--config {file}: expected a JSON object")
            section = data.get("method") if isinstance(data.get("method"), dict) else data
            values.update({k: v for k, v in section.items() if k != "method"})
        for item in sets or []:
            if "=" not in item:
                raise UsageError(f"--set {item!r}: expected key=value")
            k, v = item.split("=", 1)
            values[k.strip()] = v.strip()
        values.update({k: v for k, v in overrides.items() if v is not None})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for k, v in values.items():
            if k not in fields:
                raise UsageError(f"unknown {cls.__name__} option {k!r} (known: {', '.join(sorted(fields))})")
            kwargs[k] = _coerce(k, v, fields[k])
        return cls(**kwargs)


def _coerce(name, value, f):
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if not isinstance(value, str):
        ok = (default is None or isinstance(value, type(default))
              or (isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool))
              or (isinstance(default, (list, tuple)) and isinstance(value, (list, tuple))))
        if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, bool):
            ok = False
        if not ok:
            raise UsageError(f"config option {name}={value!r}: expected {type(default).__name__}")
        return list(value) if isinstance(default, list) else value
    try:
        if isinstance(default, bool):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, (list, tuple)):
            return [x.strip() for x in value.split(",") if x.strip()]
        if default is None and value.lower() in ("none", "null", ""):
            return None
        if default is None:
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                return value
        return value
    except ValueError:
        raise UsageError(f"--set {name}={value}: expected {type(default).__name__}") from None


def set_seed(seed: int):
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def length_grouped_batches(lengths, batch_size: int, generator, group: int = 8):
    """A seeded random epoch of batches in which each batch holds sequences of similar length:
    shuffle, sort within windows of ``group`` batches by length, then shuffle the batches.
    Cuts padding (and time) without fixing the order across epochs."""
    import torch

    order = torch.randperm(len(lengths), generator=generator).tolist()
    window = batch_size * group
    out = []
    for s in range(0, len(order), window):
        chunk = sorted(order[s : s + window], key=lambda i: lengths[i])
        out += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    perm = torch.randperm(len(out), generator=generator).tolist()
    return [out[i] for i in perm]


def sample_items(items, limit: int, seed: int) -> list:
    """At most ``limit`` items (0: all), a seeded sample in the original order."""
    import random

    if not limit or len(items) <= limit:
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def retain_pairs(lm, pairs, how: str, max_new_tokens: int = 16, batch_size: int = 32):
    """Training pairs for the retain questions.

    ``gold``: the dataset's answers (the sanitization paper's recipe). ``self``: the base model's
    own greedy answers (ending with EOS only where the model stopped), i.e. self-distillation of
    the behaviour to keep. With a small model that knows few answers, training on unknown gold
    answers teaches new facts and moves its predictions on every other question (locality);
    ``self`` keeps them.
    """
    from trustedit.errors import UsageError
    from trustedit.prompts import Pair, generate

    if how == "gold":
        return list(pairs)
    if how != "self":
        raise UsageError(f"retain_target must be 'gold' or 'self', got {how!r}")
    tok = lm.tokenizer
    was_training = lm.model.training
    lm.model.eval()
    _, ids = generate(lm.model, tok, [p.prompt for p in pairs], max_new_tokens, batch_size, desc="base answers (retain)")
    lm.model.train(was_training)
    out = []
    for p, new in zip(pairs, ids):
        stopped = len(new) < max_new_tokens
        target = list(new) + ([tok.eos_token_id] if stopped and tok.eos_token_id is not None else [])
        if target:
            out.append(Pair(p.prompt, target))
    return out


def training_record(losses, pairs, t0: float, **extra) -> dict:
    """What a fit did, for the patch manifest and results.json."""
    import time

    return {**extra, "steps": len(losses), "pairs": len(pairs), "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None, "seconds": round(time.time() - t0, 2)}


def train_pairs(model, pairs, params, *, lr, epochs=1, max_steps=None, batch_size=8, warmup_steps=0,
                weight_decay=0.0, seed=0, pad_id=0, desc="train", grad_clip=1.0):
    """AdamW on ``params`` minimising target-token cross-entropy (prompt masked) over ``pairs``.

    Linear warm-up over ``warmup_steps`` then linear decay to zero. Returns the loss history.
    """
    import torch
    from tqdm.auto import tqdm

    from trustedit.prompts import collate, lm_loss

    g = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(pairs) / batch_size)
    pairs = list(pairs)
    total = steps_per_epoch * epochs if max_steps is None else max_steps
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def lr_at(step):
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total - step) / max(1, total - warmup_steps))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    history = []
    was_training = model.training
    model.train()
    step = 0
    bar = tqdm(total=total, desc=desc, leave=False)
    try:
        while step < total:
            for idx in length_grouped_batches([len(p.input_ids) for p in pairs], batch_size, g):
                if step >= total:
                    break
                batch = collate([pairs[i] for i in idx], pad_id)
                loss = lm_loss(model, batch)
                if not torch.isfinite(loss):
                    raise NumericalError(f"{desc}: loss became {loss.item()} at step {step}; lower the learning rate")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                opt.step()
                sched.step()
                history.append(float(loss.detach()))
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1]:.3f}")
    finally:
        bar.close()
        model.train(was_training)
    return history


PROTOCOLS = ("whole", "per_instance")


@dataclass(frozen=True)
class Method:
    """A registered method. Every method has the same ``fit(lm, train, cfg, stages=None) -> Patch``:
    ``train`` is what the method learns from (built by the ``train`` entry, ``"module:attr"`` of a
    ``builder(lm, job)``, or None when the method reads its own default data), ``stages`` an
    optional ``stages(name)`` context-manager factory that times its steps.

    ``protocol``: ``whole`` (one patch for the whole training set) or ``per_instance`` (one patch
    per evaluated instance: ``train`` is the instance; see :mod:`trustedit.job`). ``fit_sweep``:
    optional ``fit_sweep(lm, train, cfgs, stages=None)`` yielding one patch per config while
    sharing the work the configs have in common (used by sweeps)."""

    name: str
    config: type
    fit: object
    citation: str
    summary: str
    protocol: str = "whole"
    train: str | None = None
    fit_sweep: object = None
    variants: tuple = ()  # side-by-side variants its patch carries (``patch.variants``), e.g. the expert alone

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")


def layer_index(spec, n_layers: int) -> int:
    """A layer given as an int (negative counts from the top) or a fraction of depth in [0, 1)."""
    if isinstance(spec, str):
        spec = float(spec) if "." in spec else int(spec)
    if isinstance(spec, float):
        if not 0.0 <= spec < 1.0:
            raise UsageError(f"layer fraction {spec} must be in [0, 1)")
        return int(spec * n_layers)
    if not -n_layers <= spec < n_layers:
        raise UsageError(f"layer {spec} out of range for {n_layers} layers")
    return spec % n_layers

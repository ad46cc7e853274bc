"""What every method shares: a config dataclass whose fields carry their own help text and
constraints, the way configs are resolved from a file and ``--set key=value``, and the
training loop."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from trustedit.errors import NumericalError, UsageError

RETAIN_TARGETS = ("gold", "self")  # see retain_pairs


def opt(default, help: str, *, gt=None, ge=None, lt=None, le=None, choices=None, finite=None, layer=False,
        min_items=None, check=None, item=None, **kw):
    """A config field with its help text (PEFT style) and the values it accepts, checked by
    :meth:`MethodConfig.__post_init__` whenever a config is built:

    * ``gt`` / ``ge`` / ``lt`` / ``le``: bounds of a number (of each item of a list);
    * ``choices``: the allowed values (of each item of a list);
    * ``finite``: NaN and infinities are refused (default: on for numbers);
    * ``layer``: a layer index (an int, negative counts from the top) or a fraction of depth in
      [0, 1); a float with an integral value outside [0, 1) counts as an index;
    * ``min_items``: the shortest list allowed; ``item``: what one item of a list with choices is
      called in errors ("unknown LoRA target role 'qkv' (known: ...)");
    * ``check(value) -> str | None``: a further rule; the string says what the value must be.

    An int field takes only ints, a float field ints or floats (never bools)."""
    rules = {"gt": gt, "ge": ge, "lt": lt, "le": le, "choices": tuple(choices) if choices is not None else None,
             "finite": finite, "layer": layer or None, "min_items": min_items, "check": check, "item": item}
    meta = {"help": help, **{k: v for k, v in rules.items() if v is not None}, **kw}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class MethodConfig:
    seed: int = opt(0, "Random seed for data order, dropout and initialisation.", ge=0)
    batch_size: int = opt(8, "Training batch size (sequences).", ge=1)

    def __post_init__(self):
        """Check every field against its declared constraints (a one-line UsageError naming the
        option, the value and what is allowed); normalise layer floats that are indices."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_option(type(self).__name__, f, getattr(self, f.name)))

    @classmethod
    def help_table(cls) -> list[tuple[str, object, str]]:
        out = []
        for f in dataclasses.fields(cls):
            out.append((f.name, _default(f), f.metadata.get("help", "")))
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def resolve(cls, file: str | None = None, sets: list[str] | None = None, **overrides):
        """Defaults, then ``file`` (JSON or YAML; a top-level ``method`` section is also
        accepted), then ``--set key=value`` items, then keyword overrides (``None`` ignored).

        Every value is coerced to its field's type and checked against the field's constraints;
        an error names where the value came from (``--config FILE`` or ``--set key=value``)."""
        values: dict = {}  # name -> (value, source); later sources replace earlier ones
        if file:
            section = _read_config_file(file)
            values.update({k: (v, f"--config {file}") for k, v in section.items() if k != "method"})
        for item in sets or []:
            if "=" not in item:
                raise UsageError(f"--set {item!r}: expected key=value")
            k, v = item.split("=", 1)
            values[k.strip()] = (v.strip(), f"--set {k.strip()}={v.strip()}")
        values.update({k: (v, None) for k, v in overrides.items() if v is not None})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for k, (v, source) in values.items():
            if k not in fields:
                where = f"{source}: " if source else ""
                raise UsageError(f"{where}unknown {cls.__name__} option {k!r} (known: {', '.join(sorted(fields))})")
            try:
                kwargs[k] = check_option(cls.__name__, fields[k], _coerce(k, v, fields[k], source))
            except UsageError as e:
                if source and not str(e).startswith(source):
                    raise UsageError(f"{source}: {e}") from None
                raise
        return cls(**kwargs)


def _default(f):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def _read_config_file(file: str) -> dict:
    """The option mapping in a ``--config`` file: JSON (``.json``), YAML (``.yaml``/``.yml``),
    anything else JSON first, then YAML."""
    p = Path(file)
    if not p.is_file():
        raise UsageError(f"--config {file}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--config {file}: unreadable ({e})") from None
    ext = p.suffix.lower()
    if ext == ".json":
        data, kind = _parse_json(file, text), "JSON object"
    elif ext in (".yaml", ".yml"):
        data, kind = _parse_yaml(file, text), "YAML mapping"
    else:
        try:
            data, kind = _parse_json(file, text), "JSON object"
        except UsageError as json_error:
            try:
                data, kind = _parse_yaml(file, text), "YAML mapping"
            except UsageError:
                raise UsageError(f"{json_error} (and not YAML either)") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {file}: expected a {kind} of options, got {type(data).__name__}")
    section = data.get("method") if isinstance(data.get("method"), dict) else data
    bad = [k for k in section if not isinstance(k, str)]
    if bad:
        raise UsageError(f"--config {file}: option names must be strings, got {bad[0]!r}")
    return section


def _parse_json(file, text):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--config {file}: invalid JSON at line {e.lineno}: {e.msg}") from None


def _parse_yaml(file, text):
    try:
        import yaml
    except ImportError:
        raise UsageError(f"--config {file}: reading YAML needs PyYAML (pip install pyyaml)") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
        raise UsageError(f"--config {file}: invalid YAML{where}: {problem}") from None


def _kind(default) -> type | None:
    """The type a field's values must have, from its default (None: any)."""
    for t in (bool, int, float, str):
        if isinstance(default, t):
            return t
    if isinstance(default, (list, tuple)):
        return list
    return None


def _coerce(name, value, f, source=None):
    """``value`` (a string from ``--set``, or a value parsed from a config file) as the field's type."""
    default = _default(f)
    if f.metadata.get("auto") and value == "auto":
        return value
    kind = _kind(default)
    item_kind = _kind(default[0]) if kind is list and default and len({type(x) for x in default}) == 1 else None
    type_name = f"list of {item_kind.__name__}" if item_kind in (int, float) else type(default).__name__
    if source and source.startswith("--set"):
        expected = lambda: UsageError(f"{source}: expected {type_name}")  # noqa: E731
    else:
        where = f"{source}: " if source else ""
        expected = lambda: UsageError(f"{where}option {name!r}: expected {type_name}, got {value!r}")  # noqa: E731
    if not isinstance(value, str):
        ok = (default is None or isinstance(value, type(default))
              or (kind is float and isinstance(value, int) and not isinstance(value, bool))
              or (kind is list and isinstance(value, (list, tuple))))
        if kind in (int, float) and isinstance(value, bool):
            ok = False
        if not ok:
            raise expected()
        return list(value) if kind is list else value
    try:
        if kind is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            return int(value)
        if kind is float:
            return float(value)
        if kind is list:  # items take the type of the default's items (context_lengths=5,10 -> [5, 10])
            items = [x.strip() for x in value.split(",") if x.strip()]
            return [item_kind(x) for x in items] if item_kind in (int, float) else items
        if default is None and value.lower() in ("none", "null", ""):
            return None
        if default is None:
            try:
                return json.loads(value)
            except json.JSONDecodeError:
                return value
        return value
    except ValueError:
        raise expected() from None


def _number_text(x) -> str:
    """A bound as written in an error: 0 rather than 0.0, 1e-10 as is."""
    return str(int(x)) if isinstance(x, float) and x.is_integer() else repr(x)


def _range_text(m: dict) -> str:
    lo = ("gt", m["gt"]) if "gt" in m else ("ge", m["ge"]) if "ge" in m else None
    hi = ("lt", m["lt"]) if "lt" in m else ("le", m["le"]) if "le" in m else None
    if lo and hi:
        return (f"in {'(' if lo[0] == 'gt' else '['}{_number_text(lo[1])}, {_number_text(hi[1])}"
                f"{')' if hi[0] == 'lt' else ']'}")
    sym = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    return " ".join(f"{sym[r[0]]} {_number_text(r[1])}" for r in (lo, hi) if r)


def _allowed_text(kind, m: dict) -> str:
    """What a value of this field must be, in words."""
    if m.get("layer"):
        return "a layer index (an integer, negative counts from the top) or a fraction of depth in [0, 1)"
    if "choices" in m:
        return "one of " + ", ".join(repr(c) for c in m["choices"])
    noun = "an integer" if kind is int else "a finite number" if m.get("finite", True) else "a number"
    rng = _range_text(m)
    return f"{noun} {rng}" if rng else noun


def check_option(owner: str, f, value):
    """``value`` checked against field ``f``'s type and constraints; returns it (layer floats
    that are indices come back as ints). Raises a one-line UsageError naming the option."""
    m, default = f.metadata, _default(f)
    kind = _kind(default)

    def bad(what, got=value):
        return UsageError(f"{owner} option {f.name!r} must be {what}, got {got!r}")

    if m.get("layer"):
        if m.get("auto") and value == "auto":
            return value  # chosen by causal tracing when the method runs (trustedit.locate.auto_layer)
        return _check_layer(f, value, default, bad)
    if kind is not None and not _has_kind(value, kind):
        raise bad({int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}[kind])
    items = list(value) if kind is list else [value]
    if kind is list and "min_items" in m and len(items) < m["min_items"]:
        raise bad(f"a list of at least {m['min_items']} items")
    for x in items:
        if _item_ok(x, m):
            continue
        if kind is not list:
            raise bad(_allowed_text(kind, m))
        if "item" in m and "choices" in m:
            raise UsageError(f"{owner} option {f.name!r}: unknown {m['item']} {x!r} (known: {', '.join(m['choices'])})")
        raise bad(_allowed_text(int if isinstance(x, int) else float, m) + " (each item)")
    if "check" in m:
        problem = m["check"](value)
        if problem:
            raise bad(problem)
    return value


def _item_ok(x, m: dict) -> bool:
    """``x`` (a value, or one item of a list) within the choices and bounds of ``m``."""
    if "choices" in m:
        return x in m["choices"]
    is_number = isinstance(x, (int, float)) and not isinstance(x, bool)
    if not is_number:
        return not any(k in m for k in ("gt", "ge", "lt", "le"))
    if m.get("finite", True) and not math.isfinite(x):
        return False
    return not (("gt" in m and not x > m["gt"]) or ("ge" in m and not x >= m["ge"]) or ("lt" in m and not x < m["lt"])
                or ("le" in m and not x <= m["le"]))


def _has_kind(value, kind) -> bool:
    if kind is list:
        return isinstance(value, (list, tuple))
    if kind in (int, float) and isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _check_layer(f, value, default, bad):
    what = _allowed_text(None, f.metadata)
    if value is None or value == "":
        if default is None:
            return value
        raise bad(what)
    if isinstance(value, str):
        try:
            value = float(value) if "." in value else int(value)
        except ValueError:
            raise bad(what) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(what)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise bad(what)
        if value.is_integer() and (value >= 1 or value < 0):
            return int(value)  # an index given as a float (--set first_layer=21 arrives as 21.0)
        if not 0.0 <= value < 1.0:
            raise bad(what)
    return value


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


def retain_pairs(lm, pairs, how: str, max_new_tokens: int = 16, batch_size: int = 16):
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
    if how not in RETAIN_TARGETS:
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
    sharing the work the configs have in common (used by sweeps and budget searches)."""

    name: str
    config: type
    fit: object
    citation: str
    summary: str
    protocol: str = "whole"
    train: str | None = None
    fit_sweep: object = None
    variants: tuple = ()  # side-by-side variants its patch carries (``patch.variants``), e.g. the expert alone
    # ``budget_grid(cfg) -> [(label, {option: value})]``: the strengths a fluency budget
    # (``--max-ppl-increase``) chooses from; None: the method takes no budget
    budget_grid: object = None
    # ``fit`` takes edit requests (:mod:`trustedit.methods.requests`): one, or a batch of them, so that
    # ``trustedit edit`` can run it in single, batch and sequential modes
    edits_requests: bool = False
    # each fit's patch holds every edit of the run so far (an edit memory kept in the requests' state:
    # GRACE's codebook, IKE's and SERAC's facts), so a sequential run replaces the previous fit's
    # patch with it instead of stacking patches
    cumulative: bool = False

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")


def differ_beyond(cfgs, sweepable) -> bool:
    """Whether the configs differ in any field outside ``sweepable`` (then a ``fit_sweep`` cannot
    share its common work and fits each config on its own)."""
    import dataclasses

    rest = [{k: v for k, v in dataclasses.asdict(c).items() if k not in sweepable} for c in cfgs]
    return any(r != rest[0] for r in rest)


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

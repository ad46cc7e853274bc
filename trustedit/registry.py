"""Lazy registries (lm-evaluation-harness style): name -> "module:attribute".

Nothing here imports torch; an entry is imported only when it is used.
"""

from __future__ import annotations

import importlib

from trustedit.errors import UsageError

# Methods that produce a Patch. Only implemented methods are listed.
METHODS: dict[str, str] = {
    "sanitation-scope": "trustedit.privacy.scope:METHOD",
    "sanitation-scope+lora": "trustedit.privacy.scope:METHOD_LORA",
    "sanitation-lora": "trustedit.privacy.sanitization:METHOD",
    "ft-m": "trustedit.methods.ft_m:METHOD",
    "dama": "trustedit.bias.dama:METHOD",
    "inlp": "trustedit.bias.inlp:METHOD",
    "ext-sub": "trustedit.safety.ext_sub:METHOD",
    "negation": "trustedit.safety.ext_sub:NEGATION",
    "dinm": "trustedit.safety.dinm:METHOD",
    "profs": "trustedit.safety.profs:METHOD",
    "depn": "trustedit.privacy.depn:METHOD",
    "depn-random": "trustedit.privacy.depn:RANDOM",
    "revs": "trustedit.privacy.revs:METHOD",
    "rome": "trustedit.methods.rome:METHOD",
    "memit": "trustedit.methods.memit:METHOD",
    "alphaedit": "trustedit.methods.alphaedit:METHOD",
    "kn": "trustedit.methods.kn:METHOD",
    "ft-l": "trustedit.methods.ft_l:METHOD",
    "serac": "trustedit.methods.serac:METHOD",
    "ike": "trustedit.methods.ike:METHOD",
    "lora": "trustedit.methods.lora_edit:METHOD",
    "adalora": "trustedit.methods.adalora:METHOD",
    "grace": "trustedit.methods.grace:METHOD",
    "mend": "trustedit.methods.mend:METHOD",
}

# Evaluation suites (trustedit/suites/, one file each): name -> the Suite object.
SUITES: dict[str, str] = {
    "sanitation": "trustedit.suites.sanitation:SUITE",
    "fluency": "trustedit.suites.fluency:SUITE",
    "retention": "trustedit.suites.retention:SUITE",
    "dama-gender": "trustedit.suites.dama_gender:SUITE",
    "winobias": "trustedit.suites.winobias:SUITE",
    "stereoset": "trustedit.suites.stereoset:SUITE",
    "crows-pairs": "trustedit.suites.crows_pairs:SUITE",
    "rtp": "trustedit.suites.rtp:SUITE",
    "extsub-greedy": "trustedit.suites.extsub_greedy:SUITE",
    "safeedit": "trustedit.suites.safeedit:SUITE",
    "privacy": "trustedit.suites.privacy:SUITE",
    "knowedit": "trustedit.suites.knowedit:SUITE",
}

# Groups of suites, usable wherever a suite name is.
SUITE_GROUPS: dict[str, tuple[str, ...]] = {
    "bias": ("dama-gender", "winobias", "stereoset", "crows-pairs"),
    "toxicity": ("rtp", "extsub-greedy"),
}

# Toxicity scorers (trustedit.safety.scorers): name -> class; instances have name, kind, version,
# score(texts) -> list[float] in [0, 1], describe(); the class has status() -> (available, note).
SCORERS: dict[str, str] = {
    "minilm-lr": "trustedit.safety.scorers:MiniLMLRScorer",
    "detoxify": "trustedit.safety.scorers:DetoxifyScorer",
    "profanity": "trustedit.safety.scorers:ProfanityScorer",
}
DEFAULT_SCORER = "minilm-lr"


def load_entry(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def get_method(name: str):
    if name not in METHODS:
        raise UsageError(f"unknown method {name!r} (known: {', '.join(sorted(METHODS))})")
    return load_entry(METHODS[name])


def expand_suites(names) -> list[str]:
    """Suite names with groups expanded, in order, without repeats; unknown names are a usage error."""
    out = []
    for n in names:
        for x in SUITE_GROUPS.get(n, (n,)):
            if x not in SUITES:
                known = ", ".join([*SUITES, *SUITE_GROUPS])
                raise UsageError(f"unknown suite {x!r} (known: {known})")
            if x not in out:
                out.append(x)
    return out


def get_suite(name: str):
    if name not in SUITES:
        raise UsageError(f"unknown suite {name!r} (known: {', '.join([*SUITES, *SUITE_GROUPS])})")
    return load_entry(SUITES[name])


def get_scorer_class(name: str):
    if name not in SCORERS:
        raise UsageError(f"unknown scorer {name!r} (known: {', '.join(SCORERS)})")
    return load_entry(SCORERS[name])


def get_scorer(name: str | None = None, **options):
    """A ready scorer: ``get_scorer("detoxify", checkpoint=PATH)``; options a scorer does not
    use are ignored (``checkpoint``, ``device``, ``batch_size``)."""
    return get_scorer_class(name or DEFAULT_SCORER)(**options)

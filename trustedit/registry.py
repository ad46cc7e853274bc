"""Lazy registries (lm-evaluation-harness style): name -> "module:attribute".

Nothing here imports torch; an entry is imported only when it is used.
"""

from __future__ import annotations

import importlib

from trustedit.errors import UsageError

# Methods that produce a Patch. Only implemented methods are listed.
METHODS: dict[str, str] = {
    "sanitation-lora": "trustedit.privacy.sanitization:METHOD",
    "ft-m": "trustedit.methods.ft_m:METHOD",
    "dama": "trustedit.bias.dama:METHOD",
    "inlp": "trustedit.bias.inlp:METHOD",
    "ext-sub": "trustedit.safety.ext_sub:METHOD",
    "negation": "trustedit.safety.ext_sub:NEGATION",
    "dinm": "trustedit.safety.dinm:METHOD",
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
}

# Groups of suites, usable wherever a suite name is.
SUITE_GROUPS: dict[str, tuple[str, ...]] = {
    "bias": ("dama-gender", "winobias", "stereoset", "crows-pairs"),
    "toxicity": ("rtp", "extsub-greedy"),
}

# Dataset specs: small declarative descriptions, loaders named lazily.
DATASETS: dict[str, dict] = {
    "sanitation": {
        "task": "erase",
        "loader": "trustedit.data.sanitation:load",
        "env_path": "sanitation/knowedit (or sanitation/original/triviaqa_N via --data)",
        "hub": "zjunlp/KnowEdit (Sanitation)",
        "description": "TriviaQA questions whose answers are forgotten (-> \"I don't know.\") and retain questions",
        "citation": "Ishibashi & Shimodaira 2023; KnowEdit (Zhang et al. 2024)",
    },
    "realtoxicityprompts": {
        "task": "detox",
        "loader": "trustedit.data.toxicity:load_rtp",
        "env_path": "realtoxicityprompts/rtp_quark_val_5k.jsonl",
        "hub": "allenai/real_toxicity_prompts (not used; local file only)",
        "description": "RTP prompts with Perspective toxicity of prompt and continuation (Quark's 5k validation split)",
        "citation": "Gehman et al. 2020 (RealToxicityPrompts); Lu et al. 2022 (Quark)",
    },
    "jigsaw": {
        "task": "detox",
        "loader": "trustedit.data.toxicity:load_jigsaw",
        "env_path": "jigsaw_toxic_nontoxic/{toxic,nontoxic}.txt",
        "hub": "none (s-nlp/detox test files)",
        "description": "Jigsaw comments labelled toxic / non-toxic, 5,000 each (trains the minilm-lr scorer)",
        "citation": "Jigsaw / Civil Comments; Dale et al. 2021 (s-nlp/detox)",
    },
    "paradetox": {
        "task": "detox",
        "loader": "trustedit.data.toxicity:load_paradetox",
        "env_path": "paradetox/paradetox.tsv",
        "hub": "s-nlp/paradetox (not used; local file only)",
        "description": "toxic sentences with 1-3 neutral rewrites (one toxic/neutral pair per rewrite)",
        "citation": "Logacheva et al. 2022 (ParaDetox)",
    },
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


def get_dataset(name: str) -> dict:
    if name not in DATASETS:
        raise UsageError(f"unknown dataset {name!r} (known: {', '.join(sorted(DATASETS))})")
    return DATASETS[name]


def get_scorer_class(name: str):
    if name not in SCORERS:
        raise UsageError(f"unknown scorer {name!r} (known: {', '.join(SCORERS)})")
    return load_entry(SCORERS[name])


def get_scorer(name: str | None = None, **options):
    """A ready scorer: ``get_scorer("detoxify", checkpoint=PATH)``; options a scorer does not
    use are ignored (``checkpoint``, ``device``, ``batch_size``)."""
    return get_scorer_class(name or DEFAULT_SCORER)(**options)

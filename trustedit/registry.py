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

# Which methods each task verb offers, and its default.
TASK_METHODS: dict[str, tuple[str, ...]] = {
    "erase": ("sanitation-lora", "ft-m"),
    "debias": ("dama", "inlp"),  # fit(lm, prompts, cfg, stages=None) -> Patch
    # ext-sub, negation: fit(lm, data=None, cfg, stages=None) -> Patch; dinm: fit(lm, instance, cfg) -> Patch
    "detox": ("ext-sub", "negation", "dinm"),
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


def get_task_method(task: str, name: str):
    """The method ``name`` if the task verb ``task`` offers it (see :data:`TASK_METHODS`)."""
    offered = TASK_METHODS[task]
    if name not in offered:
        raise UsageError(f"--method {name!r} is not a {task} method (choose from {', '.join(offered)})")
    return get_method(name)


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

"""trustedit: trustworthy-AI editing of causal language models.

Importing this package is cheap: torch and transformers are imported lazily by the modules
that need them, so ``trustedit --help`` stays fast.
"""

__version__ = "0.1.0"

# Hugging Face ``evaluate`` modules shipped in trustedit/evaluate_modules/<name>/<name>.py.
EVALUATE_MODULES = ("crows_pairs", "rtp_toxicity", "sanitation", "stereoset", "winobias")


def evaluate_module(name: str) -> str:
    """Local path of trustedit's Hugging Face ``evaluate`` module ``name`` (one of
    :data:`EVALUATE_MODULES`), for ``evaluate.load(trustedit.evaluate_module("crows_pairs"))``.

    Loading by path works offline; ``evaluate.load("crows_pairs")`` by name would fetch a script
    from the Hub at run time. This only builds the path (imports neither evaluate nor torch); an
    unknown name is a :class:`~trustedit.errors.UsageError`.
    """
    if name not in EVALUATE_MODULES:
        from trustedit.errors import UsageError

        raise UsageError(f"unknown evaluate module {name!r}; known: {', '.join(EVALUATE_MODULES)}")
    import os

    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "evaluate_modules", name)

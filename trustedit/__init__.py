"""trustedit: trustworthy-AI editing of causal language models.

Importing this package is cheap: torch and transformers are imported lazily by the modules
that need them, so ``trustedit --help`` stays fast.
"""

__version__ = "0.1.0"

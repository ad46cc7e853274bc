"""Context managers that reach into model internals and always undo themselves."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def only_trainable(model, names):
    """Within the block, only the parameters in ``names`` require grad; the previous
    ``requires_grad`` flags are restored on exit, even on error."""
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"no such parameters: {missing}")
    saved = {n: p.requires_grad for n, p in params.items()}
    try:
        for n, p in params.items():
            p.requires_grad_(n in names)
        yield [params[n] for n in names]
    finally:
        for n, p in params.items():
            p.requires_grad_(saved[n])


@contextmanager
def capture(model, module_names, what="output"):
    """Record each named module's output (or ``input``) on every forward pass inside the block.

    Yields a dict name -> list of tensors (detached). Hooks are removed on exit.
    """
    mods = dict(model.named_modules())
    store = {n: [] for n in module_names}
    handles = []
    try:
        for n in module_names:
            if n not in mods:
                raise KeyError(f"no such module: {n}")
            if what == "output":
                handles.append(mods[n].register_forward_hook(lambda m, i, o, n=n: store[n].append((o[0] if isinstance(o, tuple) else o).detach())))
            else:
                handles.append(mods[n].register_forward_pre_hook(lambda m, i, n=n: store[n].append(i[0].detach())))
        yield store
    finally:
        for h in handles:
            h.remove()

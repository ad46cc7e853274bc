"""What the runtime components of a :class:`~trustedit.patch.Patch` share (``patch.gate``: the scope
gate, GRACE's codebook, IKE's and SERAC's edit memory; see :data:`trustedit.patch.RUNTIME_KINDS`):
hook handles registered all or nothing and removed together, and one-line errors for a malformed
saved component."""

from __future__ import annotations

from contextlib import contextmanager

from trustedit.errors import TrusteditError


class RuntimeComponent:
    """Mixin: the subclass (a dataclass) has a ``_handles`` list field."""

    @property
    def installed(self) -> bool:
        return bool(self._handles)

    def _register(self, *makers) -> None:
        """Call each ``maker()`` (it registers a hook and returns its handle); if one fails, every
        hook registered so far is removed and the error raised."""
        try:
            for make in makers:
                self._handles.append(make())
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()
        self._forget()

    def _forget(self) -> None:
        """Drop what the hooks kept while installed (called after they are removed)."""


def keep_on_caches(output, caller_cache, attr: str, state):
    """Attach ``state`` (a component's per-row state) as ``attr`` to the KV cache a forward pass
    returned and to the one it was given, so that the next call on either finds it; returns the
    returned cache (None for a pass without one)."""
    cache = getattr(output, "cache", None)  # transformers >= 5 (past_key_values is deprecated there)
    if cache is None:
        cache = getattr(output, "past_key_values", None)
    for c in (cache, caller_cache):
        if c is not None:
            try:
                setattr(c, attr, state)
            except AttributeError:
                pass
    return cache


@contextmanager
def saved_fields(where: str):
    """Turn a missing field or tensor, or a value of the wrong type, met while reading a saved
    component into a one-line :class:`TrusteditError` naming ``where``."""
    try:
        yield
    except KeyError as e:
        raise TrusteditError(f"{where}: gate field or tensor {e} missing") from None
    except (TypeError, ValueError) as e:
        raise TrusteditError(f"{where}: malformed gate ({e})") from None

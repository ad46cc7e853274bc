"""Every metric lives here, once, and every method's report uses the same code.

A metric returns a :class:`~trustedit.metrics.scores.Score`: per-item values plus the protocol
that produced them, so that pre/post comparisons, deltas and bootstrap intervals are computed
by one function (:func:`~trustedit.metrics.scores.compare`).
"""

"""Shared glue of trustedit's ``evaluate`` modules: a Metric base class that names missing
inputs and unknown configurations, and input checks. Imports ``evaluate`` (the ``evaluate``
extra); the module scripts import it as ``from trustedit.evaluate_modules import base``."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import datasets
import evaluate
from evaluate.naming import camelcase_to_snakecase


class TrusteditMetric(evaluate.Metric):
    """An :class:`evaluate.Metric` whose inputs depend on its configuration (``config_name``,
    the second argument of ``evaluate.load``) and that says which inputs are missing (evaluate
    itself fails with ``TypeError: object of type 'NoneType' has no len()``)."""

    def _metric_info(self, description: str, citation: str, inputs_description: str,
                     features: Mapping[str, Mapping[str, object]], reference_urls: Sequence[str] = ()):
        """MetricInfo with ``features[self.config_name]`` (``"default"`` when none was asked for)."""
        if self.config_name not in features:
            # self.name is not set yet: evaluate derives it from the class name after _info().
            raise ValueError(f"{camelcase_to_snakecase(type(self).__name__)}: unknown configuration "
                             f"{self.config_name!r}; known: {', '.join(features)}")
        return evaluate.MetricInfo(description=description, citation=citation, inputs_description=inputs_description,
                                   features=datasets.Features(features[self.config_name]),
                                   reference_urls=list(reference_urls))

    # compute(**inputs) hands its inputs to add_batch, so the check covers compute too. evaluate
    # appends the module's inputs_description to these methods' docstrings: they need one.
    def add_batch(self, **kwargs):
        """Add a batch of inputs (lists, one entry per example) to the module's stack."""
        self._check_given(kwargs)
        return super().add_batch(**kwargs)

    def add(self, **kwargs):
        """Add one example's inputs (one value per input) to the module's stack."""
        self._check_given(kwargs)
        return super().add(**kwargs)

    def _check_given(self, given: Mapping) -> None:
        names = self._feature_names()
        missing = [k for k in names if given.get(k) is None]
        if missing:
            raise ValueError(f"{self.name} ({self.config_name}): missing input(s) {missing}; its inputs are {names}")


def check_rows(name: str, n: int) -> None:
    if n == 0:
        raise ValueError(f"{name}: no inputs")


def check_choices(name: str, values: Sequence[str], allowed: Sequence[str]) -> None:
    """Every value is one of ``allowed`` (the first offender is named with its index)."""
    for i, v in enumerate(values):
        if v not in allowed:
            raise ValueError(f"{name}[{i}] must be one of {tuple(allowed)}, got {v!r}")


def check_numbers(name: str, values: Sequence[float]) -> None:
    """No NaN (a NaN compares false with everything and would silently count as a loss)."""
    for i, v in enumerate(values):
        if math.isnan(v):
            raise ValueError(f"{name}[{i}] is NaN")


def value(scores: Mapping, key: str) -> float | None:
    """``scores[key].value`` as a plain float, None where the suite's function made no such Score
    (an empty group)."""
    return float(scores[key].value) if key in scores else None

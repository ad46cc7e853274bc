"""trustedit's metrics as Hugging Face ``evaluate`` modules, loadable offline by local path.

Each folder ``<name>/`` holds one script ``<name>.py`` defining an :class:`evaluate.Metric`;
:func:`trustedit.evaluate_module` gives the folder's path::

    import evaluate, trustedit
    crows = evaluate.load(trustedit.evaluate_module("crows_pairs"))

The scripts build trustedit's own item objects from their inputs and call the suites' metric
functions (:mod:`trustedit.metrics.bias`, :mod:`~trustedit.metrics.toxicity`,
:mod:`~trustedit.metrics.qa`), so a module's numbers are the suite's on the same inputs. Their
shared glue is :mod:`trustedit.evaluate_modules.base` (which imports ``evaluate``: the
``evaluate`` extra); importing this package imports nothing.
"""

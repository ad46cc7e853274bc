"""Local-data loader and ``process_docs`` for the lm-evaluation-harness task YAMLs in this folder.

The YAMLs copy the prompt logic of lm-eval's own tasks (``doc_to_text``, ``doc_to_target``,
``doc_to_choice``, ``target_delimiter``, metrics; lm-eval 0.4.13) and read the copies under
``$TRUSTEDIT_DATA_DIR`` instead of the Hugging Face Hub, through :func:`load_local`
(lm-eval's ``custom_dataset``). :func:`load_local` turns each local layout into the Hub schema
that lm-eval's template expects, so the templates stay verbatim:

* PIQA: ``valid.jsonl`` + ``valid-labels.lst`` (labels by line) -> ``goal, sol1, sol2, label``;
* BoolQ: ``answer`` (bool) -> ``label`` (0 no / 1 yes; super_glue's ``boolq``);
* MMLU: the original headerless CSVs -> ``question, subject, choices[4], answer`` (index 0-3),
  cais/mmlu's schema; options are the CSV cells as written (cais/mmlu was built from them);
* CrowS-Pairs: the original nyu-mll CSV (1,508 pairs). lm-eval's own task reads
  ``jannalu/crows_pairs_multilingual`` (``english``), the revised English set of Névéol et al.
  2022, whose sentences differ for some pairs; here both implementations read the original file;
* ARC-Easy and CommonsenseQA are stored in the Hub schema already.

HellaSwag is the one template that cannot be reproduced exactly: the local file (llama.cpp's
preprocessed copy) keeps only ``activity_label + ": " + ctx`` joined, so lm-eval's
``ctx_a + " " + ctx_b.capitalize()`` cannot be rebuilt; :func:`process_docs_hellaswag` applies
lm-eval's own ``preprocess`` to the joined string (the last fragment stays lower-case, e.g.
"... grabs the pole. the lady" where lm-eval would have "... grabs the pole. The lady").

Files are located by :func:`trustedit.data.paths.require` (``$TRUSTEDIT_DATA_DIR``), the rule
trustedit's own loaders follow; nothing here touches the network.
"""

from __future__ import annotations

import csv
import json


def _rows_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _piqa(path):
    rows = _rows_jsonl(path)
    labels = [ln.strip() for ln in path.with_name("valid-labels.lst").read_text(encoding="utf-8").splitlines()
              if ln.strip()]
    if len(labels) != len(rows):
        raise ValueError(f"{path}: {len(labels)} labels for {len(rows)} records")
    return [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(lab)} for r, lab in zip(rows, labels)]


def _boolq(path):
    return [{"question": r["question"], "passage": r["passage"], "idx": r.get("idx", i), "label": int(bool(r["answer"]))}
            for i, r in enumerate(_rows_jsonl(path))]


def _mmlu(path, subject):
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    return [{"question": q, "subject": subject, "choices": [a, b, c, d], "answer": "ABCD".index(ans.strip())}
            for q, a, b, c, d, ans in rows]


def _crows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return [{"sent_more": r["sent_more"], "sent_less": r["sent_less"], "stereo_antistereo": r["stereo_antistereo"],
                 "bias_type": r["bias_type"]} for r in csv.DictReader(f)]


def load_local(trustedit_file: str, trustedit_split: str, trustedit_layout: str = "jsonl", **_):
    """lm-eval ``custom_dataset``: ``{split: Dataset}`` from the local file ``trustedit_file``
    (relative to the data root) read as ``trustedit_layout`` (``jsonl``, ``piqa``, ``boolq``,
    ``mmlu:<subject>``, ``crows``). Other keyword arguments (lm-eval's task metadata) are ignored."""
    import datasets

    from trustedit.data.paths import require

    path = require(trustedit_file)
    kind, _, arg = trustedit_layout.partition(":")
    readers = {"jsonl": _rows_jsonl, "piqa": _piqa, "boolq": _boolq, "crows": _crows,
               "mmlu": lambda p: _mmlu(p, arg)}
    if kind not in readers:
        raise ValueError(f"unknown trustedit_layout {trustedit_layout!r}")
    return datasets.DatasetDict({trustedit_split: datasets.Dataset.from_list(readers[kind](path))})


def process_docs_hellaswag(dataset):
    """lm-eval's ``hellaswag.utils.process_docs`` for the joined local ``ctx`` (module docstring):
    ``query = preprocess(ctx)`` instead of ``preprocess(activity_label + ": " + ctx_a + " " +
    ctx_b.capitalize())``; choices and gold as lm-eval builds them."""
    from lm_eval.tasks.hellaswag.utils import preprocess

    def _process_doc(doc):
        return {"query": preprocess(doc["ctx"]), "choices": [preprocess(e) for e in doc["endings"]],
                "gold": int(doc["label"])}

    return dataset.map(_process_doc)

"""Knowledge-editing datasets: the KnowEdit splits (Zhang et al. 2024, arXiv:2401.01286), CounterFact
(Meng et al. 2022) and ZsRE with its portability questions, read into one record type.

Files come from ``$TRUSTEDIT_DATA_DIR`` (or ``trustedit data fetch knowedit counterfact zsre``; see
each folder's PROVENANCE.md):

==============  ===============================================  ================================
name            file                                             what it edits
==============  ===============================================  ================================
``zsre``        ``knowedit/ZsRE/ZsRE-test-all.json``             question -> a new answer (1,304)
``counterfact`` ``knowedit/wiki_counterfact/test_cf.json``       Wikidata triple -> counterfactual
``recent``      ``knowedit/wiki_recent/recent_train.json``       Wikidata triple -> a recent fact
``wikibio``     ``knowedit/WikiBio/wikibio-test-all.json``       a biography passage -> a sentence
``cf``          ``counterfact/counterfact_portability_gpt4.json`` CounterFact (ROME schema) with
                                                                  paraphrases, neighbours, a one-hop
                                                                  portability question
``zsre-mend``   ``zsre/zsre_mend_eval_portability_gpt4.json``    MEND's ZsRE split with a one-hop
                                                                  portability question
``cf-train``    ``counterfact/counterfact-train.json``           CounterFact's train split in
                                                                  MEND's schema (10,000): what the
                                                                  learned editors train on (MEND,
                                                                  SERAC's scope, IKE's demonstrations)
==============  ===============================================  ================================

Every record becomes an :class:`EditCase`: the edit (prompt, subject, new target, the true target
where known), rephrasings of the prompt, and prompts for portability and locality, each with its
answers (aliases: the first is the canonical one, scored teacher-forced; any alias counts for
generation). ConvSent (sentiment editing of a dialogue model, scored by a sentiment classifier) is
not a fact edit and is not read here.

A malformed record raises :class:`~trustedit.errors.DataError` naming the file, the record (its index
in the JSON list) and the field. A portability or locality prompt whose answers are all empty
strings (the published WikiData_counterfact test file holds a few) is left out and counted
(``describe()["skipped_probes"]``), not scored against an empty answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trustedit.data.paths import field as get_field
from trustedit.data.paths import read_json, require
from trustedit.errors import DataError

FILES = {
    "zsre": "knowedit/ZsRE/ZsRE-test-all.json",
    "counterfact": "knowedit/wiki_counterfact/test_cf.json",
    "recent": "knowedit/wiki_recent/recent_train.json",
    "wikibio": "knowedit/WikiBio/wikibio-test-all.json",
    "cf": "counterfact/counterfact_portability_gpt4.json",
    "zsre-mend": "zsre/zsre_mend_eval_portability_gpt4.json",
    "cf-train": "counterfact/counterfact-train.json",
}
TRAIN_SPLITS = ("cf-train",)  # disjoint from every test split above (CounterFact's case ids 0..21918 split three ways)
DATASETS = tuple(FILES)


@dataclass
class EditCase:
    id: str  # "<file name>#<record index>"
    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    rephrase: list = field(default_factory=list)  # prompts that ask the same thing
    portability: dict = field(default_factory=dict)  # kind -> [(prompt, [answers])]
    locality: dict = field(default_factory=dict)  # kind -> [(prompt, [answers])]
    neighborhood: list = field(default_factory=list)  # CounterFact: other subjects, same relation (answer: target_true)


@dataclass
class EditData:
    name: str
    cases: list
    path: str
    fingerprint: str
    skipped_probes: list = field(default_factory=list)  # portability/locality prompts without an answer

    def describe(self) -> dict:
        return {"name": self.name, "file": self.path, "n": len(self.cases), "fingerprint": self.fingerprint,
                "skipped_probes": len(self.skipped_probes), "skipped_probe_examples": self.skipped_probes[:5]}


class _Empty(Exception):
    """A probe whose answers are all empty strings (the published files hold a few)."""


def _answers(path, i, where, value) -> list[str]:
    """Aliases from the files' shapes: "x", ["x", ...] or [["x", "alias", ...]]."""
    if isinstance(value, str):
        out = [value]
    elif isinstance(value, list):
        out = []
        for v in value:
            if isinstance(v, str):
                out.append(v)
            elif isinstance(v, list) and all(isinstance(x, str) for x in v):
                out += v
            else:
                raise DataError(path, i, where, f"expected a string or a list of strings, got {type(v).__name__}")
    else:
        raise DataError(path, i, where, f"expected a string or a list, got {type(value).__name__}")
    out = [a for a in out if a.strip()]
    if not out:
        raise _Empty(where)
    return out


def _probes(path, i, rec, key) -> dict:
    """``{kind: [(prompt, answers)]}`` from KnowEdit's ``portability`` / ``locality`` objects."""
    block = rec.get(key) or {}
    if not isinstance(block, dict):
        raise DataError(path, i, key, f"expected an object, got {type(block).__name__}")
    out = {}
    for kind, entries in block.items():
        if isinstance(entries, dict):
            entries = [entries]
        if not isinstance(entries, list):
            raise DataError(path, i, f"{key}.{kind}", f"expected a list, got {type(entries).__name__}")
        rows = []
        for j, e in enumerate(entries):
            where = f"{key}.{kind}[{j}]"
            if not isinstance(e, dict) or not isinstance(e.get("prompt"), str) or not e["prompt"].strip():
                raise DataError(path, i, f"{where}.prompt", "missing or empty")
            if "ground_truth" not in e:
                raise DataError(path, i, f"{where}.ground_truth", "missing")
            try:
                rows.append((e["prompt"], _answers(path, i, f"{where}.ground_truth", e["ground_truth"])))
            except _Empty:
                SKIPPED.append(f"record {i}, {where}: empty answer")
        if rows:
            out[kind] = rows
    return out


def _str(path, i, rec, name, optional=False):
    if optional and rec.get(name) is None:
        return None
    v = get_field(path, i, rec, name, str)
    if not v.strip():
        raise DataError(path, i, name, "empty")
    return v


def _knowedit(path, i, rec) -> EditCase:
    gt = rec.get("ground_truth")
    true = _required(path, i, "ground_truth", gt)[0] if gt not in (None, [], "") else None
    reph = rec.get("rephrase_prompt")
    if reph is not None and not isinstance(reph, str):
        raise DataError(path, i, "rephrase_prompt", f"expected a string, got {type(reph).__name__}")
    return EditCase(f"{path.name}#{i}", _str(path, i, rec, "prompt"), _str(path, i, rec, "subject"),
                    _str(path, i, rec, "target_new"), true, [reph] if reph else [], _probes(path, i, rec, "portability"),
                    _probes(path, i, rec, "locality"))


def _wikibio(path, i, rec) -> EditCase:
    return EditCase(f"{path.name}#{i}", _str(path, i, rec, "text"), _str(path, i, rec, "concept"),
                    _str(path, i, rec, "labels"), None, [], {}, _probes(path, i, rec, "locality"))


def _cf(path, i, rec) -> EditCase:
    rw = get_field(path, i, rec, "requested_rewrite", dict)
    template = _str(path, i, rw, "prompt")
    if "{}" not in template:
        raise DataError(path, i, "requested_rewrite.prompt", "no '{}' placeholder for the subject")
    subject = _str(path, i, rw, "subject")
    new = get_field(path, i, rw, "target_new", dict)
    true = get_field(path, i, rw, "target_true", dict)
    port = {}
    p = rec.get("portability")
    if isinstance(p, dict) and p.get("New Question") and p.get("New Answer"):
        port["One_Hop"] = [(p["New Question"], _required(path, i, "portability.New Answer", p["New Answer"]))]
    para = rec.get("paraphrase_prompts") or []
    nb = rec.get("neighborhood_prompts") or []
    for name, v in (("paraphrase_prompts", para), ("neighborhood_prompts", nb)):
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise DataError(path, i, name, "expected a list of strings")
    return EditCase(f"{path.name}#{i}", template.format(subject), subject,
                    _str(path, i, new, "str"), _str(path, i, true, "str"), list(para), port, {}, list(nb))


def _zsre_mend(path, i, rec) -> EditCase:
    port = {}
    p = rec.get("portability")
    if isinstance(p, dict) and p.get("New Question") and p.get("New Answer"):
        port["One_Hop"] = [(p["New Question"], _required(path, i, "portability.New Answer", p["New Answer"]))]
    loc = {}
    if rec.get("loc") and rec.get("loc_ans"):
        q = rec["loc"][len("nq question: "):] if rec["loc"].startswith("nq question: ") else rec["loc"]
        loc["NQ"] = [(q, _required(path, i, "loc_ans", rec["loc_ans"]))]
    answers = rec.get("answers")
    true = _required(path, i, "answers", answers)[0] if answers else None
    reph = rec.get("rephrase")
    return EditCase(f"{path.name}#{i}", _str(path, i, rec, "src"), _str(path, i, rec, "subject"),
                    _str(path, i, rec, "alt"), true, [reph] if isinstance(reph, str) and reph else [], port, loc)


def _mend_cf(path, i, rec) -> EditCase:
    """CounterFact in MEND's schema: prompt, subject, target_new, ground_truth, rephrase_prompt,
    locality_prompt / locality_ground_truth (another subject, same relation: a neighbourhood prompt)."""
    reph = _str(path, i, rec, "rephrase_prompt", optional=True)
    loc = {}
    if rec.get("locality_prompt") is not None:
        loc["Neighborhood"] = [(_str(path, i, rec, "locality_prompt"),
                                _required(path, i, "locality_ground_truth", rec.get("locality_ground_truth")))]
    return EditCase(f"{path.name}#{i}", _str(path, i, rec, "prompt"), _str(path, i, rec, "subject"),
                    _str(path, i, rec, "target_new"), _str(path, i, rec, "ground_truth", optional=True),
                    [reph] if reph else [], {}, loc)


SKIPPED: list = []  # probes left out while parsing (the current load's; see load())


def _required(path, i, where, value) -> list[str]:
    """The answers of an edit's own field: an empty one is an error."""
    try:
        return _answers(path, i, where, value)
    except _Empty:
        raise DataError(path, i, where, "empty answer") from None


PARSERS = {"zsre": _knowedit, "counterfact": _knowedit, "recent": _knowedit, "wikibio": _wikibio, "cf": _cf,
           "zsre-mend": _zsre_mend, "cf-train": _mend_cf}


def load(name: str, limit: int | None = None, path: str | Path | None = None) -> EditData:
    """The first ``limit`` cases (None: all) of dataset ``name`` (or of the file ``path`` in that
    dataset's layout)."""
    from trustedit.data.fetch import sha256_file
    from trustedit.errors import UsageError

    if name not in FILES:
        raise UsageError(f"unknown editing dataset {name!r} (known: {', '.join(FILES)})")
    p = Path(path) if path else require(FILES[name])
    data = read_json(p)
    if not isinstance(data, list):
        raise DataError(p, problem=f"expected a JSON list of records, got {type(data).__name__}")
    rows = data if limit is None else data[:limit]
    SKIPPED.clear()
    cases = [PARSERS[name](p, i, rec if isinstance(rec, dict) else _not_object(p, i, rec)) for i, rec in enumerate(rows)]
    fp = f"sha256:{sha256_file(p)}#{len(cases)}"
    return EditData(name, cases, str(p), fp, list(SKIPPED))


def _not_object(path, i, rec):
    raise DataError(path, i, None, f"expected an object, got {type(rec).__name__}")

"""Named, deterministic transforms that rebuild a derived data file from its public upstream file.

A derived file (see :mod:`trustedit.data.sources`) is ``steps`` applied in turn to the bytes of
the upstream file; each step is ``(name, kwargs)`` with ``name`` a key of :data:`TRANSFORMS`. The
output must hash to the SHA-256 recorded for the local file: a transform is a faithful, byte-exact
re-implementation of what the folder's PROVENANCE.md describes, not an approximation.

JSON output is written the way the files were made: ``json.dumps(..., ensure_ascii=False)`` with
the default separators (``", "``, ``": "``), one record per line plus ``"\\n"`` for JSON Lines.
A malformed upstream file raises :class:`TransformError` (one line naming the record and field).
Standard library only, except ``arrow_stream_to_jsonl``, which needs ``pyarrow`` when it runs.
"""

from __future__ import annotations

import bz2
import json
from typing import Callable, Iterable, Sequence

from trustedit.errors import TrusteditError


class TransformError(TrusteditError):
    """The upstream bytes do not have the shape a transform expects (the message says where)."""


def _jsonl(rows: Iterable) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TransformError(f"not UTF-8 text at byte {e.start}") from None


def _json(data: bytes):
    try:
        return json.loads(_text(data))
    except json.JSONDecodeError as e:
        raise TransformError(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def _json_lines(data: bytes) -> list:
    rows = []
    for i, line in enumerate(_text(data).split("\n")):  # not splitlines(): U+2028 may sit inside a string
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise TransformError(f"line {i + 1}: invalid JSON: {e.msg}") from None
    return rows


def _list(value, what: str = "a JSON list") -> list:
    if not isinstance(value, list):
        raise TransformError(f"expected {what}, got {type(value).__name__}")
    return value


def _head(rows: list, head: int | None) -> list:
    return rows if head is None else rows[:head]


def _get(record, index: int, *keys: str):
    """``record[k1][k2]...``; a missing key raises a TransformError naming record and field."""
    value = record
    for k in keys:
        if not isinstance(value, dict) or k not in value:
            raise TransformError(f"record {index}, field {'.'.join(keys)!r}: missing")
        value = value[k]
    return value


# ---------------------------------------------------------------------------------------------
# the transforms
# ---------------------------------------------------------------------------------------------


def head_lines(data: bytes, n: int) -> bytes:
    """The first ``n`` lines, as ``head -n N`` (a line ends at ``\n`` only)."""
    pieces = data.split(b"\n", n)
    if len(pieces) > n:  # n newlines found: cut after the n-th
        return data[:len(data) - len(pieces[n])]
    got = len(pieces) - (pieces[-1] == b"")
    if got < n:
        raise TransformError(f"expected at least {n} lines, got {got}")
    return data  # exactly n lines, the last without a newline


def bz2_decompress(data: bytes) -> bytes:
    try:
        return bz2.decompress(data)
    except (OSError, ValueError, EOFError) as e:
        raise TransformError(f"not a bzip2 stream ({e})") from None


def json_list_to_jsonl(data: bytes, head: int | None = None) -> bytes:
    """A JSON list -> JSON Lines, record order kept, the first ``head`` records."""
    return _jsonl(_head(_list(_json(data)), head))


def jsonl_to_json_list(data: bytes, drop: Sequence[str] = ()) -> bytes:
    """JSON Lines -> one JSON list (no indentation, no final newline), without the fields ``drop``."""
    rows = _json_lines(data)
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise TransformError(f"record {i}: expected an object, got {type(r).__name__}")
        for k in drop:
            r.pop(k, None)
    return json.dumps(rows, ensure_ascii=False).encode("utf-8")


def sanitation_to_triviaqa(data: bytes, head: int | None = None) -> bytes:
    """knowledge-sanitization ``test_keep.json`` (``[{instruction, input, output, output_gold}]``)
    -> ``{"idx", "question" (= input), "answer" (= output_gold)}`` lines, the first ``head``."""
    rows = _head(_list(_json(data)), head)
    return _jsonl({"idx": i, "question": _get(r, i, "input"), "answer": _get(r, i, "output_gold")}
                  for i, r in enumerate(rows))


BOOLQ_PREFIX, BOOLQ_SUFFIX, BOOLQ_SEP = "passage: ", "\nquestion: {}", " -- "


def boolq_from_edit_requests(data: bytes, head: int | None = None) -> bytes:
    """kb-model-editing's BoolQ edit requests (``prompt = "passage: <title> -- <passage>\\nquestion:
    {}"``, ``subject`` = question, ``target_new.str`` = "True"/"False") -> ``{"idx", "question",
    "title", "passage", "answer" (bool)}`` lines: the prompt is split on its first ``" -- "``."""
    out = []
    for i, r in enumerate(_head(_json_lines(data), head)):
        prompt, answer = _get(r, i, "prompt"), _get(r, i, "target_new", "str")
        if not (isinstance(prompt, str) and prompt.startswith(BOOLQ_PREFIX) and prompt.endswith(BOOLQ_SUFFIX)
                and BOOLQ_SEP in prompt):
            raise TransformError(f"record {i}, field 'prompt': not 'passage: TITLE -- PASSAGE\\nquestion: {{}}'")
        if answer not in ("True", "False"):
            raise TransformError(f"record {i}, field 'target_new.str': expected 'True' or 'False', got {answer!r}")
        title, passage = prompt[len(BOOLQ_PREFIX):-len(BOOLQ_SUFFIX)].split(BOOLQ_SEP, 1)
        out.append({"idx": i, "question": _get(r, i, "subject"), "title": title, "passage": passage,
                    "answer": answer == "True"})
    return _jsonl(out)


def hellaswag_text_to_jsonl(data: bytes, head: int | None = None) -> bytes:
    """klosax/hellaswag_text_data's format (6 lines per task: ``activity_label: ctx``, the label
    0-3, four endings) -> ``{"ind" (0-based task index), "ctx", "label", "endings"}`` lines."""
    lines = _text(data).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise TransformError(f"{len(lines)} lines: not a multiple of 6 (ctx, label, 4 endings per task)")
    n = len(lines) // 6 if head is None else min(head, len(lines) // 6)
    out = []
    for i in range(n):
        ctx, label, *endings = lines[6 * i: 6 * i + 6]
        if label not in ("0", "1", "2", "3"):
            raise TransformError(f"task {i} (line {6 * i + 2}): label {label!r} is not 0-3")
        out.append({"ind": i, "ctx": ctx, "label": int(label), "endings": endings})
    return _jsonl(out)


def arrow_stream_to_jsonl(data: bytes, fields: Sequence[str]) -> bytes:
    """A Hugging Face ``datasets`` Arrow stream file -> JSON Lines of ``fields`` (in that order)."""
    try:
        import pyarrow as pa
    except ImportError:
        raise TransformError("needs pyarrow to read the upstream Arrow file (pip install pyarrow)") from None
    try:
        table = pa.ipc.open_stream(pa.BufferReader(data)).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise TransformError(f"not an Arrow stream ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    absent = [f for f in fields if f not in table.column_names]
    if absent:
        raise TransformError(f"Arrow table has no column {absent[0]!r} (columns: {', '.join(table.column_names)})")
    return _jsonl({f: r[f] for f in fields} for r in table.select(list(fields)).to_pylist())


TRANSFORMS: dict[str, Callable[..., bytes]] = {f.__name__: f for f in (
    head_lines, bz2_decompress, json_list_to_jsonl, jsonl_to_json_list, sanitation_to_triviaqa,
    boolq_from_edit_requests, hellaswag_text_to_jsonl, arrow_stream_to_jsonl)}


def describe(steps: Sequence[tuple[str, dict]]) -> str:
    """``"bz2_decompress | hellaswag_text_to_jsonl(head=2000)"``."""
    return " | ".join(name + (f"({', '.join(f'{k}={v!r}' for k, v in kw.items())})" if kw else "")
                      for name, kw in steps)


def apply(steps: Sequence[tuple[str, dict]], data: bytes) -> bytes:
    """``data`` through each step in turn; a failure names the step."""
    for name, kw in steps:
        if name not in TRANSFORMS:
            raise TransformError(f"unknown transform {name!r} (known: {', '.join(TRANSFORMS)})")
        try:
            data = TRANSFORMS[name](data, **kw)
        except TransformError as e:
            raise TransformError(f"{describe([(name, kw)])}: {e}") from None
    return data

"""trustedit.benchmarks"""


def emit(out: dict, path: str | None = None) -> None:
    """Print a benchmark's figures as one JSON line, and write them (indented) to ``path`` if given."""
    import json

    print(json.dumps(out))
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=1)

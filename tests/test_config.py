"""Method configs: defaults, --config JSON, --set key=value, coercion and errors."""

from __future__ import annotations

import json

import pytest

from trustedit.errors import UsageError
from trustedit.methods.base import MethodConfig, layer_index
from trustedit.methods.ft_m import FTMConfig
from trustedit.privacy.sanitization import SanitizationConfig


def test_defaults():
    c = SanitizationConfig.resolve()
    assert (c.rank, c.alpha, c.targets, c.seed) == (8, 16.0, ["q", "v", "gate"], 0)
    assert c == SanitizationConfig()
    # list defaults are not shared between instances
    c.targets.append("o")
    assert SanitizationConfig().targets == ["q", "v", "gate"]


def test_set_strings_are_coerced():
    c = SanitizationConfig.resolve(sets=["rank=4", "alpha=8", "lr=1e-3", "targets=q, v ,down,", " epochs = 3 ",
                                         "first_layer=0.5"])
    assert c.rank == 4 and isinstance(c.rank, int)
    assert c.alpha == 8.0 and isinstance(c.alpha, float)
    assert c.lr == pytest.approx(1e-3)
    assert c.targets == ["q", "v", "down"]
    assert c.epochs == 3
    assert c.first_layer == 0.5
    f = FTMConfig.resolve(sets=["layer=1", "retain_weight=0", "max_steps=2"])
    assert f.layer == 1.0 and f.retain_weight == 0 and f.max_steps == 2


def test_value_may_contain_equals_sign():
    @__import__("dataclasses").dataclass
    class C(MethodConfig):
        name: str = "x"

    assert C.resolve(sets=["name=a=b"]).name == "a=b"


@pytest.mark.parametrize("word, value", [("true", True), ("Yes", True), ("1", True), ("on", True),
                                         ("false", False), ("NO", False), ("0", False), ("off", False)])
def test_bool_coercion(word, value):
    from dataclasses import dataclass

    from trustedit.methods.base import opt

    @dataclass
    class C(MethodConfig):
        flag: bool = opt(False, "a flag")
        maybe: object = opt(None, "optional")

    assert C.resolve(sets=[f"flag={word}"]).flag is value
    assert C.resolve(sets=["maybe=none"]).maybe is None
    assert C.resolve(sets=["maybe=[1, 2]"]).maybe == [1, 2]
    assert C.resolve(sets=["maybe=text"]).maybe == "text"
    with pytest.raises(UsageError, match="expected bool"):
        C.resolve(sets=["flag=maybe"])


def test_json_file_then_sets_then_overrides(tmp_path):
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps({"rank": 2, "alpha": 4, "targets": ["o"], "lr": 0.01}))
    c = SanitizationConfig.resolve(str(p))
    assert (c.rank, c.alpha, c.targets, c.lr) == (2, 4, ["o"], 0.01)
    c = SanitizationConfig.resolve(str(p), ["rank=3"], seed=5)
    assert (c.rank, c.seed, c.alpha) == (3, 5, 4)
    c = SanitizationConfig.resolve(str(p), ["seed=1"], seed=None)  # None overrides are ignored
    assert c.seed == 1
    # a top-level "method" section is accepted too
    p.write_text(json.dumps({"method": {"rank": 6}, "other": "ignored"}))
    assert SanitizationConfig.resolve(str(p)).rank == 6
    assert c.to_dict()["rank"] == 2 and set(c.to_dict()) == {f for f, _, _ in SanitizationConfig.help_table()}


@pytest.mark.parametrize("sets, match", [
    (["nonsense=1"], "unknown SanitizationConfig option 'nonsense'"),
    (["rank"], "expected key=value"),
    (["rank=four"], "--set rank=four: expected int"),
    (["lr=fast"], "expected float"),
])
def test_set_errors(sets, match):
    with pytest.raises(UsageError, match=match):
        SanitizationConfig.resolve(sets=sets)


def test_file_errors(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        SanitizationConfig.resolve(str(tmp_path / "absent.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"rank": 2,\n}')
    with pytest.raises(UsageError, match="invalid JSON at line 2"):
        SanitizationConfig.resolve(str(bad))
    bad.write_text("[1, 2]")
    with pytest.raises(UsageError, match="expected a JSON object"):
        SanitizationConfig.resolve(str(bad))
    bad.write_text(json.dumps({"rnak": 2}))
    with pytest.raises(UsageError, match="unknown SanitizationConfig option 'rnak'"):
        SanitizationConfig.resolve(str(bad))


def test_help_table_lists_every_field_with_help():
    rows = FTMConfig.help_table()
    names = [r[0] for r in rows]
    assert names[:2] == ["seed", "batch_size"] and "layer" in names and "lr" in names
    assert all(help for _, _, help in rows)


@pytest.mark.parametrize("spec, n, expected", [(0, 4, 0), (-1, 4, 3), (3, 4, 3), (0.5, 4, 2), (0.66, 30, 19),
                                               ("2", 4, 2), ("0.75", 4, 3), (0.0, 4, 0)])
def test_layer_index(spec, n, expected):
    assert layer_index(spec, n) == expected


@pytest.mark.parametrize("spec", [4, -5, 1.0, 1.5, -0.1, "7"])
def test_layer_index_out_of_range(spec):
    with pytest.raises(UsageError):
        layer_index(spec, 4)


def test_json_values_keep_their_types(tmp_path):
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps({"rank": "4", "targets": "q,v", "dropout": 0}))
    c = SanitizationConfig.resolve(str(p))
    assert c.rank == 4 and c.targets == ["q", "v"] and c.dropout == 0


def test_method_key_that_is_not_a_section(tmp_path):
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps({"method": "sanitation-lora", "rank": 4}))
    try:
        c = SanitizationConfig.resolve(str(p))
    except UsageError:
        return  # a clear user error is fine too
    assert c.rank == 4

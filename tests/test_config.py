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


# ---- constraints: a config validates itself when built ----------------------------------------


def _configs():
    from trustedit.bias.dama import DAMAConfig
    from trustedit.bias.inlp import INLPConfig
    from trustedit.safety.dinm import DINMConfig
    from trustedit.safety.ext_sub import ExtSubConfig, NegationConfig

    return {"san": SanitizationConfig, "ftm": FTMConfig, "dama": DAMAConfig, "inlp": INLPConfig,
            "extsub": ExtSubConfig, "neg": NegationConfig, "dinm": DINMConfig}


BAD_SETS = [
    ("san", "lr=0"), ("san", "lr=nan"), ("san", "lr=inf"), ("san", "lr=-1e-3"), ("san", "rank=0"), ("san", "alpha=0"),
    ("san", "dropout=1"), ("san", "dropout=-0.1"), ("san", "epochs=0"), ("san", "epochs=-1"), ("san", "max_steps=-1"),
    ("san", "warmup_steps=-1"), ("san", "batch_size=0"), ("san", "weight_decay=-1"), ("san", "retain_limit=-1"),
    ("san", "retain_target=gld"), ("san", "targets=q,qkv"), ("san", "targets="), ("san", "first_layer=1.5"),
    ("san", "first_layer=-0.5"), ("san", "first_layer=nan"), ("san", "seed=-1"),
    ("ftm", "epochs=-1"), ("ftm", "retain_weight=-1"), ("ftm", "layer=1.25"),
    ("ftm", "retain_target=none"), ("ftm", "lr=nan"),
    ("dama", "components=0"), ("dama", "components=-1"), ("dama", "components=nan"), ("dama", "components=inf"),
    ("dama", "components=2.5"), ("dama", "v_lr=0"), ("dama", "v_steps=0"), ("dama", "kl_factor=-1"),
    ("dama", "clamp_norm_factor=0"), ("dama", "contexts_per_length=-1"), ("dama", "max_prompts=-1"),
    ("dama", "pls_tol=0"), ("dama", "values=stacked"), ("dama", "context_lengths=5,0"), ("dama", "targets=he"),
    ("dama", "first_layer=-0.25"), ("dama", "last_layer=2.5"),
    ("inlp", "iterations=0"), ("inlp", "reg_c=0"), ("inlp", "dev_fraction=1"), ("inlp", "dev_fraction=-0.1"),
    ("inlp", "min_accuracy=1.01"), ("inlp", "min_accuracy=-0.1"), ("inlp", "classifier=tree"), ("inlp", "label=gold"),
    ("inlp", "pair=he"), ("inlp", "layer=1.5"),
    ("extsub", "lam=nan"), ("extsub", "lam=-1"), ("extsub", "eps=0"), ("extsub", "factor_rank=-1"),
    ("extsub", "prompt_fraction=0"), ("extsub", "prompt_fraction=1"), ("extsub", "min_words=0"),
    ("extsub", "train_limit=-1"), ("extsub", "combine=bogus"), ("extsub", "data_source=reddit"),
    ("extsub", "targets=qkv"), ("extsub", "rank=0"), ("neg", "combine=sum"),
    ("dinm", "steps=-1"), ("dinm", "kl_weight=-1"), ("dinm", "lr=0"), ("dinm", "abs_lr=-1"), ("dinm", "max_length=0"),
    ("dinm", "kl_direction=forward"), ("dinm", "layer=1.5"), ("dinm", "layer=abc"), ("dinm", "stop_loss=-1"),
    ("dinm", "weight_decay=nan"),
]


@pytest.mark.parametrize("which, item", BAD_SETS)
def test_bad_values_fail_when_the_config_is_built(which, item):
    cls = _configs()[which]
    key, value = item.split("=", 1)
    with pytest.raises(UsageError) as e:
        cls.resolve(sets=[item])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"--set {item}: ") and f"option {key!r}" in msg, msg
    assert ("must be" in msg and "got" in msg) or ("unknown LoRA target role" in msg and "(known: q, k, v" in msg), msg


@pytest.mark.parametrize("which, kwargs", [
    ("ftm", {"epochs": -1}), ("ftm", {"lr": float("nan")}), ("san", {"dropout": 1.0}), ("san", {"rank": 2.0}),
    ("san", {"lr": "fast"}), ("san", {"epochs": True}), ("extsub", {"combine": "bogus"}),
    ("dama", {"components": float("inf")}), ("inlp", {"classifier": "tree"}), ("dinm", {"kl_direction": "x"}),
])
def test_direct_construction_is_checked_too(which, kwargs):
    (key, value), = kwargs.items()
    with pytest.raises(UsageError, match=f"option '{key}' must be"):
        _configs()[which](**kwargs)


def test_range_and_choices_are_named():
    from trustedit.safety.ext_sub import ExtSubConfig

    with pytest.raises(UsageError, match=r"'dropout' must be a finite number in \[0, 1\), got 1\.0"):
        SanitizationConfig(dropout=1.0)
    with pytest.raises(UsageError, match=r"'combine' must be one of 'ext-sub', 'negation', 'expert', got 'bogus'"):
        ExtSubConfig(combine="bogus")
    with pytest.raises(UsageError, match=r"'epochs' must be an integer >= 1, got -1"):
        FTMConfig(epochs=-1)


@pytest.mark.parametrize("which, item", [
    ("san", "dropout=0"), ("san", "first_layer=-1"), ("san", "first_layer=3"), ("san", "targets=q,k,v,o,gate,up,down"),
    ("ftm", "max_steps=0"), ("ftm", "retain_weight=0"), ("ftm", "retain_target=gold"),
    ("dama", "components=0.5"), ("dama", "components=36"), ("dama", "contexts_per_length=0"), ("dama", "values=contrast"),
    ("dama", "first_layer=21"), ("dama", "last_layer=-1"), ("inlp", "dev_fraction=0"), ("inlp", "min_accuracy=1"),
    ("inlp", "classifier=logreg"), ("inlp", "label=model"), ("extsub", "lam=0"), ("extsub", "data_source=jigsaw+paradetox"),
    ("extsub", "combine=expert"), ("dinm", "steps=0"), ("dinm", "layer=-2"), ("dinm", "layer=0.5"), ("dinm", "layer=none"),
    ("dinm", "kl_direction=base||edited"), ("dinm", "abs_lr=5e-4"),
])
def test_boundary_values_are_accepted(which, item):
    _configs()[which].resolve(sets=[item])


def test_every_default_config_is_valid_and_every_number_is_constrained():
    import dataclasses

    for cls in _configs().values():
        cfg = cls()
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rules = {"gt", "ge", "lt", "le", "choices", "layer", "check"} & set(f.metadata)
                assert rules, f"{cls.__name__}.{f.name} has no declared range"


def test_layer_fields_keep_indices_and_check_fractions():
    f = FTMConfig.resolve(sets=["layer=21"])
    assert f.layer == 21 and isinstance(f.layer, int)  # an index given as "21" is an index, not the fraction 21.0
    assert FTMConfig(layer=-1.0).layer == -1 and FTMConfig(layer=-3).layer == -3
    assert FTMConfig(layer=0.5).layer == 0.5
    assert SanitizationConfig(first_layer=0.0).first_layer == 0.0
    from trustedit.bias.dama import DAMAConfig

    d = DAMAConfig.resolve(sets=["first_layer=21", "last_layer=0.93"])
    assert (d.first_layer, d.last_layer) == (21, 0.93)
    with pytest.raises(UsageError, match="fraction of depth in \\[0, 1\\), got 1.5"):
        DAMAConfig(last_layer=1.5)


def test_list_items_take_the_default_item_type():
    from trustedit.bias.dama import DAMAConfig

    assert DAMAConfig.resolve(sets=["context_lengths=3, 7"]).context_lengths == [3, 7]
    with pytest.raises(UsageError, match="--set context_lengths=3,x: expected list of int"):
        DAMAConfig.resolve(sets=["context_lengths=3,x"])


# ---- --config FILE: JSON or YAML, errors that name their source --------------------------------


def test_yaml_config(tmp_path):
    pytest.importorskip("yaml")
    for name in ("cfg.yaml", "cfg.yml"):
        p = tmp_path / name
        p.write_text("rank: 2\nalpha: 4\ntargets: [o, down]\nlr: 1.0e-3\nepochs: 3\n")
        c = SanitizationConfig.resolve(str(p), ["epochs=1"])
        assert (c.rank, c.alpha, c.targets, c.lr, c.epochs) == (2, 4, ["o", "down"], 1e-3, 1)
    p = tmp_path / "cfg.yaml"
    p.write_text("method:\n  rank: 6\nother: ignored\n")
    assert SanitizationConfig.resolve(str(p)).rank == 6
    p.write_text("lr: 1e-3\n")  # YAML 1.1 reads this as a string; coerced like --set
    assert SanitizationConfig.resolve(str(p)).lr == pytest.approx(1e-3)


def test_yaml_errors_are_one_line(tmp_path):
    pytest.importorskip("yaml")
    p = tmp_path / "cfg.yaml"
    p.write_text("rank: 2\n  alpha: [4\n")
    with pytest.raises(UsageError, match=r"--config .*cfg.yaml: invalid YAML at line \d+"):
        SanitizationConfig.resolve(str(p))
    p.write_text("- rank\n- 2\n")
    with pytest.raises(UsageError, match="expected a YAML mapping"):
        SanitizationConfig.resolve(str(p))
    p.write_text("")
    with pytest.raises(UsageError, match="expected a YAML mapping"):
        SanitizationConfig.resolve(str(p))
    p.write_text("rnak: 2\n")
    with pytest.raises(UsageError, match=r"cfg.yaml: unknown SanitizationConfig option 'rnak' \(known: alpha"):
        SanitizationConfig.resolve(str(p))


def test_other_extensions_try_json_then_yaml(tmp_path):
    pytest.importorskip("yaml")
    p = tmp_path / "options.cfg"
    p.write_text(json.dumps({"rank": 3}))
    assert SanitizationConfig.resolve(str(p)).rank == 3
    p.write_text("rank: 5\n")
    assert SanitizationConfig.resolve(str(p)).rank == 5
    p.write_text("rank: [\n")
    with pytest.raises(UsageError, match="options.cfg: invalid JSON .* not YAML either"):
        SanitizationConfig.resolve(str(p))


@pytest.mark.parametrize("name", ["cfg.json", "cfg.yaml"])
def test_type_errors_name_the_file_not_set(tmp_path, name):
    if name.endswith("yaml"):
        pytest.importorskip("yaml")
    p = tmp_path / name
    p.write_text(json.dumps({"lr": "abc"}))  # JSON is YAML too
    with pytest.raises(UsageError) as e:
        SanitizationConfig.resolve(str(p))
    assert str(e.value) == f"--config {p}: option 'lr': expected float, got 'abc'"
    p.write_text(json.dumps({"rank": 2.5}))
    with pytest.raises(UsageError, match=f"--config {p}: option 'rank': expected int, got 2.5"):
        SanitizationConfig.resolve(str(p))
    p.write_text(json.dumps({"dropout": 2}))  # out of range: the file is named too
    with pytest.raises(UsageError, match=rf"--config {p}: SanitizationConfig option 'dropout' must be .* got 2"):
        SanitizationConfig.resolve(str(p))
    with pytest.raises(UsageError) as e:  # the same error from --set names --set
        SanitizationConfig.resolve(str(p), ["dropout=0.1", "lr=abc"])
    assert str(e.value) == "--set lr=abc: expected float"

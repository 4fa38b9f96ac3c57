"""Typed configs: defaults < YAML files < --key value; unknown keys and wrong types rejected."""
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Tuple, Union

import pytest

from adaptive.config import ConfigError, config_help, load_config, parse_config, save_config, to_dict


@dataclass
class Opt:
    lr: float = 0.1
    momentum: float = 0.9


@dataclass
class Cfg:
    model: str = "mlp"
    density: float = 0.1
    epochs: int = 3
    max_steps: Optional[int] = None
    data_dir: Optional[str] = None
    download: bool = False
    hidden: Tuple[int, ...] = (300, 100)
    remove: List[float] = field(default_factory=lambda: [0.2])
    policy: Literal["rigl", "set", "utility"] = "rigl"
    model_kw: Dict[str, Any] = field(default_factory=dict)
    optim: Opt = field(default_factory=Opt, metadata={"help": "optimizer settings"})

    def __post_init__(self):
        if not 0 < self.density <= 1:
            raise ValueError(f"density must be in (0, 1], got {self.density}")


def test_defaults_and_overrides_with_dashes_or_underscores():
    assert parse_config(Cfg, []) == Cfg()
    cfg = parse_config(Cfg, ["--data-dir", "/d", "--max_steps=20", "--density", "0.05", "--download",
                             "--hidden", "64,32", "--remove", "0.1,0.5", "--policy", "set",
                             "--optim.lr", "1e-3", "--model-kw.depth", "4", "--model_kw.kind", "cnn"])
    assert cfg.data_dir == "/d" and cfg.max_steps == 20 and cfg.density == 0.05 and cfg.download is True
    assert cfg.hidden == (64, 32) and cfg.remove == [0.1, 0.5] and cfg.policy == "set"
    assert cfg.optim == Opt(lr=1e-3, momentum=0.9)
    assert cfg.model_kw == {"depth": 4, "kind": "cnn"}
    assert parse_config(Cfg, ["--max_steps", "none", "--download", "false"]).download is False
    # --no-KEY turns a yes/no option off (as in the other recipes); it is no way round a typo
    assert parse_config(Cfg, ["--download", "--no-download"]).download is False
    assert parse_config(Cfg, ["--no_download", "--epochs", "4"]) == Cfg(epochs=4)
    with pytest.raises(ConfigError, match="unknown config key 'no_epochs'"):
        parse_config(Cfg, ["--no-epochs"])


def test_yaml_layers_then_command_line(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("model: lenet300\nepochs: 10\ndata-dir: /x\noptim: {momentum: 0.5}\nmodel_kw: {depth: 8, width: 16}\n")
    b = tmp_path / "b.yaml"
    b.write_text("epochs: 20\n")
    cfg = parse_config(Cfg, ["--epochs", "5", "--config", str(a), "--config", str(b), "--model_kw.depth", "2"])
    assert cfg.model == "lenet300" and cfg.data_dir == "/x"
    assert cfg.epochs == 5  # the command line wins wherever it appears
    assert cfg.optim == Opt(lr=0.1, momentum=0.5)
    assert cfg.model_kw == {"depth": 2, "width": 16}
    assert parse_config(Cfg, ["--config", str(a), "--config", str(b)]).epochs == 20


@pytest.mark.parametrize("argv,message", [
    (["--densty", "0.1"], r"unknown config key 'densty' \(from --densty\); did you mean 'density'\?"),
    (["--epochs", "ten"], r"config key 'epochs' \(from the command line\) expects int, got 'ten'"),
    (["--epochs", "2.5"], r"expects int, got '2.5'"),
    (["--density", "abc"], r"expects float"),
    (["--download", "maybe"], r"expects bool, got 'maybe' \(use true or false\)"),
    (["--policy", "sgd"], r"must be one of \['rigl', 'set', 'utility'\], got 'sgd'"),
    (["--hidden", "3,x"], r"config key 'hidden\[1\]'.*expects int"),
    (["--optim.lrr", "1"], r"unknown config key 'optim.lrr'.*did you mean 'optim.lr'"),
    (["--epochs"], r"--epochs needs a value \(int\)"),
    (["positional"], r"unexpected argument 'positional'"),
    (["--density", "2"], r"invalid configuration.*density must be in \(0, 1\], got 2.0"),
    (["--config", "/nonexistent.yaml"], r"config file '/nonexistent.yaml' does not exist"),
])
def test_bad_arguments_rejected_clearly(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(Cfg, argv)


def test_bad_yaml_rejected_with_file_name(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("epochs: 3\nmodle: lenet5\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'modle' in .*c.yaml; did you mean 'model'"):
        parse_config(Cfg, ["--config", str(p)])
    p.write_text("model: 5\n")
    with pytest.raises(ConfigError, match=r"config key 'model' in .*c.yaml expects str, got 5"):
        load_config(Cfg, p)
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(Cfg, p)


def test_exit_on_error_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(Cfg, ["--nope", "1"], prog="adaptive.py", exit_on_error=True)
    assert e.value.code == 2
    assert "adaptive.py: error: unknown config key 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        parse_config(Cfg, ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--data-dir (Optional[str], default None)" in out and "optimizer settings" in out
    assert "--max-steps" in config_help(Cfg)


def test_save_load_round_trip(tmp_path):
    cfg = parse_config(Cfg, ["--hidden", "8,4", "--optim.lr", "0.01", "--model_kw.depth", "3"])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(Cfg, tmp_path / "run" / "config.yaml")
    assert again == cfg
    assert to_dict(cfg)["hidden"] == [8, 4]
    assert load_config(Cfg, tmp_path / "run" / "config.yaml", overrides={"epochs": 9}).epochs == 9


@dataclass
class TargetCfg:
    target: Optional[Union[int, float, str]] = None


def test_int_or_float_union_reads_a_written_float_as_a_float(tmp_path):
    # "1.0" is the fraction 1.0, not the count 1 (it became int 1 when int was tried first)
    assert parse_config(TargetCfg, ["--target", "1.0"]).target == 1.0
    assert isinstance(parse_config(TargetCfg, ["--target", "1.0"]).target, float)
    assert isinstance(parse_config(TargetCfg, ["--target", "2e3"]).target, float)
    got = parse_config(TargetCfg, ["--target", "3"]).target
    assert got == 3 and isinstance(got, int)
    assert parse_config(TargetCfg, ["--target", "best"]).target == "best"
    assert parse_config(TargetCfg, ["--target", "none"]).target is None
    p = tmp_path / "c.yaml"
    p.write_text("target: 1.0\n")
    assert isinstance(load_config(TargetCfg, p).target, float)


def test_dict_entries_from_the_command_line_in_every_form():
    cfg = parse_config(Cfg, ["--model_kw", "depth=4", "--model-kw", "widths=[8, 16]", "--model_kw.act", "relu"])
    assert cfg.model_kw == {"depth": 4, "widths": [8, 16], "act": "relu"}
    assert parse_config(Cfg, ["--model_kw", "{depth: 2}"]).model_kw == {"depth": 2}
    assert parse_config(Cfg, ["--model_kw", "note=a=b"]).model_kw == {"note": "a=b"}  # the first '=' splits
    with pytest.raises(ConfigError, match=r"expects Dict\[str, Any\], got 'deep'.*KEY=VALUE.*--model_kw.KEY VALUE"):
        parse_config(Cfg, ["--model_kw", "deep"])


@dataclass
class _Derived:
    mode: str = "a"
    steps: Optional[int] = None  # derived from mode when not given
    pats: List[str] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self):
        if self.steps is None:
            self.steps = 1 if self.mode == "b" else 20


def test_a_config_file_does_not_freeze_defaults_derived_from_other_keys(tmp_path):
    """A file built the config, and its derived defaults (steps for mode a) came back as if given,
    so a later --mode b kept steps 20."""
    (tmp_path / "empty.yaml").write_text("seed: 1\n")
    (tmp_path / "b.yaml").write_text("mode: b\n")
    assert parse_config(_Derived, ["--config", str(tmp_path / "empty.yaml"), "--mode", "b"]).steps == 1
    assert parse_config(_Derived, ["--config", str(tmp_path / "empty.yaml"), "--config", str(tmp_path / "b.yaml")]).steps == 1
    assert parse_config(_Derived, ["--config", str(tmp_path / "empty.yaml")]).steps == 20


def test_name_patterns_that_are_not_yaml_lists_and_large_integers_are_read_as_written():
    cfg = parse_config(_Derived, ["--pats", "[ab]*", "--seed", "12345678901234567891"])
    assert cfg.pats == ["[ab]*"] and cfg.seed == 12345678901234567891


def test_a_command_line_value_that_is_bad_yaml_gets_a_config_error():
    @dataclass
    class C:
        kw: Dict[str, Any] = field(default_factory=dict)

    with pytest.raises(ConfigError, match="could not be read as YAML"):
        parse_config(C, ["--kw", "a=[1"])


def test_untyped_values_written_with_an_exponent_are_floats(tmp_path):
    @dataclass
    class C:
        kw: Dict[str, Any] = field(default_factory=dict)

    assert parse_config(C, ["--kw.lr", "1e-3", "--kw", "wd=5E-4"]).kw == {"lr": 0.001, "wd": 0.0005}
    (tmp_path / "c.yaml").write_text("kw: {lr: 1e-3, name: e5, ids: [1e2, x]}\n")
    assert parse_config(C, ["--config", str(tmp_path / "c.yaml")]).kw == {"lr": 0.001, "name": "e5", "ids": [100.0, "x"]}


def test_dict_entries_merge_across_mappings_key_values_and_config_files(tmp_path):
    """A YAML mapping and KEY=VALUE entries of one dict option, in any order and from a --config
    file or the command line, merge entry by entry, later ones winning per key (a mapping after
    an entry replaced it; an entry after a mapping was a raw TypeError)."""
    def kw(*argv):
        return parse_config(Cfg, list(argv)).model_kw

    assert kw("--model_kw", "{a: 1}", "--model_kw", "b=2") == {"a": 1, "b": 2}
    assert kw("--model_kw", "b=2", "--model_kw", "{a: 1}") == {"a": 1, "b": 2}
    assert kw("--model_kw", "{a: 1}", "--model_kw", "{b: 2}") == {"a": 1, "b": 2}
    assert kw("--model_kw.b", "2", "--model_kw", "{a: 1, c: 3}") == {"a": 1, "b": 2, "c": 3}
    assert kw("--model_kw", "{a: 1, b: 1}", "--model_kw", "a=7") == {"a": 7, "b": 1}
    assert kw("--model_kw", "a=7", "--model_kw", "{a: 1}") == {"a": 1}
    assert kw("--model_kw", "{a.b: 1}") == {"a.b": 1}  # a mapping's key is one entry, dots and all
    f = tmp_path / "c.yaml"
    f.write_text("model_kw: {a: 1, c: 3}\n")
    for argv in (["--config", str(f), "--model_kw", "b=2", "--model_kw", "c=4"],
                 ["--model_kw", "b=2", "--model_kw", "c=4", "--config", str(f)],
                 ["--model_kw", "{b: 2, c: 4}", "--config", str(f)]):
        assert kw(*argv) == {"a": 1, "b": 2, "c": 4}, argv
    with pytest.raises(ConfigError, match=r"'model_kw' \(from --model_kw\) expects Dict\[str, Any\], got \[1, 2\]"):
        kw("--model_kw", "{a: 1}", "--model_kw", "[1, 2]")


def test_merge_key_values_reads_dict_options_as_parse_config_does():
    """The argparse recipes (prune_pretrained, diagnostics) read their --dataset-kw with it."""
    from adaptive.config import merge_key_values

    assert merge_key_values(["{a: 1, b: 1e-3}", "a=2", "c=[1, 2]"], base={"b": 0, "d": 5}) == \
        {"a": 2, "b": 1e-3, "c": [1, 2], "d": 5}
    assert merge_key_values(["a=1", "{a: 3}"]) == {"a": 3}
    with pytest.raises(ValueError, match=r"--dataset-kw '232': write KEY=VALUE or a YAML mapping"):
        merge_key_values(["232"])


def test_a_dataclass_field_given_as_a_mapping_merges_with_its_dotted_fields():
    """--optim '{lr: 0.5}' was refused as "not a mapping of its fields", and with --optim.momentum
    beside it the parser crashed with a raw TypeError."""
    assert parse_config(Cfg, ["--optim", "{lr: 0.5}"]).optim == Opt(lr=0.5, momentum=0.9)
    assert parse_config(Cfg, ["--optim", "{lr: 0.5}", "--optim.momentum", "0.8"]).optim == Opt(0.5, 0.8)
    assert parse_config(Cfg, ["--optim.momentum", "0.8", "--optim", "{lr: 0.5}"]).optim == Opt(0.5, 0.8)
    assert parse_config(Cfg, ["--optim", "{lr: 0.5}", "--optim", "{lr: 2e-3}"]).optim.lr == 0.002
    with pytest.raises(ConfigError, match="a mapping of its fields"):
        parse_config(Cfg, ["--optim", "fast"])
    with pytest.raises(ConfigError, match="optim.lrr"):
        parse_config(Cfg, ["--optim", "{lrr: 0.5}"])


@dataclass
class _Sched:
    kind: str = "cos"
    warm: int = 0


@dataclass
class _Optim:
    lr: float = 0.1
    weight_decay: float = 0.0
    sched: _Sched = field(default_factory=_Sched)


@dataclass
class _Nested:
    optim: _Optim = field(default_factory=_Optim)


def test_nested_dataclasses_stay_dataclasses_and_the_latest_option_wins(tmp_path):
    """A field two levels down became a plain dict once its parent was set (--optim.lr, a mapping, a
    file); a dashed key in a mapping lost to an earlier --optim.weight_decay; a KEY=VALUE whose value
    is not YAML gave a yaml traceback from merge_key_values (--dataset-kw in prune_pretrained and
    diagnostics)."""
    from adaptive.config import merge_key_values

    (tmp_path / "o.yaml").write_text("optim: {lr: 0.5}\n")
    for argv in (["--optim.lr", "0.5"], ["--optim", "{lr: 0.5}"], ["--config", str(tmp_path / "o.yaml")]):
        assert parse_config(_Nested, argv).optim == _Optim(lr=0.5, sched=_Sched()), argv
    cfg = parse_config(_Nested, ["--optim", "{weight-decay: 1}", "--optim.weight_decay", "2", "--optim", "{weight-decay: 3}"])
    assert cfg.optim.weight_decay == 3.0
    with pytest.raises(ValueError, match=r"--dataset-kw 'a=\{b': the value is not YAML"):
        merge_key_values(["a={b"])
    assert merge_key_values(["{a: 1}", "b=[1, 2]"]) == {"a": 1, "b": [1, 2]}


def test_a_value_that_is_not_yaml_names_its_own_option():
    with pytest.raises(ConfigError, match=r"--model_kw 'hidden=\[64, 32': the value is not YAML"):
        parse_config(Cfg, ["--model_kw", "hidden=[64, 32"])


def test_a_key_value_entry_written_with_an_exponent_is_a_float():
    """--dataset-kw lr=1e-3 gave the string '1e-3' (YAML 1.1 reads it so), where '{lr: 1e-3}' gave 0.001."""
    from adaptive.config import merge_key_values

    assert merge_key_values(["lr=1e-3"]) == {"lr": 0.001} == merge_key_values(["{lr: 1e-3}"])


def test_an_exponent_inside_a_nested_mapping_is_a_float():
    from adaptive.config import merge_key_values

    assert merge_key_values(["{opt: {lr: 1e-3}}"]) == {"opt": {"lr": 0.001}}
    assert parse_config(Cfg, ["--model_kw", "{opt: {lr: 1e-3}}"]).model_kw == {"opt": {"lr": 0.001}}


def test_a_mapping_with_an_equals_sign_in_a_value_is_read_as_the_mapping():
    """'{root: /data, filter: "x=1"}' is a YAML mapping, not KEY=VALUE split at its '='."""
    from adaptive.config import merge_key_values

    assert merge_key_values(['{root: /data, filter: "x=1"}']) == {"root": "/data", "filter": "x=1"}
    assert parse_config(Cfg, ["--model_kw", '{act: relu, expr: "a=b"}']).model_kw == {"act": "relu", "expr": "a=b"}


def test_a_nested_mapping_keeps_the_dotted_fields_given_before_it():
    """--optim.sched.warm 5 then --optim '{sched: {kind: lin}}': the mapping sets kind, warm stays 5."""
    cfg = parse_config(_Nested, ["--optim.sched.warm", "5", "--optim", "{sched: {kind: lin}}"])
    assert cfg.optim == _Optim(sched=_Sched(kind="lin", warm=5))


def test_load_config_with_overrides_derives_defaults_again_as_parse_config_does(tmp_path):
    """load_config(file, overrides={'mode': 'b'}) kept the steps derived from the file's mode a (20)."""
    (tmp_path / "c.yaml").write_text("seed: 1\n")
    cfg = load_config(_Derived, tmp_path / "c.yaml", overrides={"mode": "b"})
    assert (cfg.mode, cfg.steps, cfg.seed) == ("b", 1, 1)
    assert cfg == parse_config(_Derived, ["--config", str(tmp_path / "c.yaml"), "--mode", "b"])
    (tmp_path / "s.yaml").write_text("steps: 7\n")  # a value the file gives is kept
    assert load_config(_Derived, tmp_path / "s.yaml", overrides={"mode": "b"}).steps == 7


@dataclass
class _Checked:
    lr: float = 0.1
    warmup: int = 0
    steps: int = 100
    optim: Opt = field(default_factory=Opt)

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup > self.steps:
            raise ValueError(f"warmup ({self.warmup}) exceeds steps ({self.steps})")


def test_checks_run_once_on_the_merged_settings_so_a_later_source_fixes_an_earlier_one(tmp_path):
    """Each --config file was checked before the command line applied: 'lr: 0' in a file with
    --lr 0.1 was refused for lr 0, and warmup 200 > steps 100 for --warmup 50 (the fix named)."""
    (tmp_path / "lr.yaml").write_text("lr: 0\n")
    (tmp_path / "wm.yaml").write_text("warmup: 200\n")
    assert parse_config(_Checked, ["--config", str(tmp_path / "lr.yaml"), "--lr", "0.1"]).lr == 0.1
    assert parse_config(_Checked, ["--config", str(tmp_path / "wm.yaml"), "--warmup", "50"]).warmup == 50
    assert parse_config(_Checked, ["--config", str(tmp_path / "wm.yaml"), "--steps", "300"]).warmup == 200
    (tmp_path / "fix.yaml").write_text("steps: 300\n")  # a later file fixes an earlier one too
    assert parse_config(_Checked, ["--config", str(tmp_path / "wm.yaml"), "--config", str(tmp_path / "fix.yaml")]).steps == 300
    assert load_config(_Checked, tmp_path / "lr.yaml", overrides={"lr": 0.5}).lr == 0.5
    # what stays wrong after every source is still refused, naming where the settings came from
    with pytest.raises(ConfigError, match=r"invalid configuration \(from .*wm.yaml\): warmup \(200\) exceeds steps"):
        parse_config(_Checked, ["--config", str(tmp_path / "wm.yaml")])
    with pytest.raises(ConfigError, match=r"\(from .*lr.yaml and the command line\): lr must be > 0"):
        parse_config(_Checked, ["--config", str(tmp_path / "lr.yaml"), "--warmup", "1"])
    # an unknown key or a wrong type still names its own file, whatever comes after it
    (tmp_path / "bad.yaml").write_text("optim: {lrr: 1}\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr' in .*bad.yaml; did you mean 'optim.lr'"):
        parse_config(_Checked, ["--config", str(tmp_path / "bad.yaml"), "--lr", "0.2"])
    (tmp_path / "bad.yaml").write_text("steps: many\n")
    with pytest.raises(ConfigError, match=r"config key 'steps' in .*bad.yaml expects int"):
        parse_config(_Checked, ["--config", str(tmp_path / "bad.yaml"), "--steps", "5"])
    (tmp_path / "o.yaml").write_text("optim: {lr: 0.5}\n")  # nested fields merge across sources
    assert parse_config(_Checked, ["--config", str(tmp_path / "o.yaml"), "--optim.momentum", "0.1"]).optim == Opt(0.5, 0.1)


def test_given_keys_tells_a_value_given_on_purpose_from_its_default(tmp_path):
    from adaptive.config import COMMAND_LINE, given_keys

    seen = []

    @dataclass
    class _Seen:
        lr: float = 0.1
        steps: int = 100

        def __post_init__(self):
            seen.append(given_keys())

    (tmp_path / "a.yaml").write_text("lr: 0.1\nsteps: 5\n")
    parse_config(_Seen, ["--config", str(tmp_path / "a.yaml"), "--lr", "0.1"])
    assert seen[-1] == {"lr": COMMAND_LINE, "steps": str(tmp_path / "a.yaml")}
    parse_config(_Seen, [])
    assert seen[-1] == {}
    _Seen()
    assert seen[-1] is None and given_keys() is None  # built directly: nothing to tell


@dataclass
class Lists:
    remove: List[float] = field(default_factory=lambda: [0.2])
    exclude: Optional[List[str]] = None
    hidden: Tuple[int, ...] = (300, 100)


def test_a_list_option_given_twice_takes_the_values_of_both(tmp_path):
    """--exclude a --exclude b kept only b: the earlier pattern was dropped without a word."""
    cfg = parse_config(Lists, ["--exclude", "*fc1*", "--remove", "0.3", "--exclude", "*fc2*,*fc3*", "--remove",
                               "[0.5, 0.7]"])
    assert cfg.exclude == ["*fc1*", "*fc2*", "*fc3*"] and cfg.remove == [0.3, 0.5, 0.7]
    path = tmp_path / "a.yaml"
    path.write_text("remove: [0.1]\nexclude: [head]\n")  # the command line's lists replace a file's
    cfg = parse_config(Lists, ["--config", str(path), "--remove", "0.4", "--remove", "0.6"])
    assert cfg.remove == [0.4, 0.6] and cfg.exclude == ["head"]
    assert parse_config(Lists, ["--exclude", "a", "--exclude", "none"]).exclude is None  # none: unset again
    assert parse_config(Lists, ["--exclude", "none", "--exclude", "b"]).exclude == ["b"]
    assert parse_config(Lists, ["--hidden", "1,2", "--hidden", "3"]).hidden == (3,)  # a tuple: the last one
    assert "a list option given more than once takes the values of every one" in config_help(Lists)


def test_one_key_in_two_spellings_is_refused_naming_both_and_the_file(tmp_path):
    """`data_dir:` and `data-dir:` in one file (at the top, or inside a nested section) let the
    later one silently win; so did two spellings inside a mapping given on the command line."""
    top = tmp_path / "top.yaml"
    top.write_text("data_dir: /a\ndata-dir: /b\n")
    for build in (lambda: parse_config(Cfg, ["--config", str(top)]), lambda: load_config(Cfg, top)):
        with pytest.raises(ConfigError, match=r"'data_dir' and 'data-dir' in .*top\.yaml are the same key.*keep one"):
            build()
    nested = tmp_path / "nested.yaml"
    nested.write_text("optim:\n  weight-decay: 1\n  weight_decay: 2\n")
    with pytest.raises(ConfigError, match=r"'optim\.weight-decay' and 'optim\.weight_decay' in .*nested\.yaml"):
        parse_config(_Nested, ["--config", str(nested)])
    with pytest.raises(ConfigError, match=r"'optim\.weight-decay' and 'optim\.weight_decay' \(from --optim\)"):
        parse_config(_Nested, ["--optim", "{weight-decay: 1, weight_decay: 2}"])
    assert parse_config(Cfg, ["--model_kw", "{a-b: 1, a_b: 2}"]).model_kw == {"a-b": 1, "a_b": 2}  # a dict's own keys


def test_a_file_key_with_leading_dashes_is_refused_naming_the_key_to_write(tmp_path):
    """`--epochs: 5` (a command-line option pasted into a file) was read as `epochs: 5`; the command
    line's own --epochs, --key.field and --no-KEY are unchanged."""
    for text, written, fix in (("--epochs: 5\n", "--epochs", "'epochs'"), ("-data-dir: /d\n", "-data-dir", "'data_dir'"),
                               ("optim:\n  --lr: 0.5\n", "optim.--lr", "'optim.lr'")):
        (tmp_path / "d.yaml").write_text(text)
        for build in (lambda: parse_config(Cfg, ["--config", str(tmp_path / "d.yaml")]),
                      lambda: load_config(Cfg, tmp_path / "d.yaml")):
            with pytest.raises(ConfigError, match=f"config key '{written}' in .*d\\.yaml starts with a dash.*write {fix}"):
                build()
    with pytest.raises(ConfigError, match=r"config key 'optim\.--lr' \(from --optim\) starts with a dash"):
        parse_config(Cfg, ["--optim", "{--lr: 0.5}"])
    cfg = parse_config(Cfg, ["--epochs", "5", "--optim.lr", "0.5", "--data-dir=/d", "--no-download"])
    assert (cfg.epochs, cfg.optim.lr, cfg.data_dir, cfg.download) == (5, 0.5, "/d", False)


# ----------------------------------------------------------------------------- KEY:VALUE without a space

NO_SPACE = "YAML needs a space after ':' ({image_size: 32}), or use KEY=VALUE (image_size=32)"


def test_a_mapping_without_a_space_after_the_colon_says_so():
    """YAML reads '{image_size:32}' as a key named 'image_size:32' with no value: the errors after it
    said 'not an argument ... did you mean image_size?', which hid the missing space."""
    with pytest.raises(ConfigError, match=r"config key 'model_kw' \(from --model_kw\): YAML read 'image_size:32' as "
                                          r"a key with no value: " + re.escape(NO_SPACE)):
        parse_config(Cfg, ["--model-kw", "{image_size:32,resize:36}"])
    with pytest.raises(ConfigError, match=r"YAML read 'b:1' as a key with no value: .*\(\{b: 1\}\), or use KEY=VALUE"):
        parse_config(Cfg, ["--model-kw", "{a: {b:1}}"])  # nested
    with pytest.raises(ConfigError, match=r"config keys of optim \(from --optim\): YAML read 'lr:0.5' as a key "
                                          r"with no value: .*\(\{lr: 0.5\}\), or use KEY=VALUE"):
        parse_config(Cfg, ["--optim", "{lr:0.5}"])
    assert parse_config(Cfg, ["--model-kw", "{image_size: 32, name: 'a:b'}"]).model_kw == {"image_size": 32,
                                                                                          "name": "a:b"}


def _refused_file(tmp_path, text: str, match: str) -> None:
    """A config file holding ``text`` is refused with a ConfigError matching ``match``."""
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        parse_config(Cfg, ["--config", str(path)])


def test_a_config_file_mapping_without_a_space_after_the_colon_says_so_without_key_value(tmp_path):
    """In a file KEY=VALUE is no way to write it: the message leaves it out."""
    _refused_file(tmp_path, "model_kw: {image_size:32}\n", r"config key 'model_kw' in .*c.yaml: YAML read "
                  r"'image_size:32' as a key with no value: YAML needs a space after ':' \(\{image_size: 32\}\)$")


@pytest.mark.parametrize("script", ["recipes/adaptive.py", "recipes/prune_pretrained.py"])
@pytest.mark.parametrize("option, value, said", [
    ("--dataset-kw", "{image_size:32,resize:36}", NO_SPACE),
    ("--model-kw", "{hidden: [16], depth:2}", "YAML needs a space after ':' ({depth: 2}), or use KEY=VALUE (depth=2)"),
])
def test_both_recipes_say_what_a_missing_space_after_the_colon_did(script, option, value, said, tmp_path, capsys):
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _scripts import load_script

    mod = load_script(script, "config_colon_" + script.split("/")[1][:-3])
    with pytest.raises(SystemExit) as e:
        mod.parse_args([option, value, "--output_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err + str(e.value.code)
    assert "YAML read" in err and said in err and "not an argument" not in err, err
    assert not (tmp_path / "run").exists()


def test_a_missing_space_in_a_mapping_inside_a_list_or_a_key_value_says_so():
    """Mappings in lists ({transforms: [{resize:36}]}) and in a KEY=VALUE's value (opts={a:1}) were not
    looked into: the missing space came out as an unknown argument 'resize:36' further on."""
    from adaptive.config import merge_key_values

    with pytest.raises(ConfigError, match=r"YAML read 'resize:36' as a key with no value: .*\(\{resize: 36\}\)"):
        parse_config(Cfg, ["--model-kw", "{transforms: [{resize:36}]}"])
    for argv in (["--model-kw", "opts={a:1}"], ["--model-kw.opts", "{a:1}"]):
        with pytest.raises(ConfigError, match=r"config key 'model_kw(\.opts)?' \(from .*\): YAML read 'a:1' as a key "
                                              r"with no value: .*, or use KEY=VALUE \(a=1\)"):
            parse_config(Cfg, argv)
    assert parse_config(Cfg, ["--model-kw", "opts={a: 1}", "--model-kw", "u=http://x:80"]).model_kw == {
        "opts": {"a": 1}, "u": "http://x:80"}
    with pytest.raises(ConfigError, match=r"--dataset-kw '\{t: \[\{resize:36\}\]\}': YAML read 'resize:36'"):
        merge_key_values(["{t: [{resize:36}]}"])
    with pytest.raises(ConfigError, match=r"--dataset-kw 'opts=\{a:1\}': YAML read 'a:1' as a key .*\(a=1\)"):
        merge_key_values(["opts={a:1}"])
    assert merge_key_values(["url=http://x:80", "{t: [{a: 1}, 'b:c'], when: '12:30'}", "none="]) == {
        "url": "http://x:80", "t": [{"a": 1}, "b:c"], "when": "12:30", "none": None}


def test_a_config_files_mapping_given_to_merge_key_values_is_checked_too():
    """recipes/prune_pretrained.py --config FILE with 'model_kw: {depth:2}': the file's mapping (base)
    went unchecked, and the run failed with "model 'mlp' takes no keyword 'depth:2'"."""
    from adaptive.config import merge_key_values

    with pytest.raises(ConfigError, match=r"^the config file's model_kw: YAML read 'depth:2' as a key with no value: "
                                          r"YAML needs a space after ':' \(\{depth: 2\}\)$"):
        merge_key_values([], "--model-kw", base={"hidden": [16], "depth:2": None})
    assert merge_key_values(["depth=3"], "--model-kw", base={"hidden": [16], "a": None}) == {
        "hidden": [16], "a": None, "depth": 3}


def test_prune_pretrained_says_what_a_missing_space_in_its_config_file_did(tmp_path, capsys):
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _scripts import load_script

    mod = load_script("recipes/prune_pretrained.py", "config_colon_prune_pretrained_file")
    path = tmp_path / "c.yaml"
    path.write_text("model: mlp\ndataset: digits\nmodel_kw: {hidden: [16], depth:2}\n")
    with pytest.raises(SystemExit) as e:
        mod.parse_args(["--config", str(path), "--output_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err + str(e.value.code)
    assert "the config file's model_kw: YAML read 'depth:2' as a key with no value: YAML needs a space after ':' " \
           "({depth: 2})" in err and "takes no keyword" not in err, err
    assert not (tmp_path / "run").exists()


def test_a_bare_yaml_no_is_the_choice_no_and_a_colon_value_stays_text(tmp_path):
    """`mixed_precision: no` in a config file (YAML 1.1 reads a bare no as false) was refused as "must be
    one of ['no', 'fp16', 'bf16'], got False", and `ensemble: 2:4` as "expects str, got 124" (a base-60
    number). A yes/no that no choice spells says to quote the word."""
    @dataclass
    class Cfg:
        mixed_precision: Optional[Literal["no", "fp16", "bf16"]] = None
        mode: Literal["train", "mask_only"] = "train"
        ensemble: str = "synapse"

    p = tmp_path / "c.yaml"
    for word in ("no", "off", "false", "No"):
        p.write_text(f"mixed_precision: {word}\nensemble: 2:4\n")
        cfg = parse_config(Cfg, ["--config", str(p)])
        assert (cfg.mixed_precision, cfg.ensemble) == ("no", "2:4")
    assert parse_config(Cfg, ["--mixed_precision", "no"]).mixed_precision == "no"
    p.write_text("mode: off\n")
    with pytest.raises(ConfigError, match=r"must be one of \['train', 'mask_only'\], got False \(YAML reads a bare "
                                          r"no, off or false as a yes/no: quote a word, e.g. 'train'\)"):
        parse_config(Cfg, ["--config", str(p)])


def test_a_config_key_without_a_value_is_refused_naming_the_fix(tmp_path):
    """'epochs:' with nothing after it (YAML's null) was refused as 'expects int, got None', naming no fix."""
    _refused_file(tmp_path, "epochs:\n", r"config key 'epochs' .*expects int, got None \(the key has no value: give "
                  r"it one, or leave the key out for its default\)")

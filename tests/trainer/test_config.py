"""Configuration: file + flags, and bad input as one clear error line with a non-zero exit."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer import config as config_mod
from trainer.config import ConfigError, load_config, parse_flat_yaml
from trainer.train import main


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse errors
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc not in (0, None)
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and needle in err


def test_flags_override_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("model: baby\nmax_iters: 50\nlr: 3e-4\ndeadline_epoch: null\ncompile: true\n")
    cfg = load_config(["--config", str(f), "--max-iters", "7", "--no-compile", "--min_lr=1e-5"])
    assert (cfg.model, cfg.max_iters, cfg.lr, cfg.compile, cfg.min_lr) == ("baby", 7, 3e-4, False, 1e-5)
    assert cfg.model_config(vocab_size=65).n_layer == 4


def test_yaml_fallback_without_pyyaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("# comment\nmodel: tiny  # trailing\nsample_prompt: 'To be'\nlr: 1.0e-3\nbias: false\nseq_len: ~\n")
    monkeypatch.setitem(__import__("sys").modules, "yaml", None)  # import yaml -> ImportError
    cfg = load_config(["--config", str(f)])
    assert (cfg.sample_prompt, cfg.lr, cfg.bias, cfg.seq_len) == ("To be", 1e-3, False, None)
    with pytest.raises(ConfigError, match="line 1"):
        parse_flat_yaml("  nested: 1\n")


def test_json_config(tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text('{"n_layer": 3, "batch_size": 2}')
    cfg = config_mod.load_config(["--config", str(f)])
    assert (cfg.n_layer, cfg.batch_size) == (3, 2)


def test_n_embd_not_divisible(capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, ["--n-embd", "100", "--n-head", "3"], "n_embd (100) must be divisible by n_head (3)")


def test_seq_len_over_block_size(capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, ["--model", "tiny", "--seq-len", "128"], "longer than the model's block_size (64)")


def test_unknown_key_in_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("max_iters: 10\nlearning_rat: 0.1\n")
    _fails(capsys, ["--config", str(f)], "unknown config key 'learning_rat'")


def test_unknown_flag(capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, ["--learning-rat", "0.1"], "unrecognized arguments: --learning-rat")


def test_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, ["--max-iters", "ten"], "max_iters must be int")
    _fails(capsys, ["--model", "gpt5"], "unknown model preset 'gpt5'")
    _fails(capsys, ["--config", str(tmp_path / "missing.yaml")], "cannot read config file")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    _fails(capsys, ["--config", str(tmp_path / "list.yaml")], "expected a mapping")


def test_data_dir_without_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, ["--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o"), "--threads", "1"],
           "has no *train*.bin")


def test_shipped_configs_parse() -> None:
    root = Path(config_mod.__file__).parent / "configs"
    for f in sorted(root.glob("*.yaml")):
        load_config(["--config", str(f)])
    baby = load_config(["--config", str(root / "baby.yaml")])
    assert (baby.model, baby.batch_size, baby.max_iters, baby.lr, baby.min_lr, baby.beta2) == (
        "baby", 12, 2000, 1e-3, 1e-4, 0.99)


def test_resume_checks_against_the_saved_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.trainer.helpers import FAST

    out = ["--out-dir", str(tmp_path / "o")]
    assert main([*FAST, *out, "--max-iters", "3"]) == 0  # tiny preset, 32 wide, block 32
    capsys.readouterr()
    _fails(capsys, [*FAST, *out, "--max-iters", "6", "--block-size", "64"],
           "(64) is longer than the model's block_size (32)")
    _fails(capsys, [*FAST, *out, "--max-iters", "6", "--n-layer", "3"], "another model (n_layer 2 vs 3)")
    _fails(capsys, [*FAST, "--out-dir", str(tmp_path / "new"), "--resume", "must"], "has no checkpoint")


def test_missing_text_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, ["--text-file", str(tmp_path / "nope.txt"), "--out-dir", str(tmp_path / "o"), "--threads", "1"],
           "cannot prepare the data")


def test_bool_flags_take_a_value_as_gpurun_set_passes_them() -> None:
    # `gpurun launch --set compile=true` reaches the trainer as `--compile true`.
    assert load_config(["--compile", "true", "--bias", "off"]).compile is True
    assert load_config(["--compile", "--max-iters", "3"]).compile is True
    assert load_config(["--compile=yes", "--no-compile"]).compile is False
    with pytest.raises(ConfigError, match="compile must be bool, got 'maybe'"):
        load_config(["--compile", "maybe"])
    with pytest.raises(ConfigError, match="unrecognized arguments: true"):
        load_config(["--no-compile", "true"])


def test_unknown_flag_and_key_name_the_closest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, ["--max-iter", "5"], "unrecognized arguments: --max-iter 5: did you mean --max-iters?")
    f = tmp_path / "c.yaml"
    f.write_text("batch_sise: 4\n")
    _fails(capsys, ["--config", str(f)], f"unknown config key 'batch_sise' in {f}: did you mean batch_size?")


def test_validate_parses_as_the_trainer_does(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("model: baby\nmax_iters: 50\n")
    # The same order as on the instance: the file, then the flags (which win).
    cfg = config_mod.validate(str(f), ["--max-iters", "7"])
    assert cfg == load_config(["--config", str(f), "--max-iters", "7"])
    assert (cfg.model, cfg.max_iters) == ("baby", 7)
    with pytest.raises(ConfigError, match=r"max_iters must be int, got 'x' \(--set max_iters\)"):
        config_mod.validate(None, ["--max-iters", "x"], flag_label=lambda k: f"--set {k}")
    f.write_text("batch_size: many\n")
    with pytest.raises(ConfigError, match=f"batch_size must be int, got 'many' \\({f}\\)"):
        config_mod.validate(str(f), [])
    with pytest.raises(ConfigError, match="unrecognized arguments: --help"):
        config_mod.validate(None, ["--help"])  # refused, not printed with an exit
    with pytest.raises(ConfigError, match=r"grad_accum \(3\) must be a multiple of the world size \(2\)"):
        config_mod.validate(None, ["--grad-accum", "3"], world_size=2)
    assert config_mod.validate(None, ["--grad-accum", "4"], world_size=2).grad_accum == 4

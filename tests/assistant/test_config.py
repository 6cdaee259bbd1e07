"""Settings: file < DEMI_* environment < flags, each value with the place it came from."""

from __future__ import annotations

import logging

import pytest

from demi.assistant.config import ConfigFileError, config_path, data_dir, load_config


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_and_sources(tmp_path):
    cfg = load_config({}, environ={}, path=tmp_path / "none.toml")
    assert cfg["complete.max_tokens"] == 64 and cfg["model"] is None and cfg["history"] is True
    assert set(cfg.sources.values()) == {"default"}
    assert cfg.as_dict()["file_exists"] is False


def test_file_env_flag_precedence(tmp_path):
    f = write(
        tmp_path / "config.toml",
        'model = "from-file"\nserver = "http://file:1"\n[complete]\nmax_tokens = 32\ncontext_tokens = 512\n',
    )
    env = {"DEMI_SERVER": "http://env:2", "DEMI_COMPLETE_MAX_TOKENS": "16"}
    cfg = load_config({"model": "from-flag", "complete.max_tokens": None}, environ=env, path=f)
    assert cfg["model"] == "from-flag" and cfg.sources["model"] == "flag --model"
    assert cfg["server"] == "http://env:2" and cfg.sources["server"] == "env DEMI_SERVER"
    assert cfg["complete.max_tokens"] == 16 and cfg.sources["complete.max_tokens"] == "env DEMI_COMPLETE_MAX_TOKENS"
    assert cfg["complete.context_tokens"] == 512 and cfg.sources["complete.context_tokens"] == f"config {f}"


def test_secrets_are_masked(tmp_path):
    cfg = load_config({}, environ={"DEMI_API_KEY": "sk-secret"}, path=tmp_path / "x.toml")
    row = next(r for r in cfg.describe() if r["key"] == "api_key")
    assert row["value"] == "***" and "sk-secret" not in str(cfg.as_dict())


@pytest.mark.parametrize(
    "text, message",
    [
        ("model = [", "not valid TOML"),
        ("[complete]\nmax_tokens = 'many'\n", "complete.max_tokens must be int"),
        ("[explain]\nlead = 'sometimes'\n", "explain.lead must be one of auto, facts, model"),
        ("history = 3\n", "history must be bool"),
    ],
)
def test_bad_files_are_one_clear_error(tmp_path, text, message):
    f = write(tmp_path / "config.toml", text)
    with pytest.raises(ConfigFileError, match=message):
        load_config({}, environ={}, path=f)


def test_bad_env_value_names_the_variable(tmp_path):
    with pytest.raises(ConfigFileError, match="environment DEMI_DB_TIMEOUT: db_timeout must be float"):
        load_config({}, environ={"DEMI_DB_TIMEOUT": "soon"}, path=tmp_path / "x.toml")


def test_unknown_keys_warn_and_are_ignored(tmp_path, caplog):
    f = write(tmp_path / "config.toml", "colour = 'blue'\n")
    with caplog.at_level(logging.WARNING, logger="demi"):
        load_config({}, environ={}, path=f)
    assert "unknown setting 'colour'" in caplog.text


def test_paths_follow_platformdirs_and_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("DEMI_CONFIG", raising=False)
    monkeypatch.delenv("DEMI_DATA_DIR", raising=False)
    assert config_path() == tmp_path / "cfg" / "demi" / "config.toml"
    assert data_dir() == tmp_path / "data" / "demi"
    assert config_path({"DEMI_CONFIG": str(tmp_path / "other.toml")}) == tmp_path / "other.toml"
    cfg = load_config({}, environ={"DEMI_DATA_DIR": str(tmp_path / "d2")}, path=tmp_path / "x.toml")
    assert data_dir(cfg) == tmp_path / "d2"


def test_cache_reuse_setting_defaults_and_reads_its_environment_variable(tmp_path):
    from demi.assistant.config import DEFAULT_CACHE_REUSE, SETTINGS

    setting = next(s for s in SETTINGS if s.key == "cache_reuse")
    assert setting.default == DEFAULT_CACHE_REUSE == 16 and setting.env == "DEMI_CACHE_REUSE"
    missing = tmp_path / "none.toml"
    assert load_config(environ={}, path=missing)["cache_reuse"] == 16
    assert load_config(environ={"DEMI_CACHE_REUSE": "0"}, path=missing)["cache_reuse"] == 0

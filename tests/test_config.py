"""CheckpointConfig: reading params.yaml, validation, presets and the policies it builds."""

from __future__ import annotations

import dataclasses

import pytest

from expckpt.policy.config import REGIMES, CheckpointConfig
from expckpt.errors import ConfigError
from expckpt.policy.policy import (
    AnyOf,
    CheckpointInfo,
    KeepAll,
    KeepBest,
    KeepLast,
    KeepNewest,
)
from expckpt.policy.saving import (
    AnyOfSave,
    EveryMinutes,
    EverySteps,
    Never,
    OnEvents,
)


def test_defaults():
    for config in (CheckpointConfig(), CheckpointConfig.from_params(None), CheckpointConfig.from_params({})):
        assert config == CheckpointConfig(
            every=1,
            keep_last=10,
            keep_best=0,
            mode="max",
            async_save=False,
            on_divergence="warn",
            divergence_steps=3,
            divergence_metric="loss",
        )


def test_frozen_and_keyword_only():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CheckpointConfig().every = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        CheckpointConfig(1)  # type: ignore[misc]


def test_from_params_reads_every_key():
    config = CheckpointConfig.from_params(
        {
            "every": 2,
            "every_minutes": 15,
            "keep_last": None,
            "keep_best": 2,
            "monitor": "val_loss",
            "mode": "min",
            "async": True,
            "on_divergence": "stop",
            "divergence_steps": 4,
            "divergence_metric": "train_loss",
            "patience": 7,
            "when_busy": "skip",
        }
    )
    assert config == CheckpointConfig(
        every=2,
        every_minutes=15,
        keep_last=None,
        keep_best=2,
        monitor="val_loss",
        mode="min",
        async_save=True,
        on_divergence="stop",
        divergence_steps=4,
        divergence_metric="train_loss",
        patience=7,
        when_busy="skip",
    )


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"regime": "short", "monitor": "acc"}, {"every": 1, "keep_last": 1, "keep_best": 1}),
        ({"regime": "normal", "monitor": "acc"}, {"every": 1, "keep_last": 10, "keep_best": 1}),
        ({"regime": "long", "monitor": "acc"}, {"every": 5, "every_minutes": 30, "keep_last": 20, "keep_best": 3}),
        # without a monitor a preset's keep_best becomes 0
        ({"regime": "long"}, {"every": 5, "every_minutes": 30, "keep_last": 20, "keep_best": 0}),
        ({"regime": "short", "monitor": None}, {"keep_last": 1, "keep_best": 0}),
        # explicit keys override the preset
        (
            {"regime": "long", "monitor": "acc", "keep_last": 2, "every_minutes": None},
            {"every": 5, "every_minutes": None, "keep_last": 2, "keep_best": 3},
        ),
        ({"regime": "normal", "monitor": "acc", "keep_best": 0}, {"keep_best": 0}),
        # every: 0 turns off the preset's time rule too
        ({"regime": "long", "every": 0}, {"every": 0, "every_minutes": None}),
    ],
)
def test_regimes(section, expected):
    config = CheckpointConfig.from_params(section)
    assert config.regime == section["regime"]
    for name, value in expected.items():
        assert getattr(config, name) == value, name


def test_regime_table_is_read_only():
    assert set(REGIMES) == {"short", "normal", "long"}
    with pytest.raises(TypeError):
        REGIMES["long"]["every"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({"every": -1}, r"checkpoint\.every must be a non-negative integer, got -1; .*0 to turn checkpointing off"),
        ({"every": 2.5}, r"checkpoint\.every must be .*got 2\.5 \(float\)"),
        ({"every": True}, r"checkpoint\.every must be .*got True \(bool\)"),
        ({"every_minutes": 0}, r"checkpoint\.every_minutes must be a positive number.*got 0"),
        ({"every_minutes": "30"}, r"checkpoint\.every_minutes .*got '30' \(str\)"),
        ({"every_minutes": False}, r"checkpoint\.every_minutes .*got False \(bool\)"),
        ({"every": 0, "every_minutes": 30}, r"checkpoint\.every_minutes is 30 but checkpoint\.every is 0"),
        (
            {"keep_last": 0},
            r"checkpoint\.keep_last must be a positive integer or null \(keep all\), got 0; "
            r"use 1 to keep only the newest",
        ),
        ({"keep_last": "ten"}, r"checkpoint\.keep_last must be .*got 'ten' \(str\)"),
        ({"keep_last": True}, r"checkpoint\.keep_last must be .*got True \(bool\)"),
        ({"keep_best": -1}, r"checkpoint\.keep_best must be a non-negative integer, got -1"),
        ({"keep_best": 1}, r"checkpoint\.monitor is required when checkpoint\.keep_best is 1"),
        ({"patience": 5}, r"checkpoint\.monitor is required when checkpoint\.patience is 5"),
        ({"patience": 0, "monitor": "acc"}, r"checkpoint\.patience must be a positive integer or null, got 0"),
        ({"monitor": ""}, r"checkpoint\.monitor must be a metric name or null, got '' \(str\)"),
        ({"monitor": 3}, r"checkpoint\.monitor must be a metric name or null, got 3"),
        ({"mode": "up"}, r"checkpoint\.mode must be one of 'min', 'max', got 'up' \(str\); use 'max'"),
        ({"regime": "huge"}, r"checkpoint\.regime must be one of 'short', 'normal', 'long', got 'huge'"),
        ({"regime": ["long"]}, r"checkpoint\.regime must be one of .*got \['long'\] \(list\)"),
        ({"async": "yes"}, r"checkpoint\.async must be true or false, got 'yes' \(str\)"),
        (
            {"when_busy": "block"},
            r"checkpoint\.when_busy must be one of 'wait', 'skip', got 'block' \(str\);"
            r" use 'wait' to pause training .* or 'skip' to skip checkpoints that come too soon",
        ),
        ({"on_divergence": "halt"}, r"checkpoint\.on_divergence must be one of 'warn', 'stop', got 'halt'"),
        ({"divergence_steps": 1}, r"checkpoint\.divergence_steps must be an integer >= 2, got 1"),
        ({"divergence_metric": ""}, r"checkpoint\.divergence_metric must be a metric name"),
        (
            {"keep_lats": 3},
            r"checkpoint\.keep_lats is not a checkpoint setting; did you mean 'keep_last'\? "
            r"valid keys: async, divergence_metric, ",
        ),
        ({"async_save": True}, r"checkpoint\.async_save is not a checkpoint setting; did you mean 'async'\?"),
        ({"zzz": 1}, r"checkpoint\.zzz is not a checkpoint setting; valid keys: .*keep_best, keep_last"),
        ({1: 1}, r"checkpoint\.1 is not a checkpoint setting"),
    ],
)
def test_invalid_params(section, match):
    with pytest.raises(ConfigError, match=match) as info:
        CheckpointConfig.from_params(section)
    assert info.value.key is not None and info.value.key.startswith("checkpoint.")


def test_error_carries_key_and_value():
    with pytest.raises(ConfigError) as info:
        CheckpointConfig.from_params({"async": "yes"})
    assert (info.value.key, info.value.value) == ("checkpoint.async", "yes")


def test_section_must_be_a_mapping():
    with pytest.raises(ConfigError, match=r"checkpoint must be a mapping .*got \[1\] \(list\)"):
        CheckpointConfig.from_params([1])  # type: ignore[arg-type]


def test_constructor_validates_too():
    with pytest.raises(ConfigError, match=r"checkpoint\.keep_last .*got 0"):
        CheckpointConfig(keep_last=0)


@pytest.mark.parametrize(
    ("section", "policy"),
    [
        ({}, AnyOfSave(policies=(EverySteps(n=1), OnEvents()))),
        ({"every": 5}, AnyOfSave(policies=(EverySteps(n=5), OnEvents()))),
        ({"every": 0}, Never()),
        (
            {"every": 2, "every_minutes": 30},
            AnyOfSave(policies=(EverySteps(n=2), OnEvents(), EveryMinutes(minutes=30, start=100.0))),
        ),
    ],
)
def test_save_policy(section, policy):
    assert CheckpointConfig.from_params(section).save_policy(start=100.0) == policy


@pytest.mark.parametrize(
    ("section", "policy"),
    [
        ({}, AnyOf(policies=(KeepLast(n=10), KeepNewest()))),
        ({"keep_last": None}, AnyOf(policies=(KeepAll(), KeepNewest()))),
        (
            {"keep_last": 1, "keep_best": 2, "monitor": "val_loss", "mode": "min"},
            AnyOf(policies=(KeepLast(n=1), KeepBest(k=2, metric="val_loss", mode="min"), KeepNewest())),
        ),
    ],
)
def test_keep_policy(section, policy):
    assert CheckpointConfig.from_params(section).keep_policy() == policy


def test_best_only_config_never_evicts_newest():
    config = CheckpointConfig.from_params({"regime": "short", "monitor": "acc"})
    checkpoints = [CheckpointInfo(step=s, metrics={"acc": a}) for s, a in [(0, 0.9), (1, 0.5), (2, float("nan"))]]
    assert config.keep_policy().should_keep(checkpoints) == [True, False, True]


@pytest.mark.parametrize(
    ("section", "logged", "match"),
    [
        (
            {"monitor": "accc"},
            {"acc", "loss"},
            r"^checkpoint\.monitor is 'accc', which this run does not log \(it logs: acc, loss\); "
            r"set checkpoint\.monitor to one of them \(did you mean 'acc'\?\)$",
        ),
        (
            {"monitor": "f1"},
            ["loss"],
            r"checkpoint\.monitor is 'f1'.*\(it logs: loss\); set checkpoint\.monitor to one of them$",
        ),
        ({"monitor": "acc"}, [], r"\(it logs: nothing\)"),
        ({"divergence_metric": "val_loss"}, ["loss"], r"^checkpoint\.divergence_metric is 'val_loss'"),
        (
            {"on_divergence": "stop"},
            ["train_loss"],
            r"^checkpoint\.divergence_metric is 'loss'.*\(it logs: train_loss\)",
        ),
    ],
)
def test_check_metrics_rejects(section, logged, match):
    with pytest.raises(ConfigError, match=match):
        CheckpointConfig.from_params(section).check_metrics(logged)


@pytest.mark.parametrize(
    ("section", "logged"),
    [
        ({}, []),  # default divergence metric with on_divergence warn is not enforced
        ({"monitor": "acc"}, ["acc", "loss"]),
        ({"on_divergence": "stop", "divergence_metric": "nll"}, ["nll"]),
    ],
)
def test_check_metrics_accepts(section, logged):
    CheckpointConfig.from_params(section).check_metrics(logged)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (
            "--upload-pack=touch x",
            r"checkpoint\.push must be the name of a Git remote or null, got '--upload-pack=touch x' "
            r"\(str\); use a name `git remote -v` lists, e\.g\. origin",
        ),
        ("", r"checkpoint\.push must be the name of a Git remote or null, got '' \(str\)"),
        ("https://example.invalid/x.git", r"checkpoint\.push must be the name of a Git remote .*got 'https://"),
        ("my remote", r"checkpoint\.push must be .*got 'my remote' \(str\)"),
        (True, r"checkpoint\.push must be the name of a Git remote or null, got True \(bool\)"),
    ],
)
def test_push_must_name_a_git_remote(value, match):
    with pytest.raises(ConfigError, match=match) as info:
        CheckpointConfig.from_params({"push": value})
    assert info.value.key == "checkpoint.push"


@pytest.mark.parametrize("name", ["origin", "team-s3", "up.stream", "team/ml"])
def test_push_takes_a_remote_name(name):
    assert CheckpointConfig.from_params({"push": name}).push == name
    assert CheckpointConfig.from_params({}).push is None

"""The constraints of config keys (see `retinanet.config`), declared beside each field.

A field is declared `name: type = setting(default, rule, ...)`: the rules live in the field's
metadata, so that the type, the default and the allowed values of a key are read in one line.
`violations(config)` checks every field of every section (defaults included), then the
cross-field rules, and returns the messages in that order; each message names the dotted key.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Callable

_RULES = "rules"  # the key of a field's metadata that holds its rules


@dataclass(frozen=True)
class Rule:
    """A condition on one value and the requirement it states when broken ("must be at least 1")."""

    holds: Callable[[object], bool]
    requirement: str


@dataclass(frozen=True)
class CrossFieldRule:
    """A condition on several keys of the whole config. The first key is the one the message is about;
    the message shows the values of all of them."""

    keys: tuple[str, ...]
    holds: Callable[[object], bool]
    requirement: str


def setting(default, *rules: Rule):
    """A dataclass field with a default and the rules its value must meet."""
    return dataclasses.field(default=default, metadata={_RULES: rules})


def at_least(minimum) -> Rule:
    return Rule(lambda value: value >= minimum, f"must be at least {minimum}")


def positive() -> Rule:
    return Rule(lambda value: value > 0, "must be positive")


def within(low, high, *, low_open: bool = False, high_open: bool = False) -> Rule:
    """low <= value <= high, either end open on request; stated as an interval, e.g. "in [0, 1)"."""

    def holds(value) -> bool:
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return above and below

    return Rule(holds, f"must be in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")


def one_of(choices: tuple[str, ...]) -> Rule:
    return Rule(lambda value: value in choices, f"must be one of {', '.join(choices)}")


class TableChoice:
    """A Rule (`holds`, `requirement`) whose allowed words are the keys of a component's name table,
    `module.table` (e.g. retinanet.detection.losses.BOX_LOSSES). The table is imported when a value
    is first checked: the components import TensorFlow, which importing the config must not."""

    def __init__(self, module: str, table: str):
        self.module, self.table = module, table

    def choices(self) -> tuple[str, ...]:
        return tuple(getattr(importlib.import_module(self.module), self.table))

    def holds(self, value) -> bool:
        return value in self.choices()

    @property
    def requirement(self) -> str:
        return f"must be one of {', '.join(self.choices())}"


def not_empty() -> Rule:
    return Rule(lambda value: value != "", "must not be empty")


def each(rule: Rule) -> Rule:
    """`rule` for every item of a list."""
    return Rule(lambda values: all(rule.holds(value) for value in values), f"every value {rule.requirement}")


def increasing() -> Rule:
    return Rule(lambda values: all(a < b for a, b in zip(values, values[1:])), "must be strictly increasing")


def ordered_pair() -> Rule:
    """A (low, high) range of positive factors."""
    return Rule(lambda pair: 0 < pair[0] <= pair[1], "needs 0 < low <= high")


def _value(config, key: str):
    for name in key.split("."):
        config = getattr(config, name)
    return config


def _field_violations(section, prefix: str) -> list[str]:
    messages = []
    for field in dataclasses.fields(section):
        key = f"{prefix}.{field.name}" if prefix else field.name
        value = getattr(section, field.name)
        if dataclasses.is_dataclass(value):
            messages += _field_violations(value, key)
            continue
        messages += [f"{key}: {rule.requirement}, got {value!r}"
                     for rule in field.metadata.get(_RULES, ()) if not rule.holds(value)]
    return messages


def violations(config, cross_field_rules: tuple[CrossFieldRule, ...] = ()) -> list[str]:
    """Every broken rule of `config`, each as "dotted.key: requirement, got value"; the field rules
    first, then the cross-field ones (which may assume that the fields are in range)."""
    messages = _field_violations(config, "")
    if messages:
        return messages
    for rule in cross_field_rules:
        if not rule.holds(config):
            values = ", ".join(f"{key}={_value(config, key)!r}" for key in rule.keys)
            messages.append(f"{rule.keys[0]}: {rule.requirement} (got {values})")
    return messages

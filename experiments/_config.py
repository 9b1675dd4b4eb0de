"""Typed `key=value` command-line overrides of an experiment's config dataclass."""

import dataclasses
import types
import typing
from typing import Any

_TRUE = {"true", "1"}
_FALSE = {"false", "0"}
_NONE = {"none", "null"}


class OverrideError(ValueError):
    """A bad override; the message is one line and lists the valid keys."""


def type_name(annotation: Any) -> str:
    """`int`, `tuple[float, ...]`, `int | None`: how an annotation reads on the command line."""
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def field_types(config_type: type) -> dict[str, Any]:
    """The config fields (init=True) and their resolved annotations, in declaration order."""
    hints = typing.get_type_hints(config_type)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(config_type) if f.init}


def describe_fields(config_type: type) -> str:
    """`"steps: int, lr: float, ..."` for error messages."""
    return ", ".join(f"{k}: {type_name(t)}" for k, t in field_types(config_type).items())


def parse_value(text: str, annotation: Any) -> Any:
    """Parse one override value by its field's annotation.

    Supported: int, float, bool (true/false/1/0), str, `tuple[T, ...]` and `tuple[T1, T2]` as
    comma lists (optionally in parentheses or brackets; "" is the empty tuple), and `T | None`
    ("none").

    Raises:
        ValueError: the text does not parse as the annotation.

    Example:
        >>> parse_value("1,2,3", tuple[int, ...])
        (1, 2, 3)
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() in _NONE and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return parse_value(text, arg)
            except ValueError:
                pass
        raise ValueError(text)
    if origin is tuple:
        body = text.strip()
        if body[:1] + body[-1:] in ("()", "[]"):
            body = body[1:-1]
        items = [s.strip() for s in body.split(",")] if body.strip() else []
        if items and items[-1] == "":  # trailing comma, "(1,)"
            items = items[:-1]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(parse_value(s, args[0]) for s in items)
        if len(items) != len(args):
            raise ValueError(text)
        return tuple(parse_value(s, a) for s, a in zip(items, args, strict=True))
    if annotation is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(text)
    if annotation is int:
        return int(text.strip())
    if annotation is float:
        return float(text.strip())
    if annotation is str:
        return text
    raise ValueError(f"fields of type {type_name(annotation)} cannot be set from the command line")


def apply_overrides(cfg: Any, items: list[str], experiment: str) -> tuple[Any, dict[str, Any]]:
    """Apply `key=value` strings to a frozen config dataclass.

    Args:
        cfg: the scale's config instance.
        items: command-line strings "key=value".
        experiment: the experiment's name, for messages.

    Returns:
        (new config, {key: parsed value}).

    Raises:
        OverrideError: malformed item, unknown key or a value of the wrong type (one line,
            listing the valid keys with their types).

    Example:
        >>> apply_overrides(cfg, ["steps=100", "lr=0.1"], "toy")  # doctest: +SKIP
    """
    fields = field_types(type(cfg))
    valid = f"valid keys: {describe_fields(type(cfg))}"
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise OverrideError(f"override {item!r} is not key=value; {valid}")
        if key not in fields:
            raise OverrideError(
                f"unknown config key {key!r} for experiment {experiment!r}; {valid}"
            )
        annotation = fields[key]
        try:
            parsed[key] = parse_value(text, annotation)
        except ValueError:
            raise OverrideError(
                f"bad value for {key!r} in experiment {experiment!r}: expected "
                f"{type_name(annotation)}, got {text!r}; {valid}"
            ) from None
    try:
        new = dataclasses.replace(cfg, **parsed)
    except (TypeError, ValueError) as e:
        raise OverrideError(f"invalid config for experiment {experiment!r}: {e}") from None
    return new, parsed


def _bounds(key: str, annotation: Any, scale_values: list[Any]) -> tuple[float, str] | None:
    """The lower bound a numeric field keeps at every scale: (bound, what), or None."""
    if annotation not in (int, float) or not scale_values:
        return None
    values = [v for v in scale_values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(values) != len(scale_values):
        return None
    if annotation is int and min(values) >= 1:
        return 1, "an int >= 1"
    if min(values) >= 0:
        return 0, f"{'an int' if annotation is int else 'a number'} >= 0"
    return None


def check_overrides(
    parsed: dict[str, Any], scales: dict[str, Any], experiment: str, metadata: dict[str, Any]
) -> None:
    """Reject overridden numbers outside the range the experiment's scales use.

    A field may declare its own lower bound as `dataclasses.field(metadata={"min": 1})`;
    otherwise an int that is >= 1 at every scale (a count of steps, seeds, examples) must stay
    >= 1, and a number that is >= 0 at every scale must stay >= 0. Only the overridden fields
    are checked: the scales' own values are the experiment's.

    Args:
        parsed: `{key: value}` from `apply_overrides`.
        scales: the experiment's `{scale: config}`.
        experiment: the experiment's name, for messages.
        metadata: `{key: field metadata}` of the config dataclass.

    Raises:
        OverrideError: one line naming the key, the expected range and the value given.

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class C:
        ...     steps: int = 10
        >>> check_overrides({"steps": 5}, {"smoke": C(2), "quick": C()}, "toy", {})
        >>> check_overrides({"steps": -5}, {"smoke": C(2)}, "toy", {})
        Traceback (most recent call last):
        ...
        experiments._config.OverrideError: bad value for 'steps' in experiment 'toy': expected an int >= 1 (as at every scale), got -5
    """  # noqa: E501
    for key, value in parsed.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        declared = metadata.get(key, {}).get("min")
        if declared is not None:
            bound, what, why = declared, f">= {declared}", ""
        else:
            annotation = field_types(type(next(iter(scales.values()))))[key]
            found = _bounds(key, annotation, [getattr(c, key) for c in scales.values()])
            if found is None:
                continue
            (bound, what), why = found, " (as at every scale)"
        if not value >= bound:  # also rejects NaN
            raise OverrideError(
                f"bad value for {key!r} in experiment {experiment!r}: expected {what}{why}, "
                f"got {value!r}"
            )


def field_metadata(config_type: type) -> dict[str, Any]:
    """`{field name: its dataclasses metadata}` of a config dataclass."""
    return {f.name: dict(f.metadata) for f in dataclasses.fields(config_type)}

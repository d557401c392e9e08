"""The one cattrs converter, and the turning of its errors into ``key.path: reason``.

Policy files are written by people, so the converter is strict: unknown keys
are errors, and "5" is not an integer. cattrs collects every error of a file at
once (detailed validation); ``error_lines`` flattens its exception groups into
one line per problem.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, get_args, get_origin

import cattrs
from cattrs.errors import AttributeValidationNote, ClassValidationError, ForbiddenExtraKeysError
from cattrs.gen import make_dict_structure_fn

from meshnode.policy.models import DISCOVERY_BACKENDS, Discovery, Endpoint
from meshnode.policy.units import Address, Duration, LatencyDelay, Size

converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)


def _strict(kind: type, name: str) -> Any:
    def structure(value: object, _: type) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise ValueError(f"expected {name}, got {value!r}")
        if isinstance(value, kind) or (kind is float and isinstance(value, int)):
            return kind(value)
        raise ValueError(f"expected {name}, got {value!r}")

    return structure


converter.register_structure_hook(bool, _strict(bool, "true or false"))
converter.register_structure_hook(int, _strict(int, "an integer"))
converter.register_structure_hook(float, _strict(float, "a number"))
converter.register_structure_hook(str, _strict(str, "a string"))


def _structure_literal(value: object, kind: Any) -> Any:
    choices = get_args(kind)
    if value in choices:
        return value
    listed = ", ".join(f'"{choice}"' for choice in choices)
    raise ValueError(f"expected one of {listed}, got {value!r}")


def _is_literal(kind: Any) -> bool:
    return bool(get_origin(kind) is Literal)


converter.register_structure_hook_func(_is_literal, _structure_literal)


def _structure_name_or_number(value: object, _: object) -> str | int | None:
    """A port given by name or by number (``[discovery] port`` for Kubernetes)."""
    if value is None or (isinstance(value, (str, int)) and not isinstance(value, bool)):
        return value
    raise ValueError(f"expected a name or a number, got {value!r}")


converter.register_structure_hook(str | int | None, _structure_name_or_number)
converter.register_structure_hook(Duration, lambda value, _: Duration.parse(value))
converter.register_structure_hook(Address, lambda value, _: Address.parse(value))
converter.register_structure_hook(Size, lambda value, _: Size.parse(value))
converter.register_structure_hook(LatencyDelay, lambda value, _: LatencyDelay.parse(value))
# Unstructured (for /admin/policies) the way the files spell them.
converter.register_unstructure_hook(Duration, str)
converter.register_unstructure_hook(Address, str)
converter.register_unstructure_hook(Size, str)
converter.register_unstructure_hook(LatencyDelay, str)

_endpoint_table = make_dict_structure_fn(Endpoint, converter, _cattrs_forbid_extra_keys=True)


def _structure_endpoint(value: object, _: type) -> Endpoint:
    """An endpoint is an address string or an ``{address, weight, zone, metadata}`` table."""
    if isinstance(value, str):
        return Endpoint(Address.parse(value))
    if isinstance(value, dict):
        return _endpoint_table(value, Endpoint)
    raise ValueError(f'expected "host:port" or a table with "address", got {value!r}')


converter.register_structure_hook(Endpoint, _structure_endpoint)


def _structure_discovery(value: object, _: object) -> Discovery:
    """``[discovery]`` takes the keys of its ``backend`` (static when absent) and no others."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a table, got {value!r}")
    backend = value.get("backend", "static")
    kind = DISCOVERY_BACKENDS.get(backend) if isinstance(backend, str) else None
    if kind is None:
        listed = ", ".join(f'"{name}"' for name in DISCOVERY_BACKENDS)
        problem = ValueError(f"expected one of {listed}, got {backend!r}")
        problem.__notes__ = [AttributeValidationNote("backend", "backend", str)]
        raise ClassValidationError("discovery", [problem], dict)
    return converter.structure(value, kind)


converter.register_structure_hook_func(lambda kind: kind == Discovery, _structure_discovery)


def error_lines(exc: BaseException, path: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """Yield ``(key.path, reason)`` for every leaf error in a cattrs exception tree."""
    if isinstance(exc, ForbiddenExtraKeysError):
        for key in sorted(exc.extra_fields):
            yield _join(*path, key), "unknown key"
    elif isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from error_lines(sub, path + _note_path(sub))
    elif isinstance(exc, KeyError):
        yield _join(*path), "required key is missing"
    else:
        yield _join(*path), str(exc)


def _note_path(exc: BaseException) -> tuple[str, ...]:
    for note in getattr(exc, "__notes__", ()):
        name = getattr(note, "name", None)
        if name is not None:
            return (str(name),)
        index = getattr(note, "index", None)
        if index is not None:
            return (str(index),)
    return ()


def _join(*parts: str) -> str:
    return ".".join(parts) or "(top level)"

"""The base of every API type: camelCase names, strict fields, and cross-field rules.

A cross-field rule is written once and used twice: pydantic checks it in the operator, the
trainer and the CLI, and the CRD generator turns the same rule into a CEL
`x-kubernetes-validations` entry so the API server rejects the object before we see it.

A transition rule (an update compared with the stored object, CEL `oldSelf`) is written once too,
but only the API server can enforce it: pydantic parses one object and never sees the old one. It
goes to the CRD alone, and its Python twin answers the same question for whoever holds both
objects (`transition_errors`; the tests compare the two).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Self, get_args

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo


@dataclass(frozen=True)
class Rule:
    """A rule across the fields of one object, in CEL for the API server and Python for us."""

    cel: str
    message: str
    holds: Callable[[Any], bool]


def cel_raw_string(text: str) -> str:
    """`text` as a CEL raw string literal (r'...'), the way a regex must be written in a rule.

    In a plain CEL string a backslash starts an escape, and CEL defines no `\\.` nor `\\d`: Go's CEL,
    which the API server compiles rules with, refuses such a rule and with it the whole CRD. A raw
    string has no escapes, so it cannot hold its own quote or a line break: refused here instead."""
    if "'" in text or "\n" in text or "\r" in text:
        raise ValueError(f"{text!r} cannot be written as a CEL raw string r'...'")
    return f"r'{text}'"


def exactly_one_of(*fields: str) -> Rule:
    cel_terms = ", ".join(f"has(self.{f})" for f in fields)
    return Rule(
        cel=f"[{cel_terms}].filter(x, x).size() == 1",
        message=f"exactly one of {', '.join(fields)} must be set",
        holds=lambda obj: sum(_is_set(obj, f) for f in fields) == 1,
    )


def at_most_one_of(*fields: str) -> Rule:
    cel_terms = ", ".join(f"has(self.{f})" for f in fields)
    return Rule(
        cel=f"[{cel_terms}].filter(x, x).size() <= 1",
        message=f"at most one of {', '.join(fields)} may be set",
        holds=lambda obj: sum(_is_set(obj, f) for f in fields) <= 1,
    )


def requires(field: str, needed: str) -> Rule:
    return Rule(
        cel=f"!has(self.{field}) || has(self.{needed})",
        message=f"{needed} is required when {field} is set",
        holds=lambda obj: not _is_set(obj, field) or _is_set(obj, needed),
    )


def _is_set(obj: BaseModel, alias: str) -> bool:
    for name, info in type(obj).model_fields.items():
        if info.alias == alias or name == alias:
            return getattr(obj, name) is not None
    raise KeyError(alias)


@dataclass(frozen=True)
class TransitionRule:
    """A rule between the stored object (CEL `oldSelf`) and an update of it (`self`).

    The API server evaluates it on updates where the old value exists, never on create. It is
    emitted to the CRD only; `allows(old, new)` is its Python twin, on parsed objects.
    """

    cel: str
    message: str
    allows: Callable[[Any, Any], bool]
    field_path: str | None = None
    """The field the API server names in its error, relative to the object the rule is on."""


# CEL words Kubernetes only reaches escaped (`__namespace__`): a rule written with the plain name
# would not compile, so the generator refuses them rather than emit a CRD the API server rejects.
_CEL_RESERVED = frozenset(
    [
        "true",
        "false",
        "null",
        "in",
        "as",
        "break",
        "const",
        "continue",
        "else",
        "for",
        "function",
        "if",
        "import",
        "let",
        "loop",
        "package",
        "namespace",
        "return",
        "var",
        "void",
        "while",
    ]
)
_NO_DEFAULT = object()


def immutable_fields(
    model: type[BaseModel], *, mutable: Collection[str], owner: str, hint: str
) -> tuple[TransitionRule, ...]:
    """One transition rule per field of `model`: its value never changes once the object exists.

    `mutable` lists the dotted JSON paths that may change (e.g. runPolicy.suspend); the object holding
    one gets a rule per field below it instead of one for the whole. Every other field, including
    fields added to the model later, is immutable: forgetting to decide keeps the safe answer.
    `owner` is the model's own path in messages (spec), `hint` what the user should do instead.
    """
    unknown = [p for p in mutable if _field_info(model, p.split(".")) is None]
    if unknown:
        raise ValueError(f"mutable fields {unknown} are not fields of {model.__name__}")
    return tuple(
        _unchanged(path, names, info, f"{owner}.{'.'.join(path)} is immutable after creation: {hint}")
        for path, names, info in _immutable_leaves(model, (), (), set(mutable))
    )


def _immutable_leaves(
    model: type[BaseModel], prefix: tuple[str, ...], names: tuple[str, ...], mutable: set[str]
) -> Iterator[tuple[tuple[str, ...], tuple[str, ...], FieldInfo]]:
    """(JSON path, Python attribute path, field) of every field below model that is not mutable."""
    for name, info in model.model_fields.items():
        path = (*prefix, info.alias or name)
        dotted = ".".join(path)
        if path[-1] in _CEL_RESERVED:
            raise ValueError(f"{dotted} is a CEL reserved word: write its transition rule by hand")
        if dotted in mutable:
            continue
        holder = _model_type(info)
        if holder is not None and any(m.startswith(dotted + ".") for m in mutable):
            yield from _immutable_leaves(holder, path, (*names, name), mutable)
        else:
            yield path, (*names, name), info


def _model_type(info: FieldInfo) -> type[BaseModel] | None:
    for candidate in (info.annotation, *get_args(info.annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _field_info(model: type[BaseModel], path: list[str]) -> FieldInfo | None:
    for name, info in model.model_fields.items():
        if path[0] in (info.alias, name):
            if len(path) == 1:
                return info
            holder = _model_type(info)
            return _field_info(holder, path[1:]) if holder else None
    return None


def _scalar_default(info: FieldInfo) -> Any:
    """The field's default when the CRD schema carries it too (pydantic writes scalar defaults into
    the schema, so the API server fills them in), else _NO_DEFAULT."""
    default = info.get_default(call_default_factory=False)
    return default if isinstance(default, str | int | float | bool) else _NO_DEFAULT


def _unchanged(path: tuple[str, ...], names: tuple[str, ...], info: FieldInfo, message: str) -> TransitionRule:
    """`self.PATH` equals `oldSelf.PATH`, with absent values handled the way pydantic reads them."""
    dotted = ".".join(path)

    def present(root: str) -> str:
        checks = [f"has({root}.{'.'.join(path[: i + 1])})" for i in range(len(path))]
        return checks[0] if len(checks) == 1 else "(" + " && ".join(checks) + ")"

    default = _scalar_default(info)
    if len(path) == 1 and info.is_required():
        # Always there on both sides: plain equality.
        cel = f"self.{dotted} == oldSelf.{dotted}"
    elif default is not _NO_DEFAULT:
        # Absent means the default (the parent may be absent too: runPolicy below a mutable field), so
        # `runPolicy: {suspend: true}` added to a spec without runPolicy changes no backoffLimit.
        literal = json.dumps(default)
        cel = (
            f"({present('self')} ? self.{dotted} : {literal}) == ({present('oldSelf')} ? oldSelf.{dotted} : {literal})"
        )
    else:
        # Optional: setting, clearing and changing it are all changes. For an object or list pydantic
        # makes by default factory (output, resources), the Python twin reads absent as the default
        # while the API server sees `output: {}` appear: CEL refuses that no-op, never the reverse.
        now, before = present("self"), present("oldSelf")
        cel = f"{now} == {before} && (!{now} || self.{dotted} == oldSelf.{dotted})"
    return TransitionRule(
        cel=cel,
        message=message,
        allows=lambda old, new: _get(old, names) == _get(new, names),
        field_path="." + dotted,
    )


def _get(obj: Any, names: tuple[str, ...]) -> Any:
    """The value at names, None when it or a parent is absent (pydantic fills in every default)."""
    for name in names:
        if obj is None:
            return None
        obj = getattr(obj, name)
    return obj


def transition_errors(old: ApiModel, new: ApiModel) -> list[str]:
    """The messages of the transition rules that updating `old` to `new` breaks, those of nested
    objects included: what the API server would answer, computed on parsed objects."""
    if type(old) is not type(new):
        raise TypeError(f"cannot compare a {type(old).__name__} with a {type(new).__name__}")
    errors = [rule.message for rule in new.transition_rules if not rule.allows(old, new)]
    for name in type(new).model_fields:
        before, after = getattr(old, name), getattr(new, name)
        if isinstance(before, ApiModel) and isinstance(after, ApiModel):
            errors += transition_errors(before, after)
    return errors


def _add_rules(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    rules: tuple[Rule, ...] = getattr(cls, "rules", ())
    validations: list[dict[str, Any]] = [{"rule": r.cel, "message": r.message} for r in rules]
    for t in getattr(cls, "transition_rules", ()):
        validations.append(
            {"rule": t.cel, "message": t.message, **({"fieldPath": t.field_path} if t.field_path else {})}
        )
    if validations:
        schema["x-kubernetes-validations"] = validations


class ApiModel(BaseModel):
    """Base for all API objects: JSON names are camelCase, unknown fields are an error.

    Validation is as strict as the API server's schema: only the camelCase names the CRD knows (a
    snake_case spelling is an unknown field, not a silent synonym), no bool for an integer nor a string
    for a bool (the schema's `type: integer` refuses both), and only finite numbers (JSON has no others).
    Python code may still pass field names as keyword arguments (Resources(gpu_resource_name=...)):
    only data, which goes through model_validate, must use the JSON names.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        strict=True,
        allow_inf_nan=False,
        extra="forbid",
        use_attribute_docstrings=True,
        json_schema_extra=_add_rules,
    )
    rules: ClassVar[tuple[Rule, ...]] = ()
    transition_rules: ClassVar[tuple[TransitionRule, ...]] = ()
    """Checked by the API server on updates only (see TransitionRule); never when parsing."""

    data_by_name: ClassVar[bool] = False
    """Whether data (model_validate) may use Python field names too: never for what users write."""

    @classmethod
    def model_validate(cls, obj: Any, *, by_name: bool | None = None, **kwargs: Any) -> Self:
        return super().model_validate(obj, by_name=cls.data_by_name if by_name is None else by_name, **kwargs)

    @classmethod
    def model_validate_json(cls, json_data: str | bytes, *, by_name: bool | None = None, **kwargs: Any) -> Self:
        by_name = cls.data_by_name if by_name is None else by_name
        return super().model_validate_json(json_data, by_name=by_name, **kwargs)

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for rule in self.rules:
            if not rule.holds(self):
                raise ValueError(rule.message)
        return self

    def dump(self) -> dict[str, Any]:
        """The JSON form users write: camelCase, without unset optional fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class OpenModel(ApiModel):
    """An object that also takes arguments we pass through untouched (e.g. to a Keras constructor)."""

    model_config = ConfigDict(extra="allow")

    def extra_args(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def field_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    """`("model", "layers", 1, "type")` -> `spec.model.layers[1].type`, the way kubectl names fields."""
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(("function-", "tagged-union", "union")) or "[" in part:
            continue  # pydantic's names for union branches mean nothing to a user
        else:
            path += f".{part}" if path else part
    return path


def describe_errors(error: ValidationError, prefix: str = "spec", model: type[BaseModel] | None = None) -> str:
    """One line per problem, each starting with the field it concerns. With the `model` validated, an
    unknown field is named with the known one it most resembles (train_config -> trainConfig)."""
    lines = []
    for err in error.errors():
        loc = err["loc"]
        if err["type"] == "extra_forbidden" and loc and isinstance(loc[-1], str):
            key = loc[-1]
            hint = _closest(key, _known_fields(model, loc[:-1])) if model is not None else None
            lines.append(f"{field_path(prefix, loc)}: unknown field" + (f" (did you mean {hint}?)" if hint else ""))
            continue
        msg = err["msg"].removeprefix("Value error, ")
        path = field_path(prefix, loc)
        lines.append(f"{path}: {msg}" if path else msg)  # a whole-object rule names its fields itself
    return "; ".join(dict.fromkeys(lines))


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation holds, through Optional, Annotated, list and dict."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _known_fields(model: type[BaseModel] | None, loc: tuple[int | str, ...]) -> list[str]:
    """The JSON names of the object at `loc` below `model` (empty when the path leaves the models)."""
    models = [model] if model is not None else []
    for part in loc:
        if isinstance(part, int) or part.startswith(("function-", "tagged-union", "union")) or "[" in part:
            continue
        models = [
            m
            for holder in models
            for name, info in holder.model_fields.items()
            if part in (info.alias, name)
            for m in _models_in(info.annotation)
        ]
    return [info.alias or name for m in models for name, info in m.model_fields.items()]


def _closest(key: str, known: list[str]) -> str | None:
    if to_camel(key) in known:
        return to_camel(key)
    found = difflib.get_close_matches(key, known, n=1, cutoff=0.7)
    return found[0] if found else None

"""The base of every API type: camelCase names, strict fields, and cross-field rules.

A cross-field rule is written once and used twice: pydantic checks it in the operator, the
trainer and the CLI, and the CRD generator turns the same rule into a CEL
`x-kubernetes-validations` entry so the API server rejects the object before we see it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from pydantic.alias_generators import to_camel


@dataclass(frozen=True)
class Rule:
    """A rule across the fields of one object, in CEL for the API server and Python for us."""

    cel: str
    message: str
    holds: Callable[[Any], bool]


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


def _add_rules(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    rules: tuple[Rule, ...] = getattr(cls, "rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [{"rule": r.cel, "message": r.message} for r in rules]


class ApiModel(BaseModel):
    """Base for all API objects: JSON names are camelCase, unknown fields are an error."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        json_schema_extra=_add_rules,
    )
    rules: ClassVar[tuple[Rule, ...]] = ()

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


def describe_errors(error: ValidationError, prefix: str = "spec") -> str:
    """One line per problem, each starting with the field it concerns."""
    lines = []
    for err in error.errors():
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{field_path(prefix, err['loc'])}: {msg}")
    return "; ".join(dict.fromkeys(lines))

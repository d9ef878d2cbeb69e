"""What the API server checks when a v1 CustomResourceDefinition is created or updated, as a pure function.

Written after k8s.io/apiextensions-apiserver (pkg/apis/apiextensions/validation/validation.go,
pkg/apiserver/schema/validation.go, pkg/apiserver/schema/defaulting/validation.go,
pkg/apiserver/schema/cel/validation.go ValidFieldPath), for what a CRD of ours can get wrong: a real
server refuses the whole CRD for any of these, so `helm install` fails before the operator starts.

Where this is weaker than the server, on purpose: CEL is parsed by `common-expression-language` (its
grammar is Go's, so a bad escape or token fails here too), but has no type checker; in its place
`self.a.b` selections are looked up in the schema, and at the root only metadata.name and
metadata.generateName may be read. CEL cost estimates are left to tests/operator/api/test_immutable_spec.py.
Regexes (`pattern`, CEL `matches`) are compiled by Python's `re`, not RE2.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import cel
import jsonschema

REASONS = frozenset({"FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"})
OPENAPI_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object"})
COLUMN_TYPES = frozenset({"integer", "number", "string", "boolean", "date"})
COLUMN_FORMATS = frozenset({"int32", "int64", "float", "double", "byte", "date", "date-time", "password"})
# With the status subresource on, the root schema may hold only these (validation.go allowedFieldsAtRootSchema).
ROOT_KEYS_WITH_STATUS = frozenset(
    {
        "description",
        "type",
        "format",
        "title",
        "maximum",
        "exclusiveMaximum",
        "minimum",
        "exclusiveMinimum",
        "maxLength",
        "minLength",
        "pattern",
        "maxItems",
        "minItems",
        "uniqueItems",
        "multipleOf",
        "required",
        "items",
        "properties",
        "externalDocs",
        "example",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-validations",
    }
)
UNSUPPORTED = {
    "$ref": "$ref is not supported",
    "id": "id is not supported",
    "additionalItems": "additionalItems is not supported",
    "patternProperties": "patternProperties is not supported",
    "definitions": "definitions is not supported",
    "dependencies": "dependencies is not supported",
}
# Under anyOf/allOf/oneOf/not only value validations may stand: what shapes a value must be outside them.
NOT_IN_JUNCTORS = (
    "type",
    "default",
    "title",
    "description",
    "nullable",
    "additionalProperties",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type",
    "x-kubernetes-map-type",
)
INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]
META_FIELDS = ("metadata", "apiVersion", "kind")

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# `self.a.b` and `oldSelf.a.b`: the fields a rule selects; a name followed by `(` is a method call.
_SELECTION = re.compile(r"\b(self|oldSelf)((?:\s*\.\s*[A-Za-z_][A-Za-z0-9_]*)+)(\s*\()?")


def _dns1035(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= 63 and bool(_DNS1035_LABEL.match(value))


def crd_problems(crd: dict[str, Any]) -> list[str]:
    """Why the API server would refuse this apiextensions.k8s.io/v1 CRD, one `field: problem` each; []: none."""
    problems: list[str] = []
    if crd.get("apiVersion") != "apiextensions.k8s.io/v1" or crd.get("kind") != "CustomResourceDefinition":
        return [f"not an apiextensions.k8s.io/v1 CustomResourceDefinition: {crd.get('apiVersion')}/{crd.get('kind')}"]
    spec = crd.get("spec") or {}
    problems += _names(crd, spec)
    if spec.get("preserveUnknownFields"):
        problems.append("spec.preserveUnknownFields: must be false (structural schemas prune unknown fields)")
    versions = spec.get("versions") or []
    if not versions:
        problems.append("spec.versions: Required")
    names = [v.get("name") for v in versions]
    if len(set(names)) != len(names):
        problems.append("spec.versions: must contain unique version names")
    if sum(bool(v.get("storage")) for v in versions) != 1:
        problems.append("spec.versions: must have exactly one version marked as storage version")
    for i, version in enumerate(versions):
        problems += _version(version, f"spec.versions[{i}]")
    return problems


def _names(crd: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    group, names = spec.get("group") or "", spec.get("names") or {}
    if not group:
        problems.append("spec.group: Required")
    elif not _DNS1123_SUBDOMAIN.match(group) or "." not in group:
        problems.append(f"spec.group: {group!r} must be a DNS subdomain with at least one dot")
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        problems.append(f"spec.scope: {spec.get('scope')!r} must be Namespaced or Cluster")
    for key in ("plural", "singular", "kind", "listKind"):
        if not names.get(key):
            problems.append(f"spec.names.{key}: Required")
    for key in ("plural", "singular"):
        if names.get(key) and not _dns1035(names[key]):
            problems.append(f"spec.names.{key}: {names[key]!r} must be a DNS-1035 label")
    for key in ("kind", "listKind"):
        if names.get(key) and not _dns1035(str(names[key]).lower()):
            problems.append(f"spec.names.{key}: {names[key]!r} may have mixed case, but must be a DNS-1035 label")
    if names.get("kind") and names.get("kind") == names.get("listKind"):
        problems.append("spec.names.listKind: kind and listKind may not be the same")
    for key in ("shortNames", "categories"):
        for i, value in enumerate(names.get(key) or []):
            if not _dns1035(value):
                problems.append(f"spec.names.{key}[{i}]: {value!r} must be a DNS-1035 label")
    name = (crd.get("metadata") or {}).get("name")
    if name != f"{names.get('plural')}.{group}":
        problems.append(f'metadata.name: {name!r} must be spec.names.plural+"."+spec.group')
    return problems


def _version(version: dict[str, Any], path: str) -> list[str]:
    problems: list[str] = []
    if not _dns1035(version.get("name")):
        problems.append(f"{path}.name: {version.get('name')!r} must be a DNS-1035 label")
    subresources = version.get("subresources") or {}
    schema = (version.get("schema") or {}).get("openAPIV3Schema")
    if schema is None:
        problems.append(f"{path}.schema.openAPIV3Schema: Required")
    else:
        problems += _root_schema(schema, f"{path}.schema.openAPIV3Schema", "status" in subresources)
    for i, column in enumerate(version.get("additionalPrinterColumns") or []):
        problems += _column(column, f"{path}.additionalPrinterColumns[{i}]")
    scale = subresources.get("scale")
    if scale is not None:
        for key, prefixes in (
            ("specReplicasPath", (".spec.",)),
            ("statusReplicasPath", (".status.",)),
            ("labelSelectorPath", (".spec.", ".status.")),
        ):
            value = scale.get(key)
            if not value:
                if key != "labelSelectorPath":
                    problems.append(f"{path}.subresources.scale.{key}: Required")
            elif not value.startswith(prefixes):
                problems.append(f"{path}.subresources.scale.{key}: {value!r} must be a json path under {prefixes}")
    return problems


def _column(column: dict[str, Any], path: str) -> list[str]:
    problems: list[str] = []
    if not column.get("name"):
        problems.append(f"{path}.name: Required")
    if column.get("type") not in COLUMN_TYPES:
        problems.append(f"{path}.type: {column.get('type')!r} must be one of {sorted(COLUMN_TYPES)}")
    if column.get("format") and column["format"] not in COLUMN_FORMATS:
        problems.append(f"{path}.format: {column['format']!r} must be one of {sorted(COLUMN_FORMATS)}")
    json_path = column.get("jsonPath") or ""
    if not json_path.startswith("."):
        problems.append(f"{path}.jsonPath: {json_path!r} must be a simple json path starting with .")
    elif (problem := _json_path_problem(json_path)) is not None:
        # Stricter than the create check, which looks at the leading dot only: kubectl's table printer
        # parses the path, and a malformed one breaks `kubectl get` for the kind.
        problems.append(f"{path}.jsonPath: {json_path!r}: {problem}")
    return problems


def _json_path_problem(path: str) -> str | None:
    """Why a printer column's JSONPath (.a.b, .a[0], .a[?(@.x=="y")].b) is malformed, or None."""
    depth, quote, previous = 0, "", ""
    for char in path:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                return "unbalanced ]"
        elif char == "." and previous == "." and depth == 0:
            return "empty field name"
        previous = char
    if quote:
        return "unterminated string"
    if depth:
        return "unbalanced ["
    if path.endswith(".") and path != ".":
        return "ends with ."
    return None


def _root_schema(schema: dict[str, Any], path: str, status: bool) -> list[str]:
    problems: list[str] = []
    if schema.get("type") != "object":
        problems.append(f"{path}.type: must be object at the root")
    if schema.get("nullable"):
        problems.append(f"{path}.nullable: cannot be true at the root")
    if "additionalProperties" in schema:
        problems.append(f"{path}.additionalProperties: must not be used at the root")
    if status and (extra := sorted(set(schema) - ROOT_KEYS_WITH_STATUS)):
        problems.append(f"{path}: only {sorted(ROOT_KEYS_WITH_STATUS)} are allowed at the root with /status ({extra})")
    problems += _node(schema, path, _Context(root=schema))
    return problems


class _Context:
    """Where a node sits: what the checks below depend on besides the node itself."""

    def __init__(
        self,
        *,
        root: dict[str, Any],
        level: str = "root",
        in_meta: bool = False,
        uncorrelatable: str | None = None,
        defaults_forbidden: str | None = None,
    ) -> None:
        self.root, self.level, self.in_meta = root, level, in_meta
        self.uncorrelatable = uncorrelatable  # the path of a list or atomic map above: oldSelf is meaningless here
        self.defaults_forbidden = defaults_forbidden

    def child(self, level: str, **changes: Any) -> _Context:
        values = {
            "root": self.root,
            "level": level,
            "in_meta": self.in_meta,
            "uncorrelatable": self.uncorrelatable,
            "defaults_forbidden": self.defaults_forbidden,
        }
        return _Context(**{**values, **changes})


def _node(node: Any, path: str, ctx: _Context) -> list[str]:
    if not isinstance(node, dict):
        return [f"{path}: must be a schema object"]
    problems: list[str] = []
    kind = node.get("type")
    int_or_string = bool(node.get("x-kubernetes-int-or-string"))
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if kind is not None and kind not in OPENAPI_TYPES:
        problems.append(f"{path}.type: {kind!r} is not one of {sorted(OPENAPI_TYPES)} (nullable: true for null)")
    if kind is None and not int_or_string and not preserve:
        where = {"root": "at the root", "items": "for specified array items", "field": "for specified object fields"}
        problems.append(f"{path}.type: must not be empty {where[ctx.level]} (not a structural schema)")
    if preserve is not None and preserve is not True:
        problems.append(f"{path}.x-kubernetes-preserve-unknown-fields: must be true or undefined")
    if int_or_string and preserve:
        problems.append(f"{path}.x-kubernetes-preserve-unknown-fields: must be false if x-kubernetes-int-or-string")
    for key, message in UNSUPPORTED.items():
        if key in node:
            problems.append(f"{path}.{key}: {message}")
    if node.get("uniqueItems"):
        problems.append(f"{path}.uniqueItems: cannot be true (quadratic); use x-kubernetes-list-type: set")
    if "pattern" in node:
        try:
            re.compile(node["pattern"])
        except re.error as exc:
            problems.append(f"{path}.pattern: must be a valid regular expression: {exc}")
    problems += _junctors(node, path)
    problems += _lists_and_maps(node, path)
    problems += _default(node, path, ctx)
    problems += _validations(node, path, ctx)

    properties = node.get("properties") or {}
    additional = node.get("additionalProperties")
    if additional is not None and properties and additional is not True:
        problems.append(f"{path}.additionalProperties: additionalProperties and properties are mutual exclusive")
    if kind == "array" and "items" not in node:
        problems.append(f"{path}.items: must be specified for type array")
    for name, sub in properties.items():
        sub_ctx = ctx.child("field")
        if node.get("x-kubernetes-map-type") == "atomic":
            sub_ctx = sub_ctx.child("field", uncorrelatable=ctx.uncorrelatable or path)
        if ctx.level == "root" and name in META_FIELDS:
            sub_ctx = sub_ctx.child("field", in_meta=True, defaults_forbidden=f"in top-level {name}")
            problems += _root_meta(name, sub, f"{path}.properties[{name}]")
        problems += _node(sub, f"{path}.properties[{name}]", sub_ctx)
    if isinstance(additional, dict):
        sub_ctx = ctx.child("field")
        if ctx.in_meta:
            forbidden = "inside additionalProperties applying to object metadata"
            sub_ctx = sub_ctx.child("field", defaults_forbidden=forbidden)
        problems += _node(additional, f"{path}.additionalProperties", sub_ctx)
    if "items" in node:
        items = node["items"]
        if isinstance(items, list):
            problems.append(f"{path}.items: must be a schema object and not an array")
        else:
            uncorrelatable = ctx.uncorrelatable
            if node.get("x-kubernetes-list-type") != "map":
                uncorrelatable = uncorrelatable or path
            problems += _node(items, f"{path}.items", ctx.child("items", uncorrelatable=uncorrelatable))
    return problems


def _root_meta(name: str, node: Any, path: str) -> list[str]:
    """At the root, metadata may only restrict name and generateName; apiVersion and kind are strings."""
    if not isinstance(node, dict):
        return []
    if name != "metadata":
        return [] if node.get("type") == "string" else [f"{path}.type: must be string"]
    problems = [] if node.get("type") == "object" else [f"{path}.type: must be object"]
    rest = {k: v for k, v in node.items() if k not in ("type", "properties", "default")}
    extra = set(node.get("properties") or {}) - {"name", "generateName"}
    if rest or extra:
        problems.append(
            f"{path}: must not specify anything other than name and generateName, but metadata is implicitly "
            f"specified ({sorted(set(rest) | extra)})"
        )
    return problems


def _junctors(node: dict[str, Any], path: str) -> list[str]:
    problems: list[str] = []
    for key in ("anyOf", "allOf", "oneOf", "not"):
        if key not in node:
            continue
        branches = node[key] if key != "not" else [node[key]]
        if key == "anyOf" and node.get("x-kubernetes-int-or-string") and branches == INT_OR_STRING:
            continue  # the one shape an int-or-string may spell out
        for i, branch in enumerate(branches):
            problems += _nested(branch, f"{path}.{key}[{i}]" if key != "not" else f"{path}.not", node)
    return problems


def _nested(branch: Any, path: str, outer: dict[str, Any]) -> list[str]:
    """A schema under a junctor: value validations only, on fields the outer schema specifies."""
    if not isinstance(branch, dict):
        return [f"{path}: must be a schema object"]
    problems = [f"{path}.{key}: must be undefined to be structural" for key in NOT_IN_JUNCTORS if key in branch]
    if "x-kubernetes-validations" in branch:
        problems.append(f"{path}.x-kubernetes-validations: must be empty to be structural")
    if "metadata" in (branch.get("properties") or {}):
        problems.append(f"{path}.properties[metadata]: must not be specified in a nested context")
    for name, sub in (branch.get("properties") or {}).items():
        if name not in (outer.get("properties") or {}):
            problems.append(f"{path}.properties[{name}]: must have a corresponding property outside of the junctor")
        else:
            problems += _nested(sub, f"{path}.properties[{name}]", outer["properties"][name])
    if "items" in branch:
        if "items" not in outer:
            problems.append(f"{path}.items: must have a corresponding items outside of the junctor")
        else:
            problems += _nested(branch["items"], f"{path}.items", outer["items"])
    return problems


def _lists_and_maps(node: dict[str, Any], path: str) -> list[str]:
    problems: list[str] = []
    kind, map_type = node.get("type"), node.get("x-kubernetes-map-type")
    list_type, keys = node.get("x-kubernetes-list-type"), node.get("x-kubernetes-list-map-keys") or []
    if map_type is not None:
        if kind != "object":
            problems.append(f"{path}.type: must be object if x-kubernetes-map-type is specified")
        if map_type not in ("granular", "atomic"):
            problems.append(f"{path}.x-kubernetes-map-type: {map_type!r} must be granular or atomic")
    if list_type is not None:
        if kind != "array":
            problems.append(f"{path}.type: must be array if x-kubernetes-list-type is specified")
        if list_type not in ("atomic", "set", "map"):
            problems.append(f"{path}.x-kubernetes-list-type: {list_type!r} must be atomic, set or map")
    if keys and list_type != "map":
        problems.append(f"{path}.x-kubernetes-list-type: must be map if x-kubernetes-list-map-keys is non-empty")
    items = node.get("items") if isinstance(node.get("items"), dict) else None
    if list_type in ("set", "map") and items is not None and items.get("nullable"):
        problems.append(f"{path}.items.nullable: cannot be nullable when x-kubernetes-list-type is {list_type}")
    if list_type == "set" and items is not None:
        if items.get("type") == "array" and items.get("x-kubernetes-list-type", "atomic") != "atomic":
            problems.append(f"{path}.items.x-kubernetes-list-type: must be atomic as item of a set")
        if items.get("type") == "object" and items.get("x-kubernetes-map-type") != "atomic":
            problems.append(f"{path}.items.x-kubernetes-map-type: must be atomic as item of a set")
    if list_type == "map":
        if not keys:
            problems.append(f"{path}.x-kubernetes-list-map-keys: must not be empty if x-kubernetes-list-type is map")
        if items is None:
            problems.append(f"{path}.items: must have a single schema if x-kubernetes-list-type is map")
        elif items.get("type") != "object":
            problems.append(f"{path}.items.type: must be object if x-kubernetes-list-type is map")
        else:
            required = set(items.get("required") or [])
            if len(set(keys)) != len(keys):
                problems.append(f"{path}.x-kubernetes-list-map-keys: must not contain duplicate entries")
            for key in keys:
                prop = (items.get("properties") or {}).get(key)
                if prop is None:
                    problems.append(f"{path}.x-kubernetes-list-map-keys: {key!r} is not a property of the items")
                    continue
                if prop.get("type") in ("array", "object"):
                    problems.append(f"{path}.items.properties[{key}].type: a list-map key must be a scalar")
                if key not in required and "default" not in prop:
                    problems.append(
                        f"{path}.items.properties[{key}].default: in x-kubernetes-list-map-keys, so it must have "
                        "a default or be required"
                    )
                if prop.get("nullable"):
                    problems.append(f"{path}.items.properties[{key}].nullable: a list-map key cannot be nullable")
    return problems


def _default(node: dict[str, Any], path: str, ctx: _Context) -> list[str]:
    if "default" not in node:
        return []
    if ctx.defaults_forbidden:
        return [f"{path}.default: must not be set {ctx.defaults_forbidden}"]
    default = node["default"]
    problems = [f"{path}.default: {e.message}" for e in jsonschema.Draft4Validator(node).iter_errors(default)]
    if (unknown := _unknown_fields(default, node)) is not None:
        problems.append(f"{path}.default: must not have unknown fields ({unknown} would be pruned)")
    for rule in node.get("x-kubernetes-validations") or []:
        if "oldSelf" in rule.get("rule", "") or not _compiles(rule.get("rule", "")):
            continue
        try:
            holds = cel.evaluate(rule["rule"], {"self": default}) is True
        except Exception:  # any evaluation error (the library raises KeyError for a missing field) refuses
            holds = False
        if not holds:
            problems.append(f"{path}.default: breaks its own rule {rule['rule']!r}")
    return problems


def _unknown_fields(value: Any, node: dict[str, Any], path: str = "") -> str | None:
    """The first field of value the API server's pruning would drop, or None."""
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return None
    if isinstance(value, dict):
        properties, additional = node.get("properties"), node.get("additionalProperties")
        for key, sub in value.items():
            if properties is not None and key in properties:
                schema = properties[key]
            elif isinstance(additional, dict):
                schema = additional
            elif additional is True:
                continue
            else:
                return f"{path}.{key}"
            if (found := _unknown_fields(sub, schema, f"{path}.{key}")) is not None:
                return found
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        for i, item in enumerate(value):
            if (found := _unknown_fields(item, node["items"], f"{path}[{i}]")) is not None:
                return found
    return None


def _compiles(rule: str) -> bool:
    try:
        cel.compile(rule)
    except ValueError:
        return False
    return True


def _validations(node: dict[str, Any], path: str, ctx: _Context) -> list[str]:
    problems: list[str] = []
    for i, rule in enumerate(node.get("x-kubernetes-validations") or []):
        where = f"{path}.x-kubernetes-validations[{i}]"
        source = rule.get("rule") or ""
        message = rule.get("message")
        if not source.strip():
            problems.append(f"{where}.rule: rule is not specified")
            continue
        if message is not None and not message.strip():
            problems.append(f"{where}.message: must be non-empty if specified")
        elif message is not None and ("\n" in message.strip() or "\r" in message.strip()):
            problems.append(f"{where}.message: must not contain line breaks")
        elif "\n" in source.strip() and not (message or "").strip():
            problems.append(f"{where}.message: must be specified if rule contains line breaks")
        if "reason" in rule and rule["reason"] not in REASONS:
            problems.append(f"{where}.reason: {rule['reason']!r} is not one of {sorted(REASONS)}")
        if "fieldPath" in rule:
            field_path = rule["fieldPath"]
            if not isinstance(field_path, str) or not field_path.strip():
                problems.append(f"{where}.fieldPath: must be non-empty if specified")
            elif "\n" in field_path or "\r" in field_path:
                problems.append(f"{where}.fieldPath: must not contain line breaks")
            elif (problem := field_path_problem(field_path, node)) is not None:
                problems.append(f"{where}.fieldPath: {field_path!r} must be a valid path: {problem}")
        try:
            cel.compile(source)
        except ValueError as exc:
            # The first error, worded as Go's CEL words it: `ERROR: <input>:1:49: Syntax error: ...`.
            errors = re.findall(r"ERROR: <input>:[^\n]*", str(exc))
            first = errors[0] if errors else str(exc) or "does not compile"
            problems.append(f"{where}.rule: {source!r}: compilation failed: {first}")
            continue
        problems += [f"{where}.rule: {p}" for p in _selection_problems(source, node, ctx)]
        uses_old_self = re.search(r"\boldSelf\b", source) is not None
        if uses_old_self and ctx.uncorrelatable is not None:
            problems.append(
                f"{where}.rule: oldSelf cannot be used on the uncorrelatable portion of the schema within "
                f"{ctx.uncorrelatable}"
            )
        if "optionalOldSelf" in rule and not uses_old_self:
            problems.append(f"{where}.optionalOldSelf: may not be set if oldSelf is not used in rule")
    return problems


def _selection_problems(source: str, node: dict[str, Any], ctx: _Context) -> Iterator[str]:
    """What Go's CEL type checker refuses that the strict parser cannot see: selecting a field the schema lacks
    (a typo), or at the root any metadata but name and generateName."""
    for match in _SELECTION.finditer(source):
        names = [n.strip() for n in match.group(2).split(".") if n.strip()]
        if match.group(3):
            names = names[:-1]  # the last is a method: self.x.size()
        schema: dict[str, Any] | None = node
        for depth, name in enumerate(names):
            if ctx.level == "root" and depth == 1 and names[0] == "metadata":
                if name not in ("name", "generateName"):
                    yield f"{match.group(0).strip()}: at the root a rule may read metadata.name and generateName only"
                break
            if schema is None or (schema.get("x-kubernetes-preserve-unknown-fields") and not schema.get("properties")):
                break  # a value of any shape: CEL types it dyn
            properties, additional = schema.get("properties"), schema.get("additionalProperties")
            if properties is not None and name in properties:
                schema = properties[name]
            elif isinstance(additional, dict):
                schema = additional
            elif name.startswith("__") and name.endswith("__"):
                break  # an escaped property name (__namespace__): not resolved here
            else:
                yield f"{match.group(0).strip()}: undefined field {name!r}"
                break


def field_path_problem(path: str, schema: dict[str, Any]) -> str | None:
    """Why `path` (.a.b, .a['b.c']) does not lead into `schema`, as ValidFieldPath answers; None when it does."""
    tokens = re.findall(r"\.|\[|\]|'(?:[^'\\]|\\.)*'|[^.\[\]']+", path)
    if "".join(tokens) != path:
        return "unexpected characters"
    node, i = schema, 0
    while i < len(tokens):
        token = tokens[i]
        if token == ".":
            if i + 1 >= len(tokens) or tokens[i + 1] in (".", "[", "]"):
                return "unexpected end of JSON path"
            name, i = tokens[i + 1], i + 2
        elif token == "[":
            if i + 2 >= len(tokens) or tokens[i + 2] != "]":
                return "expected ['name']"
            quoted = tokens[i + 1]
            if len(quoted) < 2 or quoted[0] != "'" or quoted[-1] != "'":
                return f"expected single quoted string but got {quoted}"
            name, i = quoted[1:-1].replace("\\'", "'").replace("\\\\", "\\"), i + 3
        else:
            return f"expected [ or . but got: {token}"
        properties, additional = node.get("properties"), node.get("additionalProperties")
        if properties is not None:
            if name not in properties:
                return f"{name!r} does not refer to a valid field"
            node = properties[name]
        elif isinstance(additional, dict):
            node = additional
        else:
            return f"{name!r} does not refer to a valid field"
    return None


def rules(crd: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(schema path, rule) of every x-kubernetes-validations entry in the CRD's schemas."""

    def walk(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
        if isinstance(node, dict):
            for rule in node.get("x-kubernetes-validations") or []:
                yield path, rule
            for key, value in node.items():
                if key != "x-kubernetes-validations":
                    yield from walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from walk(value, f"{path}[{i}]")

    for i, version in enumerate((crd.get("spec") or {}).get("versions") or []):
        yield from walk(
            (version.get("schema") or {}).get("openAPIV3Schema"), f"spec.versions[{i}].schema.openAPIV3Schema"
        )

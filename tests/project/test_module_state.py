"""No module of the operator but main.py holds mutable state at module level: what an operator run learns
lives in the objects main.py makes and passes in (docs/architecture.md, "Where state lives"), so a second
run in the same process starts from nothing and a test can make its own.

Read from the source (ast), not imported: what is checked is what a module binds at its top level.

- Refused: a top-level binding whose value builds a mutable object (a dict, list or set display or
  comprehension, or a call not known to build an immutable one), an assignment into another object (`X[k] =`,
  `X.attr =`), an augmented assignment, a `global` statement anywhere, and a memoising decorator (a cache
  is state too).
- Allowed: constants (numbers, strings, bytes, None, f-strings, tuples of allowed values, arithmetic of
  them), names and attributes of other objects, type aliases (subscripts such as `tuple[str, str]`,
  `Literal[...]`), and the calls in IMMUTABLE_CALLS. Classes and functions are not state: their bodies
  are not looked into (a dataclass field's default_factory is made per instance).
- ALLOWED lists the few exceptions by (module, name), each with why it is not a run's state.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.manifests import ROOT

PACKAGE = ROOT / "operator" / "keras_operator"
COMPOSITION_ROOT = PACKAGE / "main.py"

IMMUTABLE_CALLS = frozenset(
    {
        # immutable containers and values
        "MappingProxyType",
        "frozenset",
        "tuple",
        "str",
        "int",
        "float",
        "bool",
        "bytes",
        "object",  # a sentinel
        "Fraction",
        "Decimal",
        # loggers keep no state of ours (structlog's configuration is main's, at start)
        "get_logger",
        "getLogger",
        # compiled regular expressions and typing constructs
        "compile",
        "TypeVar",
        "ParamSpec",
        "NewType",
        # context-local, not global: each task or context sees its own value (and resets it)
        "ContextVar",
    }
)
MEMOISING = frozenset({"cache", "lru_cache", "cached"})

ALLOWED: dict[tuple[str, str], str] = {
    ("api/limits.py", "_RESOLVERS"): "PyYAML's loader protocol: the class attribute a Loader subclass reads; "
    "built once from PyYAML's own table, never written",
    ("api/training_job.py", "KerasTrainingJobSpec.transition_rules"): "the class's CEL transition rules, "
    "set once at import beside the class (part of its definition)",
    ("builders/serving_manifests.py", "SERVER_DEFAULTS"): "the API's own defaults (a ServerSpec), read to "
    "leave out what does not differ; never written",
    ("api/catalogue.py", "load"): "memoises the catalogue shipped in the package: the same for the process",
    ("api/catalogue.py", "_installed_keras"): "memoises the installed Keras' version: the same for the process",
    ("runtime/settings.py", "_read_text"): "memoises the progress endpoint's CA from the operator's own "
    "mounted Secret, by folder: the same for the process",
}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return _dotted(node.func)
    return type(node).__name__


def _mutable(value: ast.expr) -> str | None:
    """Why `value` builds a mutable object, or None when it does not."""
    if isinstance(value, ast.List | ast.Dict | ast.Set | ast.ListComp | ast.DictComp | ast.SetComp):
        return f"a {type(value).__name__.lower()}"
    if isinstance(value, ast.Call):
        name = _dotted(value.func).rsplit(".", 1)[-1]
        return None if name in IMMUTABLE_CALLS else f"a call of {_dotted(value.func)}"
    if isinstance(value, ast.Tuple):
        return next((why for why in map(_mutable, value.elts) if why), None)
    if isinstance(value, ast.BinOp):
        return _mutable(value.left) or _mutable(value.right)
    if isinstance(value, ast.IfExp):
        return _mutable(value.body) or _mutable(value.orelse)
    # Constants, f-strings, names, attributes, subscripts (type aliases), lambdas, comparisons...
    return None


def _top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The module's own statements, into `if`/`try`/`with` blocks, not into functions or classes."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, ast.If | ast.For | ast.While | ast.With):
            yield from _top_level(stmt.body + getattr(stmt, "orelse", []))
        elif isinstance(stmt, ast.Try):
            yield from _top_level(stmt.body + stmt.orelse + stmt.finalbody)
            for handler in stmt.handlers:
                yield from _top_level(handler.body)


def findings(source: str) -> list[tuple[str, str]]:
    """(name, why) of each piece of module-level mutable state in a module's source."""
    tree = ast.parse(source)
    found: list[tuple[str, str]] = []
    for stmt in _top_level(tree.body):
        if isinstance(stmt, ast.Assign | ast.AnnAssign) and stmt.value is not None:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for target in targets:
                name = _dotted(target) if not isinstance(target, ast.Subscript) else _dotted(target.value) + "[]"
                if not isinstance(target, ast.Name | ast.Tuple):
                    found.append((name, "an assignment into another object"))
                elif why := _mutable(stmt.value):
                    found.append((name, why))
        elif isinstance(stmt, ast.AugAssign):
            found.append((_dotted(stmt.target), "an augmented assignment"))
        elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            for decorator in stmt.decorator_list:
                if _dotted(decorator).rsplit(".", 1)[-1] in MEMOISING:
                    found.append((stmt.name, f"memoised by {_dotted(decorator)}"))
    found += [(", ".join(node.names), "a global statement") for node in ast.walk(tree) if isinstance(node, ast.Global)]
    return found


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != COMPOSITION_ROOT)


def test_no_module_but_main_holds_mutable_state() -> None:
    offending = []
    seen_allowed = set()
    for path in modules():
        module = path.relative_to(PACKAGE).as_posix()
        for name, why in findings(path.read_text()):
            if (module, name) in ALLOWED:
                seen_allowed.add((module, name))
            else:
                offending.append(f"{module}: {name} ({why})")
    assert not offending, "module-level mutable state (make it in main.py and pass it in):\n" + "\n".join(offending)
    # An exception no longer needed goes from the list: it must not cover a new one later.
    assert seen_allowed == set(ALLOWED), sorted(set(ALLOWED) - seen_allowed)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("CACHE = {}", [("CACHE", "a dict")]),
        ("_seen: set[str] = set()", [("_seen", "a call of set")]),
        ("QUEUE = asyncio.Queue()", [("QUEUE", "a call of asyncio.Queue")]),
        ("LOST = threading.Event()", [("LOST", "a call of threading.Event")]),
        ("PAIRS = (1, [2])", [("PAIRS", "a list")]),
        ("TABLE = {k: 1 for k in 'ab'}", [("TABLE", "a dictcomp")]),
        ("COUNT = 0\nCOUNT += 1", [("COUNT", "an augmented assignment")]),
        ("OTHER.setting = 1", [("OTHER.setting", "an assignment into another object")]),
        ("def f():\n    global RUNNER\n    RUNNER = 1", [("RUNNER", "a global statement")]),
        ("@functools.lru_cache\ndef f(): ...", [("f", "memoised by functools.lru_cache")]),
        ("try:\n    X = []\nexcept E:\n    pass", [("X", "a list")]),
        # allowed: constants, immutable wrappers, loggers, aliases, classes and functions
        ("NAMES = ('a', 'b')\nMASK = 2**31 - 1\nMSG = f'{NAMES}'", []),
        ("KINDS = MappingProxyType({'Job': 1})\nDONE = frozenset({'a'})", []),
        ("log = structlog.get_logger('x')\nRX = re.compile('a+')\nKey = tuple[str, str]", []),
        ("class State:\n    seen: dict = {}\n\ndef f():\n    x = []", []),
    ],
)
def test_the_check_tells_state_from_constants(source: str, expected: list[tuple[str, str]]) -> None:
    assert findings(source) == expected

"""A module imported on first use, for the top level of a test module whose tests need a heavy library
(keras_trainer.train imports Keras and TensorFlow: 10-20 s on 2 cores). Imported at the top level, every
pytest run that collects the module would pay for it, the fast tier (`-m "not slow"`) included."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class Lazy:
    def __init__(self, name: str) -> None:
        self._name = name

    def _module(self) -> ModuleType:
        return importlib.import_module(self._name)

    def __getattr__(self, attribute: str) -> Any:
        if attribute.startswith("_"):
            # What pytest asks every object of a module it collects (_pytestfixturefunction, __test__...):
            # never worth the import.
            raise AttributeError(attribute)
        return getattr(self._module(), attribute)


def lazy(name: str) -> Any:
    """The module `name`, imported when one of its attributes is first read."""
    return Lazy(name)

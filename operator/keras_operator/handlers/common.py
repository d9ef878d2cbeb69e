"""What the handlers of every kind share: the settings of the running operator."""

from __future__ import annotations

from keras_operator.runtime.settings import Settings


class Current:
    """The settings of the running operator, read again at each start (tests start several in one process)."""

    settings = Settings.from_env()

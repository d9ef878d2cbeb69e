"""Run `keras-operator` under cProfile and write the profile when it stops (a kopf cleanup handler).

Usage: BENCH_OPERATOR_WRAPPER="python bench/profile_operator.py OUT.prof" python bench/operator_load.py ...
then `python -m pstats OUT.prof` (sort cumtime / tottime). Only the event loop's thread is profiled:
the kubernetes client's calls run in worker threads (asyncio.to_thread) and show as waits.

The stats are written by a cleanup handler rather than at exit, because the process may not exit on its
own after SIGINT (see bench/README.md, "Operator issues found").
"""

from __future__ import annotations

import cProfile
import sys
from typing import Any

import kopf

OUT = sys.argv[1]
PROFILE = cProfile.Profile()


@kopf.on.cleanup()
async def write_profile(**_: Any) -> None:
    PROFILE.disable()
    PROFILE.dump_stats(OUT)


if __name__ == "__main__":
    sys.argv = ["keras-operator"]
    from keras_operator.runtime.main import main

    PROFILE.enable()
    main()

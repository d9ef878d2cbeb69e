"""Run `keras-operator` under a profiler and write the profile when it stops (a kopf cleanup handler).

Usage: BENCH_OPERATOR_WRAPPER="python bench/profile_operator.py OUT [--sample]" python bench/operator_load.py ...

- default: cProfile of the event loop's thread, written to OUT (read with `python -m pstats OUT`).
  Exact call counts, but its per-call overhead inflates code made of many small Python calls (PyYAML's
  representer, deep copies) several times over: use it to count, not to weigh.
- --sample: a sampling profiler: a thread looks at every thread's stack every 2 ms and counts, per
  function, the samples it was on the stack (inclusive) and on top (self), for the event loop's thread
  and for the worker threads together (the kubernetes client runs there, via asyncio.to_thread).
  OUT gets the top functions as text. Its cost is one stack walk per sample, not per call.

The profile is written by a cleanup handler rather than at exit, because the process may not exit on
its own after SIGINT (see bench/README.md, "Operator issues found").
"""

from __future__ import annotations

import collections
import cProfile
import sys
import threading
import time
from pathlib import Path
from typing import Any

import kopf

OUT = Path(sys.argv[1])
SAMPLE = "--sample" in sys.argv[2:]
PROFILE = cProfile.Profile()
INTERVAL = 0.002


class Sampler(threading.Thread):
    def __init__(self, main_ident: int) -> None:
        super().__init__(daemon=True, name="bench-sampler")
        self.main_ident = main_ident
        self.running = True
        self.samples: dict[str, int] = collections.Counter()
        self.inclusive: dict[str, collections.Counter[str]] = {
            "loop": collections.Counter(),
            "workers": collections.Counter(),
        }
        self.own: dict[str, collections.Counter[str]] = {
            "loop": collections.Counter(),
            "workers": collections.Counter(),
        }

    def run(self) -> None:
        me = threading.get_ident()
        while self.running:
            time.sleep(INTERVAL)
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                where = "loop" if ident == self.main_ident else "workers"
                names, top = [], frame
                while frame is not None:
                    code = frame.f_code
                    names.append(f"{code.co_filename.split('site-packages/')[-1]}:{code.co_name}")
                    frame = frame.f_back
                if names and names[0].endswith(("threading.py:wait", "thread.py:_worker", "selectors.py:select")):
                    continue  # idle: waiting for work
                del top
                self.samples[where] += 1
                self.own[where][names[0]] += 1
                for name in set(names):
                    self.inclusive[where][name] += 1

    def report(self) -> str:
        lines = [f"sampling every {INTERVAL * 1000:.0f} ms; busy samples: {dict(self.samples)}"]
        for where in ("loop", "workers"):
            total = self.samples[where] or 1
            lines.append(f"\n== {where}: inclusive (on the stack) ==")
            lines += [f"{100 * n / total:6.1f}%  {name}" for name, n in self.inclusive[where].most_common(60)]
            lines.append(f"\n== {where}: self (on top) ==")
            lines += [f"{100 * n / total:6.1f}%  {name}" for name, n in self.own[where].most_common(30)]
        return "\n".join(lines) + "\n"


SAMPLER = Sampler(threading.get_ident())


@kopf.on.cleanup()
async def write_profile(**_: Any) -> None:
    if SAMPLE:
        SAMPLER.running = False
        OUT.write_text(SAMPLER.report())
    else:
        PROFILE.disable()
        PROFILE.dump_stats(str(OUT))


if __name__ == "__main__":
    sys.argv = ["keras-operator"]
    from keras_operator.main import main

    if SAMPLE:
        SAMPLER.start()
    else:
        PROFILE.enable()
    main()

"""When the operator stops acting.

kopf waits on its stop flag in an executor thread, and at shutdown asyncio joins that executor
without a timeout: a flag nobody sets would hold the process until SIGKILL (in a pod, the whole
termination grace period). So the flag is set when the Lease is lost, and at every shutdown too.
"""

from __future__ import annotations

import threading

STOP = threading.Event()

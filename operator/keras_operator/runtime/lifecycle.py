"""When the operator stops acting.

LOST is set when this replica lost the Lease (never at a clean stop): from then on the API client refuses
writes (runtime/kube.py), so a reconcile still under way cannot act beside the new leader. It stays a
module-level event because runtime/kube.py reads it on every write; main.py clears it at each start.

The stop flag kopf waits on, and the loops the kinds start, belong to one operator run: main.py makes them.
"""

from __future__ import annotations

import threading

LOST = threading.Event()

"""qmp-server: a QMP server that answers like QEMU's monitor for the migration control plane.

The package is layered: pure cores (``wire``, ``qapi``, ``engine``, ``commands``) that never do
I/O, wrapped by thin asyncio adapters in ``runtime``.  See ``docs/architecture.md``.
"""

import logging
import os

# numpy's OpenBLAS starts a worker thread per core that polls for work; qmp-server never does
# linear algebra, and on a small host those threads take CPU from a migration (seen with perf
# on the 2-core VM).  Set before anything imports numpy; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
__all__ = ["__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())

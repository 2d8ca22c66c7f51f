"""qmp-server: a QMP server that answers like QEMU's monitor for the migration control plane.

The package is layered: pure cores (``wire``, ``qapi``, ``engine``, ``commands``) that never do
I/O, wrapped by thin asyncio adapters in ``runtime``.  See ``docs/architecture.md``.
"""

import logging

__version__ = "0.1.0"
__all__ = ["__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())

"""``python -m qmp_server``: the same as the ``qmp-server`` console script."""

import sys

from qmp_server.cli import main

sys.exit(main())

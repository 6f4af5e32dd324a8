"""``python -m objbutler_servers install|start|stop ...``: see :func:`objbutler_servers.main`."""

import sys

from objbutler_servers.cli import main

sys.exit(main())

"""``python -m unidb.service.cli``: the ``unidb`` command."""

import sys

from unidb.service.cli.main import main

sys.exit(main())

"""``python -m gateway``: the same as the ``wa-gateway`` command."""

from .cli import main

raise SystemExit(main())

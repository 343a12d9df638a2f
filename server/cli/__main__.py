"""``python -m server.cli``: the same as the ``giftwire`` command."""

from server.cli import main

raise SystemExit(main())

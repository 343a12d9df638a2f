"""``python -m client_demo``: the terminal client."""

from client_demo.cli import main

raise SystemExit(main())

"""``python -m firkin``: see firkin.cli."""
from .cli import main

raise SystemExit(main())

"""`python -m demi` runs the command line."""

from demi.cli.main import main

raise SystemExit(main())

"""`python -m demi` runs the command line."""

from demi.main import main

raise SystemExit(main())

"""The `demi` command line: one module per group of subcommands."""

"""The language server front end (demi-lsp)."""

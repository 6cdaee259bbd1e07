"""The language server front end (demi-lsp).

    server.py       pygls server, features, command line (`demi-lsp`, `demi lsp`)
    protocol.py     error answers for malformed messages; cancellable executeCommand
    completion.py   inline completion / completion: debounce, cache, one job per document, versions
    actions.py      code actions Explain / Refactor..., resolve, demi.explain / demi.refactor
    engine_host.py  which engine (in-process, configured server, a running demi serve), loading, state;
                    in-process models run on the session layer's one model runner (demi.assistant.runner)
    debounce.py     the adaptive wait for automatic triggers
    cache.py        the type-through cache
    progress.py     $/progress for work over half a second, cancellable
    settings.py     settings from config, initializationOptions and didChangeConfiguration
    textutil.py     position encodings and the word before the cursor

Front-end rules (DESIGN.md): everything model- or prompt-related comes from `demi.assistant`.
"""

-- demi-lsp for Neovim 0.11+: `vim.lsp.enable("demi")` reads this file from the runtimepath, so no
-- setup call is needed. Change any field with vim.lsp.config("demi", {...}), for example
--   vim.lsp.config("demi", { cmd = { "demi-lsp", "--server", "http://127.0.0.1:8642" } })
--   vim.lsp.config("demi", { settings = { demi = { maxTokens = 48 } } })
-- (see :help demi-settings). The fields come from require("demi").lsp_config().
return require("demi").lsp_config()

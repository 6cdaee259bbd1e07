-- A minimal Neovim (0.11+) config for Demi. Try it with:
--   nvim -u editors/neovim/examples/init.lua some_file.py
-- In your own config: put editors/neovim on the runtimepath (see :help demi-install), then
-- vim.lsp.enable("demi"), or require("demi").setup({...}) as here.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
vim.opt.runtimepath:prepend(vim.fn.fnamemodify(here .. "..", ":p"))
vim.cmd("filetype plugin indent on")

require("demi").setup({
  -- cmd = { "demi-lsp", "--server", "http://127.0.0.1:8642" },  -- share a running `demi serve`
  settings = { maxTokens = 48 },
})

-- Insert-mode <C-l>: ask for a suggestion now and insert it (on 0.12+ ghost text appears by
-- itself and <Tab> accepts it).
vim.keymap.set("i", "<C-l>", function() require("demi").complete() end, { desc = "Demi: complete" })
vim.keymap.set({ "n", "v" }, "<leader>de", ":DemiExplain<CR>", { desc = "Demi: explain" })
vim.keymap.set({ "n", "v" }, "<leader>dr", ":DemiRefactor<CR>", { desc = "Demi: refactor" })
vim.keymap.set({ "n", "v" }, "<leader>da", vim.lsp.buf.code_action, { desc = "Code actions (Demi's too)" })
vim.o.statusline = "%f %m%=%{v:lua.require'demi'.statusline()}  %l:%c "

-- A minimal Neovim config for Demi (try it with: nvim -u editors/neovim/init.lua some_file.py).
-- In your own config: put editors/neovim on the runtimepath (or copy lua/demi.lua into ~/.config/nvim/lua/)
-- and call require("demi").setup().
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
vim.opt.runtimepath:prepend(here)
vim.cmd("filetype plugin indent on")

require("demi").setup({
  -- cmd = { "demi-lsp", "--server", "http://127.0.0.1:8642" },  -- share a running `demi serve`
  settings = { maxTokens = 48 },
})

-- Insert-mode <C-l>: ask for a suggestion now and insert it (works on every Neovim version;
-- on 0.12+ ghost text appears by itself and <Tab> accepts it).
vim.keymap.set("i", "<C-l>", function() require("demi").complete() end, { desc = "Demi: complete" })
vim.keymap.set({ "n", "v" }, "<leader>de", ":DemiExplain<CR>", { desc = "Demi: explain" })
vim.keymap.set({ "n", "v" }, "<leader>dr", ":DemiRefactor<CR>", { desc = "Demi: refactor" })
vim.o.statusline = "%f %m%=%{v:lua.require'demi'.statusline()}  %l:%c "

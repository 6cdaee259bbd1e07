-- Demi's commands, loaded with the plugin: :DemiExplain, :DemiRefactor, :DemiComplete, and the
-- per-buffer set-up when demi-lsp attaches (ghost text on 0.12+). The language server itself
-- starts with vim.lsp.enable("demi") (lsp/demi.lua) or require("demi").setup().
if vim.g.loaded_demi then
  return
end
vim.g.loaded_demi = true

if vim.fn.has("nvim-0.11") == 0 then
  return  -- require("demi").setup() says what is needed
end

vim.api.nvim_create_user_command("DemiExplain", function(opts)
  require("demi").explain(opts.line1, opts.line2)
end, { range = true, desc = "Demi: explain the range or the symbol at the cursor" })

vim.api.nvim_create_user_command("DemiRefactor", function(opts)
  require("demi").refactor(opts.line1, opts.line2, opts.args ~= "" and opts.args or nil)
end, { range = true, nargs = "?", desc = "Demi: rewrite the range or the symbol at the cursor" })

vim.api.nvim_create_user_command("DemiComplete", function()
  require("demi").complete()
end, { desc = "Demi: insert a suggestion at the cursor" })

vim.api.nvim_create_autocmd("LspAttach", {
  group = vim.api.nvim_create_augroup("demi", { clear = true }),
  callback = function(args)
    local client = vim.lsp.get_client_by_id(args.data.client_id)
    if client and client.name == "demi" then
      require("demi").on_attach(client, args.buf)
    end
  end,
})

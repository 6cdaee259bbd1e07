-- Demi's language server (demi-lsp) in Neovim, with the native LSP client.
--
--   require("demi").setup({ settings = { maxTokens = 48 } })
--
-- Neovim 0.12+: ghost-text inline completion (vim.lsp.inline_completion); <Tab> accepts.
-- Neovim 0.11:  vim.lsp.config/vim.lsp.enable; completions through the completion menu
--               (vim.lsp.completion, <C-x><C-o>, or nvim-cmp) and :DemiComplete.
-- Neovim 0.7-0.10: started per buffer; :DemiComplete inserts the suggestion at the cursor.
-- Everywhere: code actions "Demi: Explain" / "Demi: Refactor..." (vim.lsp.buf.code_action()),
-- :DemiExplain and :DemiRefactor {instruction} on a range, and require("demi").statusline().

local M = {}

M.defaults = {
  cmd = { "demi-lsp" },
  filetypes = { "python", "javascript", "javascriptreact", "typescript", "typescriptreact", "go", "rust",
                "java", "c", "cpp", "lua", "sh", "ruby", "php", "kotlin", "swift", "scala", "zig" },
  root_markers = { ".git", "pyproject.toml", "package.json", "go.mod", "Cargo.toml" },
  settings = {},          -- sent as initializationOptions and workspace/didChangeConfiguration {demi = ...}
  inline = true,          -- ghost text on Neovim 0.12+
  accept_key = "<Tab>",   -- accepts the ghost text (falls through to a plain <Tab> when there is none)
}

M.status = nil            -- the last demi/status notification: {state, model, engine, latencyMs, ...}

local function lsp_client()
  local get = vim.lsp.get_clients or vim.lsp.get_active_clients
  for _, c in ipairs(get({ bufnr = 0 })) do
    if c.name == "demi" then
      return c
    end
  end
  return nil
end

local function request(client, method, params, handler, bufnr)
  -- client:request() from 0.11 on, client.request() before
  if vim.fn.has("nvim-0.11") == 1 then
    return client:request(method, params, handler, bufnr)
  end
  return client.request(method, params, handler, bufnr)
end

local function show_markdown(markdown, title)
  vim.cmd("botright new")
  local buf = vim.api.nvim_get_current_buf()
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, vim.split(markdown, "\n", { plain = true }))
  vim.bo[buf].filetype = "markdown"
  vim.bo[buf].buftype = "nofile"
  vim.bo[buf].bufhidden = "wipe"
  pcall(vim.api.nvim_buf_set_name, buf, title)
end

local function encoding(client)
  return (client and client.offset_encoding) or "utf-16"  -- what the server chose at initialize
end

local function units(text, enc)
  if enc == "utf-8" then
    return #text
  end
  if vim.fn.has("nvim-0.11") == 1 then
    return vim.str_utfindex(text, enc)
  end
  local utf32, utf16 = vim.str_utfindex(text)
  return enc == "utf-32" and utf32 or utf16
end

local function range_params(first, last)
  -- 1-based inclusive lines -> an LSP range; a single line without a selection is the cursor (a point)
  local enc = encoding(lsp_client())
  if first == last and vim.fn.mode() == "n" and first == vim.fn.line(".") then
    local pos = vim.lsp.util.make_position_params(0, enc).position
    return { start = pos, ["end"] = pos }
  end
  local last_text = vim.api.nvim_buf_get_lines(0, last - 1, last, false)[1] or ""
  return { start = { line = first - 1, character = 0 }, ["end"] = { line = last - 1, character = units(last_text, enc) } }
end

local function execute(command, arguments, on_result)
  local client = lsp_client()
  if not client then
    vim.notify("Demi: the language server is not attached to this buffer", vim.log.levels.WARN)
    return
  end
  request(client, "workspace/executeCommand", { command = command, arguments = arguments }, function(err, result)
    if err then
      vim.notify("Demi: " .. (err.message or vim.inspect(err)), vim.log.levels.ERROR)
    elseif on_result then
      on_result(result)
    end
  end, 0)
end

-- Insert Demi's suggestion at the cursor (any Neovim version; no ghost text needed).
function M.complete()
  local client = lsp_client()
  if not client then
    vim.notify("Demi: the language server is not attached to this buffer", vim.log.levels.WARN)
    return
  end
  local enc = encoding(client)
  local params = vim.lsp.util.make_position_params(0, enc)
  params.context = { triggerKind = 1 }
  local bufnr = vim.api.nvim_get_current_buf()
  request(client, "textDocument/inlineCompletion", params, function(err, result)
    if err or not result then
      return
    end
    local items = result.items or result
    local item = items[1]
    if not item then
      vim.notify("Demi: no suggestion here", vim.log.levels.INFO)
      return
    end
    local text = type(item.insertText) == "table" and item.insertText.value or item.insertText
    local range = item.range or { start = params.position, ["end"] = params.position }
    vim.lsp.util.apply_text_edits({ { range = range, newText = text } }, bufnr, enc)
  end, bufnr)
end

function M.statusline()
  local s = M.status
  if not s then
    return ""
  end
  local latency = s.latencyMs and s.latencyMs ~= vim.NIL and string.format(" %dms", s.latencyMs) or ""
  return "Demi: " .. s.state .. latency
end

local function commands()
  vim.api.nvim_create_user_command("DemiComplete", function() M.complete() end, { desc = "Demi: complete at the cursor" })
  vim.api.nvim_create_user_command("DemiExplain", function(opts)
    execute("demi.explain", { vim.uri_from_bufnr(0), range_params(opts.line1, opts.line2) }, function(markdown)
      if type(markdown) == "string" then
        show_markdown(markdown, "demi-explain")
      end
    end)
  end, { range = true, desc = "Demi: explain the range or the symbol at the cursor" })
  vim.api.nvim_create_user_command("DemiRefactor", function(opts)
    local arguments = { vim.uri_from_bufnr(0), range_params(opts.line1, opts.line2) }
    local function go(instruction)
      if instruction and instruction ~= "" then
        table.insert(arguments, instruction)
        execute("demi.refactor", arguments, function(result)
          if type(result) == "table" and not result.applied and result.notes then
            vim.notify("Demi: " .. table.concat(result.notes, "; "))
          end
        end)
      end
    end
    if opts.args ~= "" then
      go(opts.args)
    else
      vim.ui.input({ prompt = "Demi: refactor how? " }, go)
    end
  end, { range = true, nargs = "?", desc = "Demi: rewrite the range or the symbol at the cursor" })

  -- The "Demi: Refactor..." code action comes without an instruction: ask for one here.
  vim.lsp.commands["demi.refactor"] = function(command, ctx)
    local arguments = vim.deepcopy(command.arguments or {})
    vim.ui.input({ prompt = "Demi: refactor how? " }, function(instruction)
      if instruction and instruction ~= "" then
        arguments[3] = instruction
        local client = vim.lsp.get_client_by_id(ctx.client_id)
        request(client, "workspace/executeCommand", { command = "demi.refactor", arguments = arguments }, nil, ctx.bufnr)
      end
    end)
  end
end

local function on_attach(client, bufnr)
  if vim.lsp.inline_completion and M.options.inline then  -- Neovim 0.12+
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
    vim.keymap.set("i", M.options.accept_key, function()
      if not vim.lsp.inline_completion.get() then
        return M.options.accept_key
      end
    end, { buffer = bufnr, expr = true, replace_keycodes = true, desc = "Demi: accept the suggestion" })
  elseif vim.lsp.completion and vim.lsp.completion.enable then  -- Neovim 0.11: the completion menu
    vim.lsp.completion.enable(true, client.id, bufnr, { autotrigger = false })
  end
end

function M.setup(opts)
  M.options = vim.tbl_deep_extend("force", {}, M.defaults, opts or {})
  local o = M.options
  local capabilities = vim.lsp.protocol.make_client_capabilities()
  capabilities.window = capabilities.window or {}
  capabilities.window.showDocument = { support = false }  -- :DemiExplain shows the answer itself
  local config = {
    name = "demi",
    cmd = o.cmd,
    init_options = o.settings,
    settings = { demi = o.settings },
    capabilities = capabilities,
    handlers = {
      ["demi/status"] = function(_, result)
        M.status = result
        vim.g.demi_status = M.statusline()
      end,
    },
    on_attach = on_attach,
  }
  commands()

  if vim.fn.has("nvim-0.11") == 1 then
    config.filetypes = o.filetypes
    config.root_markers = o.root_markers
    vim.lsp.config("demi", config)
    vim.lsp.enable("demi")
    return
  end

  local client_id = nil
  vim.api.nvim_create_autocmd("FileType", {
    pattern = o.filetypes,
    callback = function(args)
      local root = vim.fs and vim.fs.find and vim.fs.dirname(vim.fs.find(o.root_markers, {
        upward = true, path = vim.fs.dirname(vim.api.nvim_buf_get_name(args.buf)) })[1] or "") or nil
      config.root_dir = (root and root ~= "") and root or vim.fn.getcwd()
      if vim.lsp.start then  -- 0.8-0.10: reuses the client for the same root
        vim.lsp.start(config, { bufnr = args.buf })
        return
      end
      if client_id == nil or vim.lsp.get_client_by_id(client_id) == nil then  -- 0.7
        client_id = vim.lsp.start_client(config)
      end
      vim.lsp.buf_attach_client(args.buf, client_id)
    end,
  })
end

return M

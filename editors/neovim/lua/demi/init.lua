-- Demi's language server (demi-lsp) in Neovim 0.11+, with the native LSP client.
--
-- Nothing here must be called: with editors/neovim on the runtimepath (a plugin manager, or
-- vim.opt.rtp:prepend), `vim.lsp.enable("demi")` starts demi-lsp from lsp/demi.lua and
-- plugin/demi.lua adds the commands. `require("demi").setup({...})` is a shortcut for
-- vim.lsp.config("demi", ...) + vim.lsp.enable("demi") with Demi's own options. See :help demi.
--
-- Neovim 0.12+: ghost-text inline completion (vim.lsp.inline_completion); <Tab> accepts.
-- Neovim 0.11:  completions through the completion menu (vim.lsp.completion, <C-x><C-o>) and
--               :DemiComplete, which inserts the suggestion at the cursor.
-- Both: code actions (vim.lsp.buf.code_action()) "Demi: Explain", shown in a split or a float
-- through window/showDocument, and "Demi: Refactor...", which asks for the instruction and is
-- applied through workspace/applyEdit (undo takes it back); :DemiExplain, :DemiRefactor,
-- :checkhealth demi, require("demi").statusline().

local M = {}

M.defaults = {
  cmd = { "demi-lsp" },
  filetypes = { "python", "javascript", "javascriptreact", "typescript", "typescriptreact", "go", "rust",
                "java", "c", "cpp", "lua", "sh", "ruby", "php", "kotlin", "swift", "scala", "zig" },
  root_markers = { ".git", "pyproject.toml", "package.json", "go.mod", "Cargo.toml" },
  settings = {},             -- sent as initializationOptions and workspace/configuration {demi = ...}
  inline = true,             -- ghost text on Neovim 0.12+
  accept_key = "<Tab>",      -- accepts the ghost text (a plain <Tab> when there is none); false: no mapping
  explain_window = "split",  -- where explanations show: "split" or "float"
}

M.options = vim.deepcopy(M.defaults)
M.status = nil               -- the last demi/status notification: {state, model, engine, latencyMs, ...}

local function notify(text, level)
  vim.notify("Demi: " .. text, level or vim.log.levels.INFO)
end

local function client_for(bufnr)
  return vim.lsp.get_clients({ bufnr = bufnr or 0, name = "demi" })[1]
end

-- Explanations --------------------------------------------------------------------------------

local function find_explanation_window()
  for _, win in ipairs(vim.api.nvim_tabpage_list_wins(0)) do
    if vim.b[vim.api.nvim_win_get_buf(win)].demi_explanation then
      return win
    end
  end
end

--- Shows Markdown in the explanation split (reused) or a float, as `explain_window` says.
--- @param lines string[]|string
--- @param focus boolean|nil move the cursor into it (default true)
--- @return integer bufnr, integer winid
function M.show_markdown(lines, focus)
  if type(lines) == "string" then
    lines = vim.split(lines, "\n", { plain = true })
  end
  local from = vim.api.nvim_get_current_win()
  local buf, win
  if M.options.explain_window == "float" then
    local width = math.max(40, math.min(100, vim.o.columns - 8))
    buf, win = vim.lsp.util.open_floating_preview(lines, "markdown", {
      border = "rounded", focus_id = "demi-explanation", max_width = width,
      max_height = math.max(10, math.floor(vim.o.lines * 0.6)), wrap = true,
    })
    vim.b[buf].demi_explanation = true
    if focus ~= false then
      vim.api.nvim_set_current_win(win)
    end
    return buf, win
  end
  win = find_explanation_window()
  if win then
    vim.api.nvim_set_current_win(win)
    buf = vim.api.nvim_win_get_buf(win)
  else
    vim.cmd("botright new")
    win, buf = vim.api.nvim_get_current_win(), vim.api.nvim_get_current_buf()
    vim.bo[buf].buftype = "nofile"
    vim.bo[buf].bufhidden = "wipe"
    vim.bo[buf].swapfile = false
    vim.b[buf].demi_explanation = true
    vim.wo[win].wrap = true
    vim.wo[win].linebreak = true
    pcall(vim.api.nvim_buf_set_name, buf, "demi://explanation")
    vim.keymap.set("n", "q", "<Cmd>close<CR>", { buffer = buf, desc = "Demi: close the explanation" })
  end
  vim.bo[buf].modifiable = true
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.bo[buf].modifiable = false
  vim.bo[buf].filetype = "markdown"
  vim.api.nvim_win_set_cursor(win, { 1, 0 })
  if focus == false and vim.api.nvim_win_is_valid(from) then
    vim.api.nvim_set_current_win(from)
  end
  return buf, win
end

-- window/showDocument from demi-lsp: an explanation it saved as Markdown (anything else goes to
-- Neovim's own handler, which opens the file).
local function show_document(err, params, ctx, config)
  local uri = params and params.uri or ""
  if params.external or not uri:match("%.md$") then
    return vim.lsp.handlers["window/showDocument"](err, params, ctx, config)
  end
  local ok, lines = pcall(vim.fn.readfile, vim.uri_to_fname(uri))
  if not ok then
    return { success = false }
  end
  M.show_markdown(lines, params.takeFocus ~= false)
  return { success = true }
end

-- Commands ------------------------------------------------------------------------------------

local function encoding(client)
  return (client and client.offset_encoding) or "utf-16"  -- what the server chose at initialize
end

--- An LSP range for 1-based inclusive lines; a single line without a selection is the cursor.
local function range_params(client, first, last, bufnr)
  local enc = encoding(client)
  if first == last and vim.fn.mode() == "n" and first == vim.fn.line(".") then
    local pos = vim.lsp.util.make_position_params(0, enc).position
    return { start = pos, ["end"] = pos }
  end
  local last_text = vim.api.nvim_buf_get_lines(bufnr, last - 1, last, false)[1] or ""
  local character = enc == "utf-8" and #last_text or vim.str_utfindex(last_text, enc)
  return { start = { line = first - 1, character = 0 }, ["end"] = { line = last - 1, character = character } }
end

local function execute(client, command, arguments, bufnr, on_result)
  client:request("workspace/executeCommand", { command = command, arguments = arguments }, function(err, result)
    if err then
      notify(err.message or vim.inspect(err), vim.log.levels.ERROR)
    elseif on_result then
      on_result(result)
    end
  end, bufnr)
end

local function refactor_with(client, arguments, bufnr)
  execute(client, "demi.refactor", arguments, bufnr, function(result)
    if type(result) == "table" and not result.applied and not result.cancelled then
      local why = result.notes and #result.notes > 0 and table.concat(result.notes, "; ")
        or (result.failureReason ~= vim.NIL and result.failureReason) or "the edit was not applied"
      notify("nothing applied: " .. why, vim.log.levels.WARN)
    end
  end)
end

--- "Demi: Refactor..." comes without an instruction: ask for one here, where free text can be typed.
local function refactor_command(command, ctx)
  local client = vim.lsp.get_client_by_id(ctx.client_id)
  if not client then
    return
  end
  local arguments = vim.deepcopy(command.arguments or {})
  if type(arguments[3]) == "string" and arguments[3] ~= "" then
    return refactor_with(client, arguments, ctx.bufnr)
  end
  vim.ui.input({ prompt = "Demi: refactor how? " }, function(instruction)
    if instruction and instruction ~= "" then
      arguments[3] = instruction
      refactor_with(client, arguments, ctx.bufnr)
    end
  end)
end

local function attached_client(bufnr)
  local client = client_for(bufnr)
  if not client then
    notify("the language server is not attached to this buffer (:checkhealth demi)", vim.log.levels.WARN)
  end
  return client
end

--- :DemiExplain: the symbol at the cursor, or lines first..last (1-based).
function M.explain(first, last)
  local bufnr = vim.api.nvim_get_current_buf()
  local client = attached_client(bufnr)
  if not client then
    return
  end
  local args = { vim.uri_from_bufnr(bufnr), range_params(client, first, last, bufnr) }
  execute(client, "demi.explain", args, bufnr, function(markdown)
    local shows = vim.tbl_get(client.capabilities or {}, "window", "showDocument", "support")
    if not shows and type(markdown) == "string" then  -- the server could not show it: do it here
      M.show_markdown(markdown)
    end
  end)
end

--- :DemiRefactor: rewrite the symbol at the cursor, or lines first..last, as `instruction` says
--- (asked for when empty).
function M.refactor(first, last, instruction)
  local bufnr = vim.api.nvim_get_current_buf()
  local client = attached_client(bufnr)
  if not client then
    return
  end
  local args = { vim.uri_from_bufnr(bufnr), range_params(client, first, last, bufnr), instruction }
  refactor_command({ arguments = args }, { client_id = client.id, bufnr = bufnr })
end

--- Insert Demi's suggestion at the cursor (no ghost text needed).
function M.complete()
  local bufnr = vim.api.nvim_get_current_buf()
  local client = attached_client(bufnr)
  if not client then
    return
  end
  local enc = encoding(client)
  local params = vim.lsp.util.make_position_params(0, enc)
  params.context = { triggerKind = 1 }
  client:request("textDocument/inlineCompletion", params, function(err, result)
    if err then
      return notify(err.message, vim.log.levels.ERROR)
    end
    local item = result and (result.items or result)[1]
    if not item then
      return notify("no suggestion here")
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
  local latency = type(s.latencyMs) == "number" and string.format(" %dms", s.latencyMs) or ""
  return "Demi: " .. s.state .. latency
end

-- The client --------------------------------------------------------------------------------

--- The vim.lsp.Config lsp/demi.lua returns (Demi's options at the time it is read).
function M.lsp_config()
  local o = M.options
  return {
    cmd = o.cmd,
    filetypes = o.filetypes,
    root_markers = o.root_markers,
    init_options = o.settings,
    settings = { demi = o.settings },
    handlers = {
      ["demi/status"] = function(_, result)
        M.status = result
        vim.g.demi_status = M.statusline()
      end,
      ["window/showDocument"] = show_document,
    },
    commands = { ["demi.refactor"] = refactor_command },
  }
end

--- Per buffer, when demi-lsp attaches (plugin/demi.lua's LspAttach autocommand).
function M.on_attach(client, bufnr)
  local o = M.options
  if vim.lsp.inline_completion and o.inline then  -- Neovim 0.12+
    vim.lsp.inline_completion.enable(true, { bufnr = bufnr })
    if o.accept_key then
      vim.keymap.set("i", o.accept_key, function()
        if not vim.lsp.inline_completion.get() then
          return o.accept_key
        end
      end, { buffer = bufnr, expr = true, replace_keycodes = true, desc = "Demi: accept the suggestion" })
    end
  elseif vim.lsp.completion and vim.lsp.completion.enable then  -- 0.11: the completion menu
    vim.lsp.completion.enable(true, client.id, bufnr, { autotrigger = false })
  end
end

--- Optional: Demi's options, then vim.lsp.config("demi", ...) and vim.lsp.enable("demi").
function M.setup(opts)
  if vim.fn.has("nvim-0.11") == 0 then
    local v = vim.version()
    notify(string.format("needs Neovim 0.11 or newer (this is %d.%d.%d)", v.major, v.minor, v.patch),
      vim.log.levels.ERROR)
    return
  end
  M.options = vim.tbl_deep_extend("force", vim.deepcopy(M.defaults), opts or {})
  vim.lsp.config("demi", M.lsp_config())
  if M.options.enable ~= false then
    vim.lsp.enable("demi")
  end
end

return M

-- :checkhealth demi: Neovim's version, the demi-lsp binary, and a short session with a fresh
-- demi-lsp (the same cmd and settings as vim.lsp.config("demi")): it starts, its model loads,
-- and one completion is timed. Clients already running are reported too.

local M = {}

local health = vim.health
local START_TIMEOUT_MS = 30000    -- initialize answered
local READY_TIMEOUT_MS = 180000   -- the model loaded (a first download can take longer: then it says so)
local COMPLETE_TIMEOUT_MS = 60000 -- one completion
local SAMPLE = "def add(a, b):\n    return "

local function describe(status)
  local parts = { status.state or "?" }
  if type(status.model) == "string" then
    table.insert(parts, "model " .. status.model)
  end
  if type(status.engine) == "string" then
    table.insert(parts, "engine " .. status.engine .. (type(status.server) == "string" and (" " .. status.server) or ""))
  end
  if type(status.latencyMs) == "number" then
    table.insert(parts, string.format("latency %d ms", status.latencyMs))
  end
  return table.concat(parts, ", ")
end

--- A session with a new demi-lsp over vim.lsp.rpc: initialize, wait for demi/status ready,
--- one invoked inline completion, shutdown. Reports as it goes.
local function probe(config)
  local status, exited = nil, nil
  local settings = vim.tbl_get(config, "settings", "demi") or {}
  local rpc = vim.lsp.rpc.start(config.cmd, {
    notification = function(method, params)
      if method == "demi/status" then
        status = params
      end
    end,
    server_request = function(method, params)
      if method == "workspace/configuration" then
        return vim.tbl_map(function() return settings end, params.items or {}), nil
      end
      return vim.NIL, nil  -- progress tokens, showMessageRequest: nothing to say
    end,
    on_exit = function(code, signal)
      exited = { code = code, signal = signal }
    end,
  }, { cwd = vim.fn.getcwd() })

  local function call(method, params, timeout)
    local done, err, result = false, nil, nil
    rpc.request(method, params, function(e, r)
      done, err, result = true, e, r
    end)
    vim.wait(timeout, function() return done or exited ~= nil end, 20)
    if not done then
      return nil, { message = exited and "demi-lsp exited" or string.format("no answer in %d s", timeout / 1000) }
    end
    return result, err
  end

  local started = vim.uv.hrtime()
  local init, err = call("initialize", {
    processId = vim.fn.getpid(),
    rootUri = vim.uri_from_fname(vim.fn.getcwd()),
    capabilities = vim.lsp.protocol.make_client_capabilities(),
    initializationOptions = config.init_options,
    clientInfo = { name = "demi-checkhealth" },
  }, START_TIMEOUT_MS)
  if not init then
    health.error("demi-lsp did not start: " .. (err and err.message or "?")
      .. (exited and string.format(" (exit code %s)", exited.code) or ""),
      { "Run it by hand to see why: " .. table.concat(config.cmd, " ") .. " --version" })
    rpc.terminate()
    return
  end
  local name = init.serverInfo and (init.serverInfo.name .. " " .. (init.serverInfo.version or "")) or "demi-lsp"
  health.ok(string.format("%s started and answered initialize in %d ms", name, (vim.uv.hrtime() - started) / 1e6))
  rpc.notify("initialized", {})

  vim.wait(READY_TIMEOUT_MS, function()
    return exited ~= nil or (status ~= nil and (status.state == "ready" or status.state == "error"))
  end, 50)
  if not status or status.state ~= "ready" then
    local why = status and (status.message ~= vim.NIL and status.message or status.state) or "no demi/status"
    health.error("the model did not load: " .. tostring(why),
      { "`demi doctor` checks the model and the config; settings: :help demi-settings" })
  else
    local load = type(status.loadSeconds) == "number" and string.format(" in %.1f s", status.loadSeconds) or ""
    health.ok("model resolved and loaded" .. load .. ": " .. describe(status))
    local uri = vim.uri_from_fname(vim.fn.tempname() .. ".py")
    rpc.notify("textDocument/didOpen", {
      textDocument = { uri = uri, languageId = "python", version = 1, text = SAMPLE },
    })
    local t0 = vim.uv.hrtime()
    local result, cerr = call("textDocument/inlineCompletion", {
      textDocument = { uri = uri },
      position = { line = 1, character = 11 },
      context = { triggerKind = 1 },
    }, COMPLETE_TIMEOUT_MS)
    local ms = (vim.uv.hrtime() - t0) / 1e6
    if cerr then
      health.error("a completion failed: " .. (cerr.message or vim.inspect(cerr)))
    else
      local item = result and (result.items or result)[1]
      local text = item and (type(item.insertText) == "table" and item.insertText.value or item.insertText) or ""
      local report = health.ok
      if ms > 1000 then
        report = health.warn
      end
      report(string.format("first completion in %d ms (%d characters suggested)", ms, #text),
        ms > 1000 and { "A smaller or quantized model, or a running `demi serve`, is faster (:help demi-settings)" }
        or nil)
    end
  end
  call("shutdown", vim.NIL, 5000)
  rpc.notify("exit", vim.NIL)
  vim.wait(2000, function() return exited ~= nil end, 20)
  if not exited then
    rpc.terminate()
  end
end

function M.check()
  health.start("Neovim")
  local v = vim.version()
  local version = string.format("%d.%d.%d", v.major, v.minor, v.patch)
  if vim.fn.has("nvim-0.11") == 0 then
    health.error("Neovim " .. version .. ": Demi needs 0.11 or newer (vim.lsp.config, lsp/demi.lua)")
    return
  end
  if vim.lsp.inline_completion then
    health.ok("Neovim " .. version .. ": ghost-text inline completion (vim.lsp.inline_completion)")
  else
    health.ok("Neovim " .. version .. ": completions through the completion menu and :DemiComplete"
      .. " (ghost text needs 0.12)")
  end

  health.start("demi-lsp")
  local config = vim.lsp.config.demi
  if not config or type(config.cmd) ~= "table" or not config.cmd[1] then
    health.error("no `cmd` for demi: is editors/neovim on the runtimepath (lsp/demi.lua)?")
    return
  end
  local exe = vim.fn.exepath(config.cmd[1])
  if exe == "" then
    health.error("`" .. config.cmd[1] .. "` is not an executable on PATH",
      { "Install Demi as a tool (pipx install . in its checkout), or point cmd at it:"
        .. " vim.lsp.config('demi', { cmd = { '/path/to/demi/.venv/bin/demi-lsp' } })" })
    return
  end
  health.ok("found " .. exe .. (#config.cmd > 1 and (" (cmd: " .. table.concat(config.cmd, " ") .. ")") or ""))

  local running = vim.lsp.get_clients({ name = "demi" })
  for _, client in ipairs(running) do
    local s = require("demi").status
    health.info(string.format("client %d running for %s%s", client.id, client.root_dir or "(no root)",
      s and (": " .. describe(s)) or ""))
  end
  if #running == 0 then
    health.info("no demi-lsp attached now: vim.lsp.enable('demi') starts one for " ..
      table.concat(config.filetypes or {}, ", "))
  end
  probe(config)
end

return M

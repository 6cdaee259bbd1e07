// A by-hand end-to-end check of the packaged extension in a real VS Code: code-server (VS Code in a
// browser) installs the .vsix, opens a folder in headless Chromium, and this script drives it with
// playwright-core against a real demi-lsp. Not part of `make test`: code-server alone is ~300 MB of
// npm packages with native modules to build. What it needs:
//
//   npm install --unsafe-perm code-server@4.99.4 playwright-core   (in a scratch folder; node 20)
//   apt-get install chromium libkrb5-dev libxkbfile-dev libsecret-1-dev libx11-dev
//   make vscode
//   NODE_PATH=scratch/node_modules CODE_SERVER=scratch/node_modules/.bin/code-server \
//     node editors/vscode/scripts/check_in_code_server.js [editors/vscode/demi-0.1.0.vsix]
//
// (Without the internet, code-server's install needs @vscode/ripgrep's download cache filled by
// hand, e.g. from Debian's ripgrep.) DEMI_LSP (default: .venv/bin/demi-lsp) and CHROMIUM (default:
// /usr/bin/chromium) say where those are. It prints one line per check and exits 1 if one failed.

const { chromium } = require("playwright-core");
const { execFileSync, spawn } = require("child_process");
const fs = require("fs");
const net = require("net");
const os = require("os");
const path = require("path");

const REPO = path.resolve(__dirname, "..", "..", "..");
const VSIX = path.resolve(process.argv[2] || path.join(REPO, "editors", "vscode", "demi-0.1.0.vsix"));
const CODE_SERVER = process.env.CODE_SERVER || "code-server";
const DEMI_LSP = process.env.DEMI_LSP || path.join(REPO, ".venv", "bin", "demi-lsp");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "demi-code-server-"));
const [extensions, userData, workspace] = ["ext", "user", "ws"].map((d) => path.join(dir, d));
const settingsFile = path.join(userData, "User", "settings.json");
const serverLog = path.join(dir, "demi-lsp.log");
const sample = path.join(workspace, "sample.py");
const baseSettings = {
  "security.workspace.trust.enabled": false,
  "workbench.startupEditor": "none",
  "telemetry.telemetryLevel": "off",
  "extensions.autoUpdate": false,
  "editor.autoClosingBrackets": "never",
  "editor.autoClosingQuotes": "never",
  "editor.autoIndent": "none",
  "demi.path": DEMI_LSP,
  "demi.args": ["--log-file", serverLog, "--debug"],
  "demi.maxTokens": 24,
};

const results = [];
function check(name, ok, detail = "") {
  results.push(ok);
  console.log(`${ok ? "ok  " : "FAIL"} ${name}${detail ? `: ${detail}` : ""}`);
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function temperatureWarnings() {
  const text = fs.existsSync(serverLog) ? fs.readFileSync(serverLog, "utf8") : "";
  return text.split("\n").filter((l) => l.includes("logMessage") && l.includes("'temperature'"));
}

async function main() {
  fs.mkdirSync(path.dirname(settingsFile), { recursive: true });
  fs.mkdirSync(workspace);
  fs.writeFileSync(settingsFile, JSON.stringify(baseSettings, null, 2));
  fs.writeFileSync(sample, "import os\n\n\ndef read_lines(path):\n    with open(path) as handle:\n        return handle.read().splitlines()\n\n\n");
  const common = ["--extensions-dir", extensions, "--user-data-dir", userData];
  // Everything code-server and Chromium write stays in `dir` (removed at the end).
  const env = { ...process.env, XDG_DATA_HOME: dir, XDG_CONFIG_HOME: dir, XDG_CACHE_HOME: dir };
  const installed = execFileSync(CODE_SERVER, [...common, "--install-extension", VSIX], { env }).toString();
  check("code-server installs the .vsix", /successfully installed/.test(installed), installed.trim().split("\n").pop());

  const port = await freePort();
  const server = spawn(CODE_SERVER, [...common, "--auth", "none", "--bind-addr", `127.0.0.1:${port}`, "--disable-telemetry", workspace], { env, stdio: "ignore", detached: true });
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"], env });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    for (let i = 0; ; i++) {
      try {
        await page.goto(`http://127.0.0.1:${port}/?folder=${workspace}`);
        break;
      } catch (e) {
        if (i > 40) throw e;
        await page.waitForTimeout(500);
      }
    }
    const item = page.locator(".statusbar-item", { hasText: "Demi" }).first();
    const itemText = async () => (await item.innerText()).trim();
    const ghost = page.locator(".monaco-editor .ghost-text-decoration, .monaco-editor .ghost-text-decoration-preview");
    const ghostWithin = async (ms) => ghost.first().waitFor({ timeout: ms }).then(() => true, () => false);
    const waitFor = async (predicate, ms) => {
      for (const end = Date.now() + ms; Date.now() < end; await page.waitForTimeout(250)) {
        if (await predicate()) return true;
      }
      return false;
    };
    const palette = async (title) => {
      await page.keyboard.press("F1");
      await page.keyboard.type(title);
      await page.waitForTimeout(700);
      await page.keyboard.press("Enter");
    };

    await item.waitFor({ timeout: 60000 });
    await page.locator(".monaco-list-row", { hasText: "sample.py" }).first().click();
    const started = Date.now();
    const ready = await item.locator(".codicon-sparkle").waitFor({ timeout: 180000 }).then(() => true, () => false);
    check("the status item says ready", ready, `${await itemText()} after ${Date.now() - started} ms; ${await item.getAttribute("aria-label")}`);

    const editor = page.locator(".monaco-editor .view-lines").first();
    await editor.click();
    await page.keyboard.press("Control+End");
    await page.keyboard.type("def add(a, b):\n    ");
    let shown = await ghostWithin(20000);
    if (!shown) {
      await page.keyboard.press("Alt+Backslash");
      shown = await ghostWithin(20000);
    }
    check("ghost text while typing (Alt+\\ if not)", shown, JSON.stringify(await ghost.allInnerTexts()));
    await page.keyboard.press("Control+Shift+ArrowRight");
    await page.keyboard.press("Escape");
    await page.keyboard.press("Control+S");
    await page.waitForTimeout(1000);
    const added = fs.readFileSync(sample, "utf8").split("def add(a, b):\n")[1] || "";
    check("Ctrl+Shift+Right accepts the next line", added.trim().length > 0, JSON.stringify(added));

    const enabledSetting = () => (JSON.parse(fs.readFileSync(settingsFile, "utf8"))["demi.inlineCompletion.enabled"]);
    await item.click();
    const off = await waitFor(async () => (await itemText()).includes("off") && enabledSetting() === false, 10000);
    check("a click turns completions off (status text, settings)", off, `${await itemText()}; setting ${enabledSetting()}`);
    await editor.click();
    await page.keyboard.press("Control+End");
    await page.keyboard.type("\ndef sub(a, b):\n    ");
    await page.keyboard.press("Alt+Backslash");
    check("no ghost text while off", !(await ghostWithin(8000)));
    await item.click();
    const on = await waitFor(async () => !(await itemText()).includes("off") && enabledSetting() === true, 10000);
    check("a second click turns them on", on, `${await itemText()}; setting ${enabledSetting()}`);
    await editor.click();
    await page.keyboard.press("Alt+Backslash");
    check("ghost text again", await ghostWithin(20000));
    await page.keyboard.press("Escape");

    await page.keyboard.press("F1");
    await page.keyboard.type("Demi: ");
    await page.waitForTimeout(1000);
    const commands = (await page.locator(".quick-input-list .monaco-list-row").allInnerTexts()).filter((t) => t.startsWith("Demi:"));
    check("the palette has Demi's commands", commands.length >= 5, JSON.stringify(commands));
    await page.keyboard.press("Escape");

    await page.locator(".view-line", { hasText: "def read_lines" }).first().click();
    await palette("Demi: Explain");
    const explained = await page.locator(".tab", { hasText: ".md" }).first().waitFor({ timeout: 180000 }).then(() => true, () => false);
    check("Demi: Explain opens the explanation", explained, JSON.stringify(await page.locator(".tab").allInnerTexts()));

    // Settings reach the running server, and a removed one goes back to its default: a bad value
    // makes the server say which value it kept.
    await palette("Preferences: Open User Settings (JSON)");
    await page.locator(".tab", { hasText: "settings.json" }).first().waitFor();
    const writeSettings = async (extra) => {
      await page.locator(".monaco-editor .view-lines").first().click();
      await page.keyboard.press("Control+A");
      await page.keyboard.insertText(JSON.stringify({ ...baseSettings, ...extra }));
      await page.keyboard.press("Control+S");
    };
    const keptAfterBadValue = async () => {
      const before = temperatureWarnings().length;
      await writeSettings({ "demi.temperature": "hot" });
      await waitFor(async () => temperatureWarnings().length > before, 15000);
      const line = temperatureWarnings().slice(before)[0] || "";
      return (line.match(/kept ([0-9.]+)/) || [])[1];
    };
    const first = await keptAfterBadValue();
    await writeSettings({ "demi.temperature": 0.7 });
    await page.waitForTimeout(3000);
    const afterSet = await keptAfterBadValue();
    await writeSettings({});
    await page.waitForTimeout(3000);
    const afterReset = await keptAfterBadValue();
    check("settings reach the server, a removed one resets", first === "0.0" && afterSet === "0.7" && afterReset === "0.0",
      `kept ${first}, then ${afterSet} after 0.7, then ${afterReset} after removing it`);
    await writeSettings({});
    const sent = fs.readFileSync(serverLog, "utf8").match(/initialization_options=(\{[^}]*\})/);
    check("only the user's server settings are sent", sent && sent[1] === "{'maxTokens': 24}", sent && sent[1]);
  } finally {
    await browser.close();
    const exited = new Promise((resolve) => server.once("exit", resolve));
    process.kill(-server.pid); // its process group: the extension host and demi-lsp too
    await exited;
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return results.every(Boolean) ? 0 : 1;
}

main().then((code) => process.exit(code), (e) => { console.error(e); process.exit(1); });

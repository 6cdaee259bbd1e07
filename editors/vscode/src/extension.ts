// Demi for VS Code: starts demi-lsp and lets vscode-languageclient do the rest.
//
// Inline completion (LSP 3.18 textDocument/inlineCompletion) is built into vscode-languageclient 11:
// VS Code's ghost text asks the server, and cancels the request ($/cancelRequest) as soon as you
// type on. The completion-list fallback is for editors without inline completion, so it is
// turned off here (no duplicate suggestions, no second model run). Code actions "Demi: Explain"
// and "Demi: Refactor..." come from the server; this file adds an input box for the refactor
// instruction, two editor commands, and a status bar item fed by the server's demi/status.

import * as vscode from "vscode";
import {
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  TransportKind,
} from "vscode-languageclient/node";

interface DemiStatus {
  state: string;
  model?: string | null;
  engine?: string | null;
  server?: string | null;
  message?: string | null;
  latencyMs?: number | null;
}

let client: LanguageClient | undefined;
let statusItem: vscode.StatusBarItem | undefined;
let output: vscode.LogOutputChannel | undefined;

function settings(): Record<string, unknown> {
  // Everything under "demi" except how to start the server goes to the server as its settings.
  const all = vscode.workspace.getConfiguration("demi");
  const out: Record<string, unknown> = {};
  for (const key of ["model", "server", "quant", "threads", "maxTokens", "contextTokens", "debounceMs", "enable"]) {
    const value = all.get(key);
    if (value !== undefined && value !== null && value !== "") {
      out[key] = value;
    }
  }
  return out;
}

function showStatus(status: DemiStatus): void {
  if (!statusItem) {
    return;
  }
  const latency = status.latencyMs != null ? ` · ${Math.round(status.latencyMs)} ms` : "";
  const icon = status.state === "ready" ? "$(sparkle)" : status.state === "error" ? "$(error)" : "$(loading~spin)";
  statusItem.text = `${icon} Demi${latency}`;
  const where = status.engine === "http" ? `via ${status.server}` : "in-process";
  statusItem.tooltip = `Demi: ${status.state}${status.model ? ` — ${status.model} (${where})` : ""}` +
    (status.message ? `\n${status.message}` : "");
  statusItem.show();
}

async function askInstruction(target: string): Promise<string | undefined> {
  return vscode.window.showInputBox({
    title: `Demi: refactor ${target}`,
    prompt: "What should change?",
    placeHolder: "e.g. add type hints, return a tuple, handle a missing file",
    ignoreFocusOut: true,
  });
}

function selectionArguments(editor: vscode.TextEditor): [string, unknown] {
  const c = client!;
  return [editor.document.uri.toString(), c.code2ProtocolConverter.asRange(editor.selection)];
}

async function start(context: vscode.ExtensionContext): Promise<void> {
  const config = vscode.workspace.getConfiguration("demi");
  const command = config.get<string>("path") || "demi-lsp";
  const args = config.get<string[]>("args") || [];
  const serverOptions: ServerOptions = {
    run: { command, args, transport: TransportKind.stdio },
    debug: { command, args: [...args, "--debug"], transport: TransportKind.stdio },
  };
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
    initializationOptions: settings(),
    synchronize: { configurationSection: "demi" },
    outputChannel: output,
    middleware: {
      // Inline completion covers this editor: skip the completion-list fallback.
      provideCompletionItem: () => undefined,
      // A refactor code action comes without an instruction: ask for one here.
      executeCommand: async (cmd, cmdArgs, next) => {
        if (cmd === "demi.refactor" && cmdArgs.length < 3) {
          const instruction = await askInstruction("the selection");
          if (!instruction) {
            return undefined;
          }
          return next(cmd, [...cmdArgs.slice(0, 2), instruction]);
        }
        return next(cmd, cmdArgs);
      },
    },
  };
  client = new LanguageClient("demi", "Demi", serverOptions, clientOptions);
  context.subscriptions.push(client.onNotification("demi/status", (status: DemiStatus) => showStatus(status)));
  await client.start();
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  output = vscode.window.createOutputChannel("Demi", { log: true });
  statusItem = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  statusItem.command = "demi.showLog";
  showStatus({ state: "starting" });
  context.subscriptions.push(output, statusItem);

  context.subscriptions.push(
    vscode.commands.registerCommand("demi.explainSelection", async () => {
      const editor = vscode.window.activeTextEditor;
      if (!editor || !client) {
        return;
      }
      // The server opens the explanation (window/showDocument); the answer is the same Markdown.
      await client.sendRequest(ExecuteCommandRequest.type, {
        command: "demi.explain",
        arguments: selectionArguments(editor),
      });
    }),
    vscode.commands.registerCommand("demi.refactorSelection", async () => {
      const editor = vscode.window.activeTextEditor;
      if (!editor || !client) {
        return;
      }
      const instruction = await askInstruction(editor.selection.isEmpty ? "the code at the cursor" : "the selection");
      if (!instruction) {
        return;
      }
      const result = await client.sendRequest(ExecuteCommandRequest.type, {
        command: "demi.refactor",
        arguments: [...selectionArguments(editor), instruction],
      }) as { applied?: boolean; notes?: string[] } | null;
      if (result && !result.applied && result.notes && result.notes.length) {
        vscode.window.showInformationMessage(`Demi: ${result.notes.join("; ")}`);
      }
    }),
    vscode.commands.registerCommand("demi.restart", async () => {
      if (client) {
        await client.restart();
      }
    }),
    vscode.commands.registerCommand("demi.showLog", () => output?.show()),
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (e.affectsConfiguration("demi.path") || e.affectsConfiguration("demi.args")) {
        await client?.stop();
        await start(context);
      }
    }),
  );
  await start(context);
}

export async function deactivate(): Promise<void> {
  if (client) {
    await client.stop();
  }
}

// Demi for VS Code: starts demi-lsp and lets vscode-languageclient do the rest.
//
// Inline completion (LSP 3.18 textDocument/inlineCompletion) is built into vscode-languageclient 11:
// VS Code's ghost text asks the server, and cancels the request ($/cancelRequest) as soon as you
// type on. The completion-list fallback is for editors without inline completion, so it is
// turned off here (no duplicate suggestions, no second model run). Code actions "Demi: Explain"
// and "Demi: Refactor..." come from the server; this file adds an input box for the refactor
// instruction, the editor commands, the on/off switch for inline completions (the setting
// demi.inlineCompletion.enabled: when off, VS Code's requests never reach the server), and the
// status bar item (status.ts). Which settings reach the server, and when, is settings.ts's job.

import * as vscode from "vscode";
import {
  DidChangeConfigurationNotification,
  ExecuteCommandRequest,
  LanguageClient,
  LanguageClientOptions,
  ServerOptions,
  TransportKind,
} from "vscode-languageclient/node";
import { ServerSettings } from "./settings";
import { DemiStatus, StatusItem } from "./status";

const ENABLED = "inlineCompletion.enabled";

let client: LanguageClient | undefined;
let status: StatusItem | undefined;
let output: vscode.LogOutputChannel | undefined;
let serverSettings: ServerSettings | undefined;

function completionsEnabled(): boolean {
  return vscode.workspace.getConfiguration("demi").get<boolean>(ENABLED, true);
}

async function toggleCompletions(): Promise<void> {
  const config = vscode.workspace.getConfiguration("demi");
  const values = config.inspect<boolean>(ENABLED);
  // Kept where the user keeps it: the workspace's settings if it has this one, else the user's.
  const target =
    values?.workspaceValue !== undefined ? vscode.ConfigurationTarget.Workspace : vscode.ConfigurationTarget.Global;
  const enabled = !completionsEnabled();
  await config.update(ENABLED, enabled, target);
  if (!enabled) {
    await vscode.commands.executeCommand("editor.action.inlineSuggest.hide");
  }
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

function pushSettings(): void {
  if (!client || !serverSettings || !client.isRunning()) {
    return;
  }
  const changes = serverSettings.changes();
  if (Object.keys(changes).length) {
    void client.sendNotification(DidChangeConfigurationNotification.type, { settings: changes });
  }
}

async function start(context: vscode.ExtensionContext): Promise<void> {
  const config = vscode.workspace.getConfiguration("demi");
  const command = config.get<string>("path") || "demi-lsp";
  const args = config.get<string[]>("args") || [];
  const settings = serverSettings!;
  const serverOptions: ServerOptions = {
    run: { command, args, transport: TransportKind.stdio },
    debug: { command, args: [...args, "--debug"], transport: TransportKind.stdio },
  };
  const clientOptions: LanguageClientOptions = {
    documentSelector: [{ scheme: "file" }, { scheme: "untitled" }],
    // A function: a restarted server gets the settings of the moment.
    initializationOptions: () => settings.initial(),
    outputChannel: output,
    middleware: {
      // The on/off switch: while off, no request reaches the server (and no model runs).
      provideInlineCompletionItems: (document, position, ctx, token, next) =>
        completionsEnabled() ? next(document, position, ctx, token) : undefined,
      // Inline completion covers this editor: skip the completion-list fallback.
      provideCompletionItem: () => undefined,
      // The server asks for section "demi": it gets its own settings, not the extension's.
      workspace: {
        configuration: (params, token, next) =>
          params.items.every((item) => item.section === "demi")
            ? params.items.map(() => settings.current())
            : next(params, token),
      },
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
  context.subscriptions.push(client.onNotification("demi/status", (s: DemiStatus) => status?.setStatus(s)));
  await client.start();
  if (!config.get<boolean>("statusNotifications", true)) {
    status?.setStatus({ state: "running" }); // the server will not say more
  }
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  output = vscode.window.createOutputChannel("Demi", { log: true });
  serverSettings = new ServerSettings(context.extension.packageJSON);
  status = new StatusItem("demi.toggleCompletions", { log: "demi.showLog", restart: "demi.restart" });
  status.setEnabled(completionsEnabled());
  context.subscriptions.push(output, status);

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
      const result = (await client.sendRequest(ExecuteCommandRequest.type, {
        command: "demi.refactor",
        arguments: [...selectionArguments(editor), instruction],
      })) as { applied?: boolean; notes?: string[] } | null;
      if (result && !result.applied && result.notes && result.notes.length) {
        vscode.window.showInformationMessage(`Demi: ${result.notes.join("; ")}`);
      }
    }),
    vscode.commands.registerCommand("demi.toggleCompletions", toggleCompletions),
    vscode.commands.registerCommand("demi.restart", async () => {
      if (client) {
        await client.restart();
      }
    }),
    vscode.commands.registerCommand("demi.showLog", () => output?.show()),
    vscode.workspace.onDidChangeConfiguration(async (e) => {
      if (e.affectsConfiguration(`demi.${ENABLED}`)) {
        status?.setEnabled(completionsEnabled());
      }
      if (e.affectsConfiguration("demi.path") || e.affectsConfiguration("demi.args")) {
        await client?.stop();
        await start(context);
      } else if (serverSettings?.affectedBy(e)) {
        pushSettings();
      }
    }),
    vscode.workspace.onDidGrantWorkspaceTrust(pushSettings),
  );
  await start(context);
}

export async function deactivate(): Promise<void> {
  if (client) {
    await client.stop();
  }
}

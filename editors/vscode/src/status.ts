// The status bar item: the server's state (from its demi/status notifications) and whether Demi's
// inline completions are on. A click turns them on or off; the tooltip links the log and a restart.

import * as vscode from "vscode";

export interface DemiStatus {
  state: string;
  model?: string | null;
  engine?: string | null;
  server?: string | null;
  message?: string | null;
  latencyMs?: number | null;
}

export class StatusItem implements vscode.Disposable {
  private readonly item: vscode.StatusBarItem;
  private status: DemiStatus = { state: "starting" };
  private enabled = true;

  constructor(toggleCommand: string, private readonly linkCommands: { log: string; restart: string }) {
    this.item = vscode.window.createStatusBarItem("demi.status", vscode.StatusBarAlignment.Right, 100);
    this.item.name = "Demi";
    this.item.command = toggleCommand;
  }

  setStatus(status: DemiStatus): void {
    this.status = status;
    this.render();
  }

  setEnabled(enabled: boolean): void {
    this.enabled = enabled;
    this.render();
  }

  dispose(): void {
    this.item.dispose();
  }

  private render(): void {
    const { state, model, engine, server, message, latencyMs } = this.status;
    let icon = "$(loading~spin)";
    if (state === "error") {
      icon = "$(error)";
    } else if (!this.enabled) {
      icon = "$(circle-slash)";
    } else if (state === "ready" || state === "running") {
      icon = "$(sparkle)";
    }
    const latency = this.enabled && latencyMs != null ? ` · ${Math.round(latencyMs)} ms` : "";
    this.item.text = `${icon} Demi${this.enabled ? "" : " off"}${latency}`;
    const onOff = `inline completions ${this.enabled ? "on" : "off"}`;
    this.item.accessibilityInformation = { label: `Demi: ${state}${model ? `, ${model}` : ""}, ${onOff}`, role: "button" };

    const where = engine === "http" ? `via ${server}` : "in-process";
    const tooltip = new vscode.MarkdownString("", true);
    tooltip.isTrusted = { enabledCommands: [this.linkCommands.log, this.linkCommands.restart] };
    tooltip.appendMarkdown(`**Demi**: ${state}`);
    if (model) {
      tooltip.appendText(` — ${model} (${where})`);
    }
    if (message) {
      tooltip.appendMarkdown("\n\n").appendText(message);
    }
    tooltip.appendMarkdown(
      `\n\nInline completions are **${this.enabled ? "on" : "off"}**: click to turn them ${this.enabled ? "off" : "on"}.`,
    );
    tooltip.appendMarkdown(
      `\n\n[Show the log](command:${this.linkCommands.log}) · [Restart the server](command:${this.linkCommands.restart})`,
    );
    this.item.tooltip = tooltip;
    this.item.show();
  }
}

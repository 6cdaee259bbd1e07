// Which of the extension's settings go to demi-lsp, and how.
//
// Every setting the manifest (package.json) declares under "demi." is the server's, except the few
// in CLIENT_SETTINGS, which only this extension reads. Only what the user set in VS Code is sent: a
// setting left at its default leaves Demi's config file and DEMI_* variables in charge, as they are
// for the terminal tools. A setting set before and removed since is sent once more with its
// default, so the running server lets go of it too.

import * as vscode from "vscode";

/** Settings the extension keeps to itself (the rest of "demi." goes to the server). */
export const CLIENT_SETTINGS: readonly string[] = ["inlineCompletion.enabled", "path", "args"];

interface Manifest {
  contributes?: { configuration?: { properties?: Record<string, { default?: unknown }> } };
  capabilities?: { untrustedWorkspaces?: { restrictedConfigurations?: string[] } };
}

export class ServerSettings {
  private readonly defaults = new Map<string, unknown>();
  private readonly restricted: Set<string>;
  private sent = new Set<string>();

  constructor(manifest: Manifest) {
    const properties = manifest.contributes?.configuration?.properties ?? {};
    for (const [name, schema] of Object.entries(properties)) {
      const key = name.replace(/^demi\./, "");
      if (!CLIENT_SETTINGS.includes(key)) {
        this.defaults.set(key, schema.default ?? null);
      }
    }
    const restricted = manifest.capabilities?.untrustedWorkspaces?.restrictedConfigurations ?? [];
    this.restricted = new Set(restricted.map((name) => name.replace(/^demi\./, "")));
  }

  /** The server's settings the user set (a workspace's over the user's), keyed as the manifest spells them. */
  current(): Record<string, unknown> {
    const config = vscode.workspace.getConfiguration("demi");
    const out: Record<string, unknown> = {};
    for (const key of this.defaults.keys()) {
      const value = this.userValue(config, key);
      if (value !== undefined) {
        out[key] = value;
      }
    }
    return out;
  }

  /** Whether a configuration change touches a setting of the server's. */
  affectedBy(event: vscode.ConfigurationChangeEvent): boolean {
    return [...this.defaults.keys()].some((key) => event.affectsConfiguration(`demi.${key}`));
  }

  /** For initializationOptions: what a newly started server gets; later changes are measured from it. */
  initial(): Record<string, unknown> {
    const now = this.current();
    this.sent = new Set(Object.keys(now));
    return now;
  }

  /** For workspace/didChangeConfiguration: the current settings, and the defaults of those unset since. */
  changes(): Record<string, unknown> {
    const now = this.current();
    const out: Record<string, unknown> = { ...now };
    for (const key of this.sent) {
      if (!(key in now)) {
        out[key] = this.defaults.get(key) ?? null;
      }
    }
    this.sent = new Set(Object.keys(now));
    return out;
  }

  private userValue(config: vscode.WorkspaceConfiguration, key: string): unknown {
    const values = config.inspect(key);
    if (!values) {
      return undefined;
    }
    // A workspace VS Code does not trust may not pick the program, the server or the model.
    const fromWorkspace = vscode.workspace.isTrusted || !this.restricted.has(key);
    if (fromWorkspace && values.workspaceValue !== undefined) {
      return values.workspaceValue;
    }
    return values.globalValue;
  }
}

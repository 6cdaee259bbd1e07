"""The chat screen's stylesheet (Textual CSS), kept in Python so it ships with the package."""

CSS = """
Screen {
    layout: vertical;
}

#body {
    height: 1fr;
}

#sidebar {
    width: 34;
    height: 1fr;
    border-right: vkey $panel-lighten-2;
    padding: 0 0 0 1;
}

#sidebar.-hidden {
    display: none;
}

#search {
    margin: 0 1 0 0;
}

#sessions {
    height: 1fr;
    border: none;
    padding: 0;
    background: transparent;
}

#history-state {
    height: auto;
    max-height: 6;
    color: $text-warning;
}

#main {
    width: 1fr;
    height: 1fr;
}

#log {
    height: 1fr;
    padding: 0 1;
}

#welcome {
    color: $text-muted;
    padding: 1 1;
}

UserMessage {
    margin: 1 0 0 0;
    padding: 0 1;
    border-left: outer $accent;
    background: $boost;
}

AssistantMessage, DiffProposal {
    height: auto;
    margin: 1 0 0 0;
    padding: 0 0 0 1;
    border-left: outer $success;
}

DiffProposal {
    border-left: outer $warning;
}

AssistantMessage Markdown, DiffProposal Markdown, HelpNotice {
    margin: 0;
    padding: 0 1 0 0;
}

AssistantMessage .piece {
    height: auto;
}

AssistantMessage .piece-end {
    height: 0;
}

AssistantMessage.-folded .piece {
    display: none;
}

.who {
    color: $text-muted;
    text-style: bold;
}

.meta {
    color: $text-muted;
}

.hit {
    background: $warning 20%;
}

DiffProposal .buttons {
    height: auto;
    margin: 1 0 0 0;
}

DiffProposal Button {
    margin: 0 2 0 0;
}

Notice {
    margin: 1 0 0 0;
    padding: 0 1;
    border-left: outer $primary;
}

Notice.-error {
    color: $text-error;
    border-left: outer $error;
}

Notice.-warning {
    color: $text-warning;
    border-left: outer $warning;
}

HelpNotice {
    margin: 1 0 0 0;
}

#hints {
    height: auto;
    max-height: 4;
    padding: 0 1;
    color: $text-muted;
    display: none;
}

#hints.-shown {
    display: block;
}

#queued {
    height: auto;
    max-height: 6;
    padding: 0 1;
    border-left: outer $accent;
    margin: 0 1;
    display: none;
}

#queued.-shown {
    display: block;
}

PromptInput {
    height: auto;
    min-height: 3;
    max-height: 12;
    border: round $primary;
    padding: 0 1;
}

#status {
    height: 1;
    padding: 0 1;
    background: $panel;
    color: $text;
}

RenameScreen, ConfirmScreen {
    align: center middle;
}

.dialog {
    width: 60;
    height: auto;
    padding: 1 2;
    border: round $primary;
    background: $surface;
}

.dialog .buttons {
    height: auto;
    margin: 1 0 0 0;
}

.dialog Button {
    margin: 0 2 0 0;
}
"""

"""The server's copies of the editor's documents: pygls's, with LSP's rules for lines and edits."""

from __future__ import annotations

import logging

from lsprotocol import types as t
from pygls.workspace import TextDocument, Workspace

from demi.lsp.textutil import lsp_lines, offset_at, without_lone_surrogates

log = logging.getLogger("demi.lsp")


class LspTextDocument(TextDocument):
    """pygls's document with LSP's line breaks and LSP's reading of a change's range.

    pygls splits lines with str.splitlines, which also breaks at form feeds and U+2028, so an
    edit after one would land on the wrong line. Its ranged change also goes wrong at the edges:
    a character past the end of a line lands after the line break (or, on the last line, one
    character early), a backwards range duplicates text or drops the insertion, and a position
    inside a surrogate pair splits it. Here a range is read as editors write it (`offset_at`:
    past the line's end is the line's end, past the last line is the end of the text, a backwards
    range is the same range forwards). Lone surrogates, which JSON can carry and UTF-8 cannot,
    become U+FFFD (same UTF-16 length, so later positions still agree).
    """

    @property
    def lines(self) -> tuple[str, ...]:
        return lsp_lines(self.source)

    def apply_change(self, change: t.TextDocumentContentChangeEvent) -> None:
        clean = without_lone_surrogates(change.text)
        if clean is not change.text:
            log.warning("%s: a change with lone surrogates (not Unicode text): each became U+FFFD", self.uri)
            change.text = clean
        super().apply_change(change)

    def _apply_incremental_change(self, change: t.TextDocumentContentChangePartial) -> None:
        text, lines, enc = self.source, self.lines, self._position_codec.encoding
        start, end = change.range.start, change.range.end
        a = offset_at(text, start.line, start.character, enc, lines)
        b = offset_at(text, end.line, end.character, enc, lines)
        if b < a:
            a, b = b, a
        self._source = text[:a] + change.text + text[b:]


class DemiWorkspace(Workspace):
    def _create_text_document(
        self, doc_uri: str, source: str | None = None, version: int | None = None, language_id: str | None = None
    ) -> TextDocument:
        if source is not None:
            clean = without_lone_surrogates(source)
            if clean is not source:
                log.warning("%s: opened with lone surrogates (not Unicode text): each became U+FFFD", doc_uri)
                source = clean
        return LspTextDocument(
            doc_uri,
            source=source,
            version=version,
            language_id=language_id,
            sync_kind=self._sync_kind,
            position_codec=self._position_codec,
        )

"""Turning a model's raw FIM output into the text an editor should insert.

Models run on: they repeat the code after the cursor, start the next function, or stop
mid-expression. Each step here fixes one of those and is tested on golden strings:

- `decide_mode`: one line or several, from what surrounds the cursor;
- `stop_at_block_end`: cut where the current block ends (indentation; braces in C-like code);
- `drop_repeats`: drop lines that repeat the line before the cursor or the lines after it;
- `cut_loop`: cut a tail where the model got stuck repeating itself ("iter(iter(iter(...");
- `trim_suffix_overlap`: drop an ending the text after the cursor already has;
- `balance_brackets`: close brackets the completion opened and left open;
- `close_tags`: in HTML, Vue and JSX, close the elements it opened, unless the text after the
  cursor already does;
- `syntax_trim`: with tree-sitter, drop trailing lines that make the file parse worse.

In markup the block is an element: the completion ends where it closes the element the cursor
is in (before that closing tag when the file already has it). A cursor in a region written in
another language (an HTML `<script>` or `<style>`, a Vue SFC's blocks, MDX's JSX and fences; see
`embedded.py`) gets that language's rules, on that region's text.

`BlockWatcher` applies the block rule while tokens stream, so generation stops early.
`loop_tails` and `repeat_hold` also serve `loop_guard`, which guards chat answers and explanations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from demi.assistant.embedded import focus
from demi.assistant.languages import LangSpec, parser_for
from demi.assistant.markup import closer, open_tags, scan_tags, unmatched_closers

OPENERS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {")": "(", "]": "[", "}": "{"}
_PY_CONTINUATIONS = ("else", "elif", "except", "finally", "case")
_PUNCT_ONLY = set(")]};,:. \t'\"`")


# -- small helpers -------------------------------------------------------------------------------


def indent_of(line: str) -> int:
    return len(line.expandtabs(4)) - len(line.expandtabs(4).lstrip(" "))


def current_line(prefix: str) -> str:
    """Text of the cursor's line before the cursor."""
    return prefix[prefix.rfind("\n") + 1 :]


def rest_of_line(suffix: str) -> str:
    """Text of the cursor's line after the cursor."""
    nl = suffix.find("\n")
    return suffix if nl < 0 else suffix[:nl]


def _comment_marker(spec: LangSpec | None) -> str:
    return spec.line_comment if spec is not None else "#"


def _scanner(spec: LangSpec | None) -> BracketScanner:
    return BracketScanner(_comment_marker(spec), spec.block_comment if spec is not None else None)


class BracketScanner:
    """Brackets outside strings and comments; state carries across pieces of text. `block`:
    the language's block comment markers where it has no line comment (CSS `/* */`)."""

    def __init__(self, comment: str = "#", block: tuple[str, str] | None = None):
        self.comment = comment
        self.block = block
        self.quote: str | None = None
        self.in_comment = False
        self.in_block: str | None = None  # the end marker of the block comment the text is in

    def scan(self, text: str):
        """Yield (index, char) of every bracket in `text` that is code."""
        i, n = 0, len(text)
        while i < n:
            ch = text[i]
            if self.in_block is not None:
                end = text.find(self.in_block, i)
                if end < 0:
                    return
                i, self.in_block = end + len(self.in_block), None
                continue
            if self.block is not None and self.quote is None and text.startswith(self.block[0], i):
                self.in_block = self.block[1]
                i += len(self.block[0])
                continue
            if self.in_comment:
                if ch == "\n":
                    self.in_comment = False
                i += 1
                continue
            if self.quote is not None:
                if ch == "\\":
                    i += 2
                    continue
                if text.startswith(self.quote, i):
                    i += len(self.quote)
                    self.quote = None
                    continue
                if ch == "\n" and len(self.quote) == 1 and self.quote != "`":
                    self.quote = None  # an unterminated one-line string ends with its line
                i += 1
                continue
            if self.comment and text.startswith(self.comment, i):
                self.in_comment = True
                i += len(self.comment)
                continue
            if ch in "\"'`":
                triple = text[i : i + 3]
                self.quote = triple if triple in ('"""', "'''") else ch
                i += len(self.quote)
                continue
            if ch in OPENERS or ch in CLOSERS:
                yield i, ch
            i += 1


def open_stack(text: str, comment: str = "#") -> list[str]:
    """Openers left unclosed at the end of `text` (innermost last); stray closers are ignored."""
    stack: list[str] = []
    for _, ch in BracketScanner(comment).scan(text):
        if ch in OPENERS:
            stack.append(ch)
        elif stack and stack[-1] == CLOSERS[ch]:
            stack.pop()
    return stack


# -- mode ----------------------------------------------------------------------------------------


_CLOSING_TAGS = re.compile(r"(\s*</[\w.:-]*>)+[\s);,]*")


def decide_mode(prefix: str, suffix: str, spec: LangSpec | None = None) -> str:
    """ "multi" on an empty line or after a block opener with nothing after the cursor (in markup,
    nothing but closing tags: `<div>|</div>`); else "single"."""
    spec, prefix, suffix = focus(prefix, suffix, spec)
    after = rest_of_line(suffix).strip()
    before = current_line(prefix).rstrip()
    if spec is not None and (spec.markup or spec.jsx) and before.endswith(">") and _CLOSING_TAGS.fullmatch(after):
        if open_tags(before, not spec.markup):
            return "multi"  # between an element's tags: its content
    if after and not set(after) <= _PUNCT_ONLY:
        return "single"  # text follows the cursor on this line: finish the line only
    if not before.strip():
        return "multi"
    opener = spec.block_open if spec is not None else ""
    if spec is not None and spec.name == "css":  # `color:` starts a value, not a block
        return "multi" if before.endswith("{") else "single"
    if before.endswith((":", "{", "=>")) or (opener and before.endswith(opener)):
        return "multi"
    return "single"


# -- block end -----------------------------------------------------------------------------------


@dataclass
class _Floor:
    base: int  # indentation of the statement the completion belongs to
    opens_block: bool  # the cursor line opens a block (its body is the completion)


def _floor(prefix: str, completion: str, spec: LangSpec | None) -> _Floor:
    before = current_line(prefix)
    if before.strip():
        whole = before + completion.split("\n", 1)[0]
        opens = whole.rstrip().endswith(spec.block_open if spec is not None else ":") or whole.rstrip().endswith(
            ("{", ":")
        )
        return _Floor(indent_of(before), opens)
    first = before + completion.split("\n", 1)[0]
    return _Floor(indent_of(first), False)


def _indent_cut(prefix: str, completion: str, spec: LangSpec | None) -> int | None:
    """Where indentation says the completion leaves the current block (index into it)."""
    floor = _floor(prefix, completion, spec)
    deeper = floor.opens_block
    pos = completion.find("\n")
    if pos < 0:
        return None
    python = spec is None or spec.indent_blocks
    while pos >= 0:
        start = pos + 1
        end = completion.find("\n", start)
        line = completion[start:] if end < 0 else completion[start:end]
        if line.strip():
            ind = indent_of(line)
            word = line.strip().split(" ", 1)[0].rstrip(":")
            continuation = python and word in _PY_CONTINUATIONS and ind == floor.base
            if ind < floor.base or (ind == floor.base and deeper and not continuation):
                return pos
            if ind > floor.base:
                deeper = True
        if end < 0:
            return None
        pos = end
    return None


def _brace_cut(prefix: str, completion: str, suffix: str, spec: LangSpec) -> int | None:
    """C-like code: the index where the completion closes the block it is in, or ends the line
    that finishes a block (or call) it opened; None when it does neither."""
    scanner = _scanner(spec)
    for _ in scanner.scan(current_line(prefix)):  # carry string/comment state of the cursor line
        pass
    depth, opened, pending = 0, False, -1  # pending: end of the line where a block closed
    for i, ch in scanner.scan(completion):
        if pending >= 0 and i > pending:
            return pending
        if ch in OPENERS:
            depth += 1
            opened = opened or ch == "{"
            pending = -1
            continue
        depth -= 1
        if depth < 0:
            line_start = completion.rfind("\n", 0, i) + 1
            end = completion.find("\n", i)
            if ch == "}" and suffix.lstrip().startswith("}"):
                # the file already closes this block: stop before the closer and its line
                return line_start - 1 if line_start > 0 and not completion[line_start:i].strip() else i
            return len(completion) if end < 0 else end
        if depth == 0 and opened:
            end = completion.find("\n", i)
            pending = len(completion) if end < 0 else end
    return pending if pending >= 0 and depth == 0 else None


def _tag_cut(completion: str, suffix: str, jsx: bool) -> int | None:
    """Markup: the index where the completion closes the element the cursor is in: before that
    closing tag (and its line) when the text after the cursor closes it already, else at the end
    of its line; None when the completion closes no element it did not open."""
    opened: list[str] = []
    for tag in scan_tags(completion, jsx):
        if tag.kind == "open":
            opened.append(tag.name)
        elif tag.kind == "close" and tag.name in opened:
            del opened[len(opened) - 1 - opened[::-1].index(tag.name) :]
        elif tag.kind == "close":
            closers = unmatched_closers(suffix, jsx)
            if closers and closers[0].name == tag.name:  # the file closes it: stop before the model's closer
                line_start = completion.rfind("\n", 0, tag.start) + 1
                if rest_of_line(suffix).lstrip().startswith(closer(tag.name)):
                    return tag.start  # its closer is right of the cursor: keep the line break before it
                return (
                    line_start - 1 if line_start > 0 and not completion[line_start : tag.start].strip() else tag.start
                )
            end = completion.find("\n", tag.end)
            return len(completion) if end < 0 else end
    return None


def stop_at_block_end(prefix: str, completion: str, suffix: str, spec: LangSpec | None) -> str:
    """Cut a multi-line completion where the block it belongs to ends."""
    cut: int | None
    if spec is not None and spec.markup:
        cut = _tag_cut(completion, suffix, jsx=False)
    elif spec is not None and not spec.indent_blocks:
        cut = _brace_cut(prefix, completion, suffix, spec)
        if spec.jsx:  # JSX: an element closed before a brace is
            tag = _tag_cut(completion, suffix, jsx=True)
            cut = tag if cut is None or (tag is not None and tag < cut) else cut
    else:
        cut = _indent_cut(prefix, completion, spec)
    return completion if cut is None else completion[: max(0, cut)]


class BlockWatcher:
    """Fed streamed text; `done` turns true once the block rule has cut the text (stop early)."""

    def __init__(self, prefix: str, suffix: str, spec: LangSpec | None, mode: str):
        spec, prefix, suffix = focus(prefix, suffix, spec)  # an embedded region's language and text
        self.prefix, self.suffix, self.spec, self.mode = prefix, suffix, spec, mode
        self.text = ""
        self.done = False

    def push(self, piece: str) -> bool:
        self.text += piece
        if self.done:
            return True
        if "\n" not in piece:  # a model stuck in a loop would run to the token cap: stop it now
            # (two copies more than the final cut needs: a literal still being written may repeat)
            self.done = len(self.text) >= 12 and loop_start(self.text, LOOP_MIN_REPEATS + 2) is not None
            return self.done
        if self.mode == "single":
            self.done = bool(self.text.strip()) and "\n" in self.text.lstrip("\n")
            return self.done
        # judge only whole lines: the last one may still grow
        whole = self.text[: self.text.rfind("\n")]
        self.done = len(stop_at_block_end(self.prefix, whole, self.suffix, self.spec)) < len(whole)
        return self.done


# -- repeats -------------------------------------------------------------------------------------

LOOP_MIN_REPEATS, LOOP_MAX_UNIT, LOOP_MIN_SHARE = 4, 40, 0.4


def _periodic_start(text: str, unit: int) -> int:
    """Where the tail of `text` that repeats with period `unit` begins (a first copy included)."""
    i = len(text) - 1
    while i >= unit and text[i] == text[i - unit]:
        i -= 1
    return i + 1 - unit if i >= unit else 0


def _loop_unit(text: str, start: int, unit: int) -> bool:
    """A unit that can loop: at least two different characters, a letter or digit among them."""
    chars = set(text[start : start + unit])
    return len(chars) >= 2 and any(c.isalnum() for c in chars)


def loop_tails(
    text: str,
    repeats: int = LOOP_MIN_REPEATS,
    max_unit: int = LOOP_MAX_UNIT,
    min_share: float = LOOP_MIN_SHARE,
    min_chars: int | None = None,
) -> list[tuple[int, int]]:
    """(start, unit) of every looping tail: the text from `start` on is `repeats` or more copies of
    one unit of 2 to `max_unit` characters (see `_loop_unit`; maybe a partial copy last), covering
    at least `min_share` of the text, or at least `min_chars` characters when that is given."""
    n = len(text)
    out = []
    for unit in range(2, min(max_unit, n // repeats) + 1):
        start = _periodic_start(text, unit)  # text[start:] repeats with period `unit`
        long_enough = n - start >= min_share * n or (min_chars is not None and n - start >= min_chars)
        if (n - start) // unit < repeats or not long_enough:
            continue
        if _loop_unit(text, start, unit):
            out.append((start, unit))
    return out


def loop_start(text: str, repeats: int = LOOP_MIN_REPEATS) -> int | None:
    """Where a looping tail begins: the text ends in `repeats` or more copies of one unit of 2-40
    characters, at least two different ones and a letter or digit among them (and maybe a
    partial copy), covering at least 40% of the text; None when it does not. Small models fall
    into such loops and run to the token cap; code that repeats on purpose ("[0, 0, 0, 0]",
    "# ====", "0xffffffff") ends in something else or repeats a single character."""
    return min((start for start, _ in loop_tails(text, repeats)), default=None)


def repeat_hold(text: str, max_unit: int, slack: int) -> int:
    """How much of a growing text can be passed on without showing more than `slack` characters of
    the second copy of a loop that may still form: the end of the first copy of every tail that
    already repeats (period 2 to `max_unit`) for `slack` characters or more, else the whole text.
    Normal prose holds back little or nothing; a loop's repeats stay held back until it is cut."""
    n = len(text)
    hold = n
    for unit in range(2, min(max_unit, n - slack) + 1):
        if text[n - slack : n] != text[n - slack - unit : n - unit]:
            continue
        start = _periodic_start(text, unit)
        if start + unit < hold and _loop_unit(text, start, unit):
            hold = start + unit
    return hold


def cut_loop(completion: str) -> str:
    """The completion without a looping tail (see `loop_start`), trailing blanks dropped."""
    start = loop_start(completion)
    return completion if start is None else completion[:start].rstrip(" \t")


def _meaningful(line: str) -> bool:
    s = line.strip()
    return bool(s) and not set(s) <= _PUNCT_ONLY


def drop_repeats(prefix: str, completion: str, suffix: str) -> str:
    """Drop leading lines that repeat the lines before the cursor, and cut where the completion
    starts repeating the lines after the cursor's line."""
    lines = completion.split("\n")
    before = prefix.split("\n")
    if not current_line(prefix).strip():  # at the start of a new line: the model may echo the last one
        prev = [ln.strip() for ln in before[:-1] if ln.strip()]
        for m in range(min(len(lines), len(prev), 8), 0, -1):  # the longest echo of the last m lines
            if [ln.strip() for ln in lines[:m]] == prev[-m:]:
                del lines[:m]
                break
        if not lines:
            return ""
        typed = current_line(prefix)
        if len(lines) < len(completion.split("\n")) and typed:  # the cursor line's indent is typed
            lead = len(lines[0]) - len(lines[0].lstrip(" \t"))
            lines[0] = lines[0][min(lead, len(typed)) :]
    next_lines = [ln.strip() for ln in suffix.split("\n")[1:] if ln.strip()][:3]
    if next_lines and _meaningful(next_lines[0]):
        for i, line in enumerate(lines):
            if i == 0 and current_line(prefix).strip():
                continue  # the first line finishes the cursor's line
            if line.strip() == next_lines[0]:
                following = [ln.strip() for ln in lines[i + 1 :] if ln.strip()]
                if len(next_lines) == 1 or not following or following[0] == next_lines[1] or len(next_lines[0]) >= 12:
                    lines = lines[:i]
                    while lines and not lines[-1].strip():
                        lines.pop()
                    break
    return "\n".join(lines)


# -- overlap with the suffix ---------------------------------------------------------------------


def _over_closed(line: str, comment: str) -> bool:
    depth: dict[str, int] = {}
    for _, ch in BracketScanner(comment).scan(line):
        if ch in OPENERS:
            depth[ch] = depth.get(ch, 0) + 1
        else:
            o = CLOSERS[ch]
            depth[o] = depth.get(o, 0) - 1
            if depth[o] < 0:
                return True
    return False


def _odd_quotes(line: str) -> bool:
    return any(line.count(q) % 2 for q in "\"'`")


def trim_suffix_overlap(prefix: str, completion: str, suffix: str, spec: LangSpec | None = None) -> str:
    """Remove the end of the completion that the rest of the cursor's line already has."""
    after = rest_of_line(suffix)
    if not after.strip() or not completion:
        return completion
    comment = _comment_marker(spec)
    line_before = current_line(prefix)
    body = completion.rstrip()
    for k in range(len(after), 0, -1):
        piece = after[:k]
        if not piece.strip() or not body.endswith(piece.rstrip()):
            continue
        cut = body[: len(body) - len(piece.rstrip())]
        if set(piece.strip()) <= set(")]}\"'`"):
            # closers and quotes: only when the line would otherwise close too much
            full = current_line(line_before + completion) + after
            trimmed = current_line(line_before + cut) + after
            if (_over_closed(full, comment) and not _over_closed(trimmed, comment)) or (
                _odd_quotes(full) and not _odd_quotes(trimmed)
            ):
                return cut
            continue
        return cut
    return completion


# -- brackets ------------------------------------------------------------------------------------


def balance_brackets(prefix: str, completion: str, spec: LangSpec | None = None, mode: str = "single") -> str:
    """Close, innermost first, the brackets the completion opened and did not close."""
    scanner = _scanner(spec)
    for _ in scanner.scan(current_line(prefix)):
        pass
    if scanner.quote is not None and len(scanner.quote) == 1:
        return completion  # the cursor is inside a string: brackets there are text
    own: list[tuple[str, int]] = []  # (opener, index)
    for i, ch in scanner.scan(completion):
        if ch in OPENERS:
            own.append((ch, i))
        elif own and own[-1][0] == CLOSERS[ch]:
            own.pop()
    if not own or scanner.quote is not None or scanner.in_comment and "\n" not in completion[-1:]:
        return completion
    out = completion.rstrip() if mode == "multi" else completion
    for opener, index in reversed(own):
        if opener == "{" and mode == "multi":
            line = current_line(prefix + completion[:index])
            out += "\n" + " " * indent_of(line) + "}"
        else:
            out += OPENERS[opener]
    return out


def _closed_by_suffix(prefix: str, completion: str, suffix: str, spec: LangSpec | None = None) -> bool:
    """Whether the code after the cursor already closes what the completion leaves open: a line
    that opens a call the next lines continue (`items = sorted(` before `    data, key=len)`) is
    right as it is, and closing it would break the file. Counted as closers in `suffix` without an
    opener there, less openers in `prefix` without a closer there."""

    def unclosed(text: str, scanner: BracketScanner) -> int:
        stack: list[str] = []
        for _, ch in scanner.scan(text):
            if ch in OPENERS:
                stack.append(ch)
            elif stack and stack[-1] == CLOSERS[ch]:
                stack.pop()
        return len(stack)

    scanner = _scanner(spec)
    before = unclosed(prefix, scanner)
    own = unclosed(completion, scanner)
    if not own or scanner.quote is not None:
        return False
    depth, wanted = 0, 0
    for _, ch in scanner.scan(suffix):
        if ch in OPENERS:
            depth += 1
        elif depth:
            depth -= 1
        else:
            wanted += 1
    return wanted - before >= own


# -- tags ----------------------------------------------------------------------------------------


def close_tags(prefix: str, completion: str, suffix: str, spec: LangSpec | None = None, mode: str = "single") -> str:
    """HTML, Vue and JSX: close, innermost first, the elements the completion opened and left
    open, each closer on a line of its own (at its opener's indentation) when the element's
    content runs over lines. Nothing is added when the text after the cursor already closes them
    (`<li>|</li>`), so no closing tag is doubled; void elements (`<br>`, `<img>`) never close."""
    if spec is None or not (spec.markup or spec.jsx):
        return completion
    jsx = not spec.markup
    own = open_tags(completion, jsx)
    if not own:
        return completion
    stack = [t.name for t in open_tags(prefix, jsx)] + [t.name for t in own]
    closers = unmatched_closers(suffix, jsx)
    ours = len(own)  # how many of the innermost the completion must close: those above the
    if closers:  # element the suffix's first closing tag ends (`<li><a>|</li>`: the <a> only)
        ours = next((j for j in range(min(len(own) + 1, len(stack))) if stack[-1 - j] == closers[0].name), len(own))
    out = completion
    for tag in reversed(own[len(own) - ours :]):
        if "\n" in completion[tag.end :].rstrip():
            indent = indent_of(current_line(prefix + completion[: tag.start]))
            out = out.rstrip() + "\n" + " " * indent + closer(tag.name)
        else:
            out = out.rstrip() + closer(tag.name) if mode == "multi" else out + closer(tag.name)
    return out


def close_css_blocks(prefix: str, completion: str, suffix: str, spec: LangSpec | None = None) -> str:
    """CSS: close the rule blocks still open after a multi-line completion (`.btn {` and its
    declarations) that the text after the cursor does not close: CSS has nothing else a block
    could be waiting for. Each `}` goes on its own line at its opener's indentation."""
    if spec is None or spec.name != "css" or "\n" not in completion:
        return completion
    text = prefix + completion
    scanner = _scanner(spec)
    opened: list[int] = []
    for i, ch in scanner.scan(text):
        if ch == "{":
            opened.append(i)
        elif ch == "}" and opened:
            opened.pop()
    if not opened or scanner.quote is not None or scanner.in_block is not None:
        return completion
    depth, wanted = 0, 0
    for _, ch in _scanner(spec).scan(suffix):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth, wanted = (depth - 1, wanted) if depth else (0, wanted + 1)
    out = completion.rstrip()
    for index in reversed(opened[wanted:] if wanted < len(opened) else []):
        out += "\n" + " " * indent_of(current_line(text[:index])) + "}"
    return out if len(out) > len(completion.rstrip()) else completion


def _close(prefix: str, completion: str, suffix: str, spec: LangSpec | None, mode: str) -> str:
    """What the completion left open, closed: elements in markup, brackets elsewhere (and both in JSX)."""
    if spec is not None and spec.markup:
        return close_tags(prefix, completion, suffix, spec, mode)
    out = balance_brackets(prefix, completion, spec, mode)
    return close_tags(prefix, out, suffix, spec, mode) if spec is not None and spec.jsx else out


# -- tree-sitter ---------------------------------------------------------------------------------


def _errors(spec: LangSpec, text: str) -> int:
    tree = parser_for(spec).parse(text.encode("utf-8", errors="replace"))
    root = tree.root_node
    if not root.has_error:
        return 0
    count, cursor = 0, root.walk()
    while True:
        node = cursor.node
        if node.is_error or node.is_missing:
            count += 1
        if node.has_error and cursor.goto_first_child():
            continue
        while not cursor.goto_next_sibling():
            if not cursor.goto_parent():
                return count


def syntax_trim(
    prefix: str,
    completion: str,
    suffix: str,
    spec: LangSpec | None,
    mode: str = "multi",
    window: int = 6000,
    candidates: int = 12,
) -> str:
    """The longest line-cut of a multi-line completion that does not make the file parse worse."""
    if spec is None or "\n" not in completion.strip("\n"):
        return completion
    head = prefix[-window:]
    if len(head) < len(prefix):
        head = head[head.find("\n") + 1 :]
    tail = suffix[: window // 2]
    if len(tail) < len(suffix):
        tail = tail[: tail.rfind("\n") + 1]
    baseline = _errors(spec, head + tail)
    cuts = [len(completion)]
    pos = len(completion)
    while len(cuts) < candidates:
        pos = completion.rfind("\n", 0, pos)
        if pos <= 0:
            break
        cuts.append(pos)
    for cut in cuts:
        cand = _close(prefix, completion[:cut], tail, spec, mode)
        if _errors(spec, head + cand + tail) <= baseline:
            return cand
    return completion


def _checked_close_tags(prefix: str, completion: str, suffix: str, spec: LangSpec, mode: str) -> str:
    """`close_tags`; in JSX only when the file then parses no worse (a `<` in JavaScript is
    not always a tag)."""
    out = close_tags(prefix, completion, suffix, spec, mode)
    if out == completion or spec.markup:
        return out
    head, tail = prefix[-6000:], suffix[:3000]
    return out if _errors(spec, head + out + tail) <= _errors(spec, head + completion + tail) else completion


# -- all together --------------------------------------------------------------------------------


@dataclass
class Processed:
    text: str
    mode: str
    steps: list[str] = field(default_factory=list)  # the steps that changed something


def postprocess(
    prefix: str, completion: str, suffix: str, spec: LangSpec | None = None, mode: str | None = None
) -> Processed:
    """Every step in order; `steps` names those that changed the text. A cursor in an embedded
    region (see `embedded.focus`) is processed in that region's language, on its text."""
    mode = mode or decide_mode(prefix, suffix, spec)
    spec, prefix, suffix = focus(prefix, suffix, spec)
    result = Processed(completion, mode)

    def step(name: str, new: str) -> None:
        if new != result.text:
            result.steps.append(name)
            result.text = new

    if mode == "single":
        step("single_line", result.text.split("\n", 1)[0] if result.text.strip("\n") else "")
    else:
        step("stop_at_block_end", stop_at_block_end(prefix, result.text, suffix, spec))
    step("drop_repeats", drop_repeats(prefix, result.text, suffix))
    step("cut_loop", cut_loop(result.text))
    step("trim_suffix_overlap", trim_suffix_overlap(prefix, result.text, suffix, spec))
    if mode == "multi":
        step("syntax_trim", syntax_trim(prefix, result.text, suffix, spec, mode))
    markup = spec is not None and spec.markup
    if not markup and not _closed_by_suffix(prefix, result.text, suffix, spec):
        step("balance_brackets", balance_brackets(prefix, result.text, spec, mode))
    if spec is not None and (markup or spec.jsx):
        step("close_tags", _checked_close_tags(prefix, result.text, suffix, spec, mode))
    if mode == "multi":
        step("close_css_blocks", close_css_blocks(prefix, result.text, suffix, spec))
    if not rest_of_line(suffix).strip():
        step("trailing_whitespace", result.text.rstrip())
    return result

"""Where each ``{placeholder}`` of a command template sits, as a shell would read it.

:func:`render_command` quotes an inserted value for its place: bare (``shlex.quote``), inside
the template's double quotes (backslashes before ``\\ " $ `````) or inside its single quotes
(``'\\''``). That keeps the value one literal word for *the shell that reads the template*. It
cannot help where the text is read a second time, or where no quoting exists:

* the body of a here-document (``<<EOF``: ``$(...)`` runs there and a line ``EOF`` in the value
  ends the document; ``<<'EOF'``: quotes would be written literally);
* code that another program parses: the string of ``sh -c``/``bash -c``, the words of ``eval``,
  ``ssh host ...`` and ``watch``, ``trap``'s command, ``su -c``, the program of ``python -c``,
  ``perl -e``, ``awk '...'`` and the like: the first shell removes shoal's quotes and the
  second reads the value as code;
* backticks, ``$'...'``, ``${...}``, comments, and a ``\\`` or ``$`` just before the field.

:func:`analyse` walks the template once, with a small lexer for the POSIX shell grammar (or
:func:`shlex.split`'s, for templates without shell syntax), and returns each field's context,
or the reasons it cannot be made safe; :mod:`shoal.spec.task` refuses such templates when they
are defined. The lexer knows enough of the grammar to find those places; it is not a shell.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

BARE, DQ, SQ = "bare", "dq", "sq"  # the contexts render_command can quote for

SHELLS = frozenset(
    {"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "yash", "csh", "tcsh", "fish"}
)
ALL_CODE = frozenset({"eval", "watch"})  # every later word is joined and run by a shell
# program -> options whose argument (the next word, or the rest of the word) is code
CODE_FLAGS: dict[str, tuple[str, ...]] = {
    "python": ("-c",),
    "perl": ("-e", "-E"),
    "ruby": ("-e",),
    "node": ("-e", "--eval", "-p", "--print"),
    "php": ("-r",),
    "Rscript": ("-e",),
    "R": ("-e",),
    "julia": ("-e", "-E"),
    "lua": ("-e",),
    "su": ("-c", "--command"),
    "runuser": ("-c", "--command"),
    "script": ("-c", "--command"),
    "flock": ("-c", "--command"),
}
AWKS = frozenset({"awk", "gawk", "mawk", "nawk", "busybox-awk"})
SSH_ARGS = set("BbcDEeFIiJLlmOoPpQRSWw")  # ssh options that take an argument
_PYTHON = re.compile(r"^(python|pypy)[\d.]*$")
FIELD = "\0"  # stands for a field in a word's text

ENV_FIX = (
    'pass the value through the environment instead, and write "$X" where it is used: in '
    'Python call the command with env={{"X": value}}, in a config file give the group '
    'env: {{X: "{{{name}}}"}}. The environment is never parsed by a shell'
)


@dataclass
class Problem:
    """A field that no quoting makes safe: which (its position and name), why, what to do."""

    index: int
    name: str
    why: str
    fix: str

    def message(self, template: str) -> str:
        return f"command template {template!r}: {{{self.name}}} {self.why}; {self.fix}"


@dataclass
class _Word:
    text: list[str] = field(default_factory=list)
    fields: set[int] = field(default_factory=set)
    quoted: bool = False  # a here-document delimiter in quotes: <<'EOF'

    @property
    def value(self) -> str:
        return "".join(self.text)


@dataclass
class _Frame:
    kind: str  # cmd, dq, sq, ansi, bq, param, arith, comment, heredoc
    closer: str = ""  # cmd: ")" for $( ... ); "" at the top
    depth: int = 0  # cmd: open subshell parentheses; arith/param: nesting
    words: list[_Word] = field(default_factory=list)
    word: _Word | None = None
    target: bool = False  # the next word is a redirection's file, not an argument
    heredoc: bool | None = None  # the next word is a here-document delimiter (True: <<-)
    line: list[str] = field(default_factory=list)  # heredoc: the current line
    delimiter: str = ""
    strip: bool = False
    redirects: set[int] = field(default_factory=set)  # indexes of words that are file names


class _Lexer:
    def __init__(self, atoms: list[str | int], names: Sequence[str], shell: bool) -> None:
        self.atoms = atoms
        self.names = names
        self.shell = shell
        self.stack = [_Frame("cmd")]
        self.contexts: list[str] = [BARE] * len(names)
        self.problems: list[Problem] = []
        self.pending: list[tuple[str, bool, bool]] = []  # heredocs: delimiter, <<-, quoted
        self.i = 0

    # -- helpers ----------------------------------------------------------------------------
    def peek(self, k: int = 0) -> str | int | None:
        j = self.i + k
        return self.atoms[j] if j < len(self.atoms) else None

    def starts(self, text: str) -> bool:
        return all(self.peek(k) == c for k, c in enumerate(text))

    def problem(self, index: int, why: str, fix: str) -> None:
        if not any(p.index == index for p in self.problems):
            name = self.names[index]
            self.problems.append(Problem(index, name, why, fix.format(name=name)))

    def cmds(self) -> list[_Frame]:
        return [f for f in self.stack if f.kind == "cmd"]

    def add(self, ch: str) -> None:
        """A character of the current word of the innermost command."""
        frame = self.cmds()[-1]
        if frame.word is None:
            frame.word = _Word()
        frame.word.text.append(ch)

    def open_word(self) -> None:
        for f in self.cmds():
            if f.word is None:
                f.word = _Word()

    def end_word(self, frame: _Frame) -> None:
        w = frame.word
        if w is None:
            return
        frame.word = None
        if frame.heredoc is not None:
            strip, frame.heredoc = frame.heredoc, None
            self.pending.append((w.value, strip, w.quoted))
            for f in w.fields:
                self.problem(
                    f, "is the delimiter of a here-document", "write a fixed word, e.g. <<EOF"
                )
            return
        if frame.target:
            frame.target = False
            frame.redirects.add(len(frame.words))
        frame.words.append(w)

    def end_command(self, frame: _Frame) -> None:
        self.end_word(frame)
        words = [w for k, w in enumerate(frame.words) if k not in frame.redirects]
        for w, program in _code_words(words):
            for f in sorted(w.fields):
                self.problem(
                    f,
                    f"is inside code that {program} parses again: the quotes shoal adds are "
                    "removed by the first shell, so $(...), backticks or ; in the value would "
                    "run as code",
                    "give it to that code as data instead: as an argument after the code (e.g. "
                    "sh -c 'echo \"$1\"' sh {{{name}}}, python -c '...sys.argv[1]...' "
                    "{{{name}}}), or through the environment, with the code in single quotes so "
                    "that the first shell leaves $X alone (sh -c 'echo \"$X\"'): in Python call "
                    'the command with env={{"X": value}}, in a config file give the group '
                    'env: {{X: "{{{name}}}"}}',
                )
        frame.words, frame.redirects = [], set()

    # -- the walk ---------------------------------------------------------------------------
    def run(self) -> None:
        while self.i < len(self.atoms):
            atom = self.atoms[self.i]
            frame = self.stack[-1]
            if isinstance(atom, int):
                self.i += 1
                self.on_field(atom, frame)
                continue
            if frame.kind == "heredoc":
                self.in_heredoc(atom, frame)
            elif frame.kind == "cmd":
                self.in_cmd(atom, frame)
            elif frame.kind == "dq":
                self.in_dq(atom)
            elif frame.kind in ("sq", "ansi", "bq"):
                self.in_quote(atom, frame)
            elif frame.kind == "comment":
                if atom == "\n":
                    self.stack.pop()  # the newline ends the command in the frame below
                else:
                    self.i += 1
            elif frame.kind == "param":
                self.in_param(atom, frame)
            else:
                self.in_arith(atom, frame)
        for f in reversed(self.cmds()):
            self.end_command(f)

    def on_field(self, index: int, frame: _Frame) -> None:
        prev = self.atoms[self.i - 2] if self.i >= 2 else None
        kind = frame.kind
        if prev == "\\" and kind not in ("sq", "heredoc", "comment") and not self._escaped():
            self.problem(
                index,
                "comes right after a backslash, which would escape the first character of "
                "the quoting shoal adds",
                "remove the backslash",
            )
        elif prev == "$" and self.shell and kind in ("cmd", "dq", "arith"):
            self.problem(
                index,
                "comes right after a $, so the value would become part of a shell expansion",
                "write {{{name}}} to insert the value, or ${{{{X}}}} for an environment variable X",
            )
        if kind == "heredoc":
            self.problem(
                index,
                f"is in the body of a here-document (<<{frame.delimiter}), where no quoting "
                "exists: in <<EOF the shell runs $(...) and backticks in the value, in "
                "<<'EOF' quotes would be written as they are, and a line "
                f"{frame.delimiter} in the value would end the document early",
                ENV_FIX + " (use an unquoted <<EOF so that $X is expanded), or write the "
                "value to a file and read it",
            )
            frame.line.append(FIELD)
            return
        elif kind == "bq":
            self.problem(
                index,
                "is inside backticks, where quoting does not nest",
                "write $(...) instead of `...`",
            )
        elif kind == "ansi":
            self.problem(index, "is inside $'...'", "use plain '...' or \"...\" quotes")
        elif kind == "param":
            self.problem(index, "is inside ${...}", ENV_FIX)
        elif kind == "comment":
            self.problem(
                index,
                "is in a # comment, which a newline in the value would end",
                "remove it from the comment",
            )
            return
        else:
            self.contexts[index] = {"cmd": BARE, "dq": DQ, "sq": SQ, "arith": DQ}[kind]
        self.open_word()
        for f in self.cmds():
            assert f.word is not None
            f.word.fields.add(index)
        self.add(FIELD)

    def _escaped(self) -> bool:
        """Whether the backslash before the current field is itself escaped (``\\\\{x}``)."""
        n, j = 0, self.i - 2
        while j >= 0 and self.atoms[j] == "\\":
            n, j = n + 1, j - 1
        return n % 2 == 0

    def in_heredoc(self, ch: str, frame: _Frame) -> None:
        self.i += 1
        if ch != "\n":
            frame.line.append(ch)
            return
        text = "".join(frame.line)
        frame.line = []
        if (text.lstrip("\t") if frame.strip else text) == frame.delimiter:
            self.stack.pop()
            self.next_heredoc()

    def next_heredoc(self) -> None:
        if self.pending:
            delimiter, strip, _ = self.pending.pop(0)
            self.stack.append(_Frame("heredoc", delimiter=delimiter, strip=strip))

    def in_cmd(self, ch: str, frame: _Frame) -> None:
        self.i += 1
        if not self.shell:  # shlex.split: only quotes, backslashes and blanks
            if ch in " \t\n":
                self.end_word(frame)
            elif ch == "\\":
                nxt = self.peek()
                if isinstance(nxt, str):
                    self.i += 1
                    self.add(nxt)
            elif ch in "'\"":
                self.open_word()
                self.stack.append(_Frame("sq" if ch == "'" else "dq"))
            else:
                self.add(ch)
            return
        if ch == "#" and frame.word is None:
            self.stack.append(_Frame("comment"))
        elif ch in " \t":
            self.end_word(frame)
        elif ch == "\n":
            self.end_command(frame)
            self.next_heredoc()
        elif ch in ";&|":
            self.end_command(frame)
        elif ch == "(":
            self.end_command(frame)
            frame.depth += 1
        elif ch == ")":
            self.end_command(frame)
            if frame.depth:
                frame.depth -= 1
            elif frame.closer:
                self.stack.pop()
        elif ch in "<>":
            self.end_word(frame)
            if ch == "<" and self.starts("<<"):  # <<< word: a here-string, an ordinary word
                self.i += 2
                frame.target = True
            elif ch == "<" and self.starts("<"):
                self.i += 1
                frame.heredoc = self.starts("-")
                if frame.heredoc:
                    self.i += 1
            else:
                while self.peek() in ("&", ">", "|"):
                    self.i += 1
                frame.target = self.peek() != "("
        elif ch == "\\":
            nxt = self.peek()
            if nxt == "\n":
                self.i += 1
            elif isinstance(nxt, str):
                self.i += 1
                self.add(nxt)
        elif ch in "'\"":
            self.open_word()
            if frame.heredoc is not None:
                assert frame.word is not None
                frame.word.quoted = True
            self.stack.append(_Frame("sq" if ch == "'" else "dq"))
        elif ch == "$":
            if not self.dollar():
                self.add(ch)
        elif ch == "`":
            self.open_word()
            self.stack.append(_Frame("bq"))
        else:
            self.add(ch)

    def dollar(self) -> bool:
        """After a ``$``: open what it starts (``$(``, ``$((``, ``${``, ``$'``), if anything."""
        if self.starts("(("):
            self.i += 2
            self.open_word()
            self.stack.append(_Frame("arith"))
        elif self.starts("("):
            self.i += 1
            self.open_word()
            self.stack.append(_Frame("cmd", closer=")"))
        elif self.starts("{"):
            self.i += 1
            self.open_word()
            self.stack.append(_Frame("param"))
        elif self.starts("'") and self.stack[-1].kind == "cmd":
            self.i += 1
            self.open_word()
            self.stack.append(_Frame("ansi"))
        else:
            return False
        return True

    def in_dq(self, ch: str) -> None:
        self.i += 1
        if ch == '"':
            self.stack.pop()
        elif ch == "\\":
            nxt = self.peek()
            if isinstance(nxt, str):
                self.i += 1
                self.add(nxt)
        elif self.shell and ch == "$":
            if not self.dollar():
                self.add(ch)
        elif self.shell and ch == "`":
            self.stack.append(_Frame("bq"))
        else:
            self.add(ch)

    def in_quote(self, ch: str, frame: _Frame) -> None:
        self.i += 1
        end = {"sq": "'", "ansi": "'", "bq": "`"}[frame.kind]
        if ch == "\\" and frame.kind != "sq":
            self.i += 1 if isinstance(self.peek(), str) else 0
        elif ch == end:
            self.stack.pop()
        else:
            self.add(ch)

    def in_param(self, ch: str, frame: _Frame) -> None:
        self.i += 1
        if ch == "{":
            frame.depth += 1
        elif ch == "}":
            if frame.depth:
                frame.depth -= 1
            else:
                self.stack.pop()

    def in_arith(self, ch: str, frame: _Frame) -> None:
        self.i += 1
        if ch == "(":
            frame.depth += 1
        elif ch == ")":
            if frame.depth:
                frame.depth -= 1
            else:
                self.i += 1 if self.peek() == ")" else 0
                self.stack.pop()
        elif ch == "$":
            self.dollar()
        elif ch == "`":
            self.stack.append(_Frame("bq"))


def _program(word: str) -> str:
    name = word.rsplit("/", 1)[-1]
    return "python" if _PYTHON.match(name) else name


def _cluster(word: str, letter: str) -> bool:
    """``-lne`` ends with the option ``e``: its argument is the next word."""
    return (
        len(word) > 2
        and word[0] == "-"
        and word[1] != "-"
        and word[1:].isalpha()
        and (word.endswith(letter))
    )


def _code_words(words: list[_Word]) -> list[tuple[_Word, str]]:
    """The words of one simple command that another program reads as code, each with how
    that program is named in messages."""
    out: list[tuple[_Word, str]] = []
    n = len(words)
    i = 0
    while i < n:
        name = _program(words[i].value)
        j = i + 1
        if name in SHELLS:
            code = False
            while j < n and words[j].value[:1] in "-+" and words[j].value not in ("-", "--"):
                opt = words[j].value
                if opt[0] == "-" and not opt.startswith("--") and "c" in opt:
                    code = True
                if opt in ("-o", "+o", "-O", "+O", "--rcfile", "--init-file"):
                    j += 1
                j += 1
            if j < n and words[j].value == "--":
                j += 1
            if code and j < n:
                out.append((words[j], f"`{name} -c`"))
                j += 1  # the words after the code are $0, $1, ...: data
        elif name in ALL_CODE:
            out.extend((w, f"`{name}`") for w in words[j:])
            j = n
        elif name == "trap" and j < n:
            out.append((words[j], "`trap`"))
        elif name == "ssh":
            while j < n and words[j].value.startswith("-"):
                opt = words[j].value
                j += 2 if len(opt) == 2 and opt[1] in SSH_ARGS else 1
            out.extend((w, "the remote shell of `ssh`") for w in words[j + 1 :])
            j = n
        elif name in AWKS:
            program = True
            while j < n and words[j].value.startswith("-") and words[j].value != "-":
                opt = words[j].value
                if opt in ("-f", "--file") or opt.startswith("--file="):
                    program = False
                if opt in ("-e", "--source") and j + 1 < n:
                    out.append((words[j + 1], f"`{name}`"))
                    program = False
                if opt in ("-F", "-v", "-f", "-e", "--source", "--file", "--assign"):
                    j += 1
                j += 1
            if program and j < n:
                out.append((words[j], f"`{name}`"))
                j += 1
        elif name in CODE_FLAGS:
            for k in range(j, n):
                w = words[k].value
                for flag in CODE_FLAGS[name]:
                    if w == flag or (len(flag) == 2 and _cluster(w, flag[1])):
                        if k + 1 < n:
                            out.append((words[k + 1], f"`{name} {flag}`"))
                    elif w.startswith(flag + "=" if len(flag) > 2 else flag):
                        out.append((words[k], f"`{name} {flag}`"))  # -c'code', --eval=code
            j = n
        i = max(j, i + 1)
    return out


def analyse(
    parts: Sequence[tuple[str, str | None]], shell: bool
) -> tuple[list[str], list[Problem]]:
    """For a template's ``(literal, field)`` parts (as :class:`string.Formatter` parses them):
    the context of each field (``"bare"``, ``"dq"`` or ``"sq"``), and the fields that cannot be
    made safe. ``shell``: whether it runs through ``/bin/sh -c`` (else :func:`shlex.split`)."""
    atoms: list[str | int] = []
    names: list[str] = []
    for literal, name in parts:
        atoms.extend(literal)
        if name is not None:
            atoms.append(len(names))
            names.append(name.split(".", 1)[0].split("[", 1)[0])
    lexer = _Lexer(atoms, names, shell)
    lexer.run()
    return lexer.contexts, lexer.problems

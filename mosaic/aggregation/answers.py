"""Answer extraction from raw LLM responses: choice letters, boxed and numeric answers, code.

Every extractor returns the normalised answer as a string, or ``None`` when the response holds no
answer of that kind ("no answer" is explicit, never a guess). Use :func:`extract_answer` to dispatch
on an :class:`AnswerKind`.
"""

from __future__ import annotations

import ast
import re
import warnings
from collections.abc import Sequence
from enum import StrEnum

from mosaic.core.errors import WorkloadError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
MAX_OPTIONS = len(LETTERS)


class AnswerKind(StrEnum):
    """What kind of answer a task expects."""

    CHOICE = "choice"  # a multiple-choice letter
    NUMERIC = "numeric"  # a number (GSM8K "#### 42", AIME)
    BOXED = "boxed"  # the content of \\boxed{...} (math)
    CODE = "code"  # a program; compared as normalised code
    TEXT = "text"  # free text; compared by embedding agreement, not extraction


def unwrap_list_string(text: str) -> str:
    """``"['A']"`` -> ``"A"`` (RouterBench stores responses as Python-list-like strings); other text as is."""
    s = text.strip()
    if len(s) >= 4 and s[0] == "[" and s[-1] == "]" and s[1] in "'\"":
        try:
            value = ast.literal_eval(_quiet_parse(s, "eval"))
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return text
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return "\n".join(value)
    return text


def _quiet_parse(source: str, mode: str) -> ast.AST:
    """``ast.parse`` without the warnings recorded text triggers (invalid escapes such as "\\d" in a literal)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, SyntaxWarning))
        return ast.parse(source, mode=mode)


# --- multiple choice -------------------------------------------------------------------------------------------------


def _letter_class(n_options: int) -> str:
    if not 1 <= n_options <= MAX_OPTIONS:
        raise WorkloadError(f"n_options must be in 1..{MAX_OPTIONS}, got {n_options}")
    return f"[A-{LETTERS[n_options - 1]}]"


def _explicit_patterns(cls: str) -> list[re.Pattern[str]]:
    """Statements of the answer, most explicit first; the last match in the text wins."""
    return [
        re.compile(rf"(?i:answer\s+is)\s*:?\s*\**\s*[\(\[]?\s*({cls})\b(?![\w'])"),
        re.compile(rf"(?i:answer)\s*:\s*\**\s*[\(\[]?\s*({cls})\b(?![\w'])"),
        re.compile(rf"\\boxed\{{\s*(?:\\text\{{)?\s*\(?({cls})\)?\s*\}}"),
        re.compile(rf"\b(?i:option|choice)\s*:?\s*\(?({cls})\)?(?![\w'])"),
    ]


def _leading_letter(s: str, cls: str) -> str | None:
    """A response that starts with a letter: ``A``, ``(A)``, ``A)``, ``A.``, ``**A**``, ``[A]``, ``D (...``.

    A letter followed by a plain word (``"A chart"``, ``"I do"``) is an article or pronoun, not an answer.
    """
    m = re.match(rf"^[\s*_`'\"\[]*\(?({cls})(?:[\s*_`'\"\]]*$|\s*[).:\]]|\s+\(|\s*\*\*)", s)
    return m.group(1) if m else None


def _choice_by_text(s: str, choices: Sequence[str]) -> str | None:
    """The letter whose option text the response repeats (``"a chart"`` for ``A) a chart``); a truncated prefix
    of at least 3 characters counts when exactly one option starts with it."""
    norm = _norm_text(s)
    if not norm:
        return None
    texts = [_norm_text(c) for c in choices]
    exact = [i for i, t in enumerate(texts) if t and t == norm]
    if len(exact) == 1:
        return LETTERS[exact[0]]
    if len(norm) >= 3:
        prefix = [i for i, t in enumerate(texts) if t.startswith(norm)]
        if len(prefix) == 1:
            return LETTERS[prefix[0]]
    return None


def _norm_text(s: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", s.lower())).strip()


def extract_choice(text: str | None, n_options: int = 4, choices: Sequence[str] = ()) -> str | None:
    """The multiple-choice letter a response gives, among the first ``n_options`` letters, or ``None``.

    Order: an explicit statement ("The answer is (X)", "Answer: X", ``\\boxed{X}``, "option X"; the last one wins),
    a response that starts with the letter ("A", "(A)", "A)", "A. ..."), a final line that is only a letter,
    then (when ``choices`` are given) a response that repeats one option's text.
    """
    if text is None:
        return None
    if choices:
        n_options = max(n_options, len(choices))
    cls = _letter_class(n_options)
    s = unwrap_list_string(text).strip()
    for pat in _explicit_patterns(cls):
        hits = pat.findall(s)
        if hits:
            return hits[-1]
    lead = _leading_letter(s, cls)
    if lead:
        return lead
    lines = [ln for ln in s.splitlines() if ln.strip()]
    if len(lines) > 1:
        last = _leading_letter(lines[-1].strip(), cls)
        if last and len(lines[-1].strip()) <= 6:
            return last
    return _choice_by_text(s, choices) if choices else None


# --- boxed and numeric -----------------------------------------------------------------------------------------------


def extract_boxed(text: str | None) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced, whitespace removed; else None."""
    if text is None:
        return None
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    start, depth = starts[-1], 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            content = re.sub(r"\s+", "", text[start:i])
            return content or None
    return None  # unbalanced: truncated response


_NUMBER = r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+"


def normalize_number(s: str) -> str | None:
    """``"1,234.50"`` -> ``"1234.5"``; ``"$42"`` -> ``"42"``; not a number -> None."""
    cleaned = re.sub(r"[,$\s]", "", s).rstrip(".")
    cleaned = cleaned.removesuffix("%")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _latex_number(s: str) -> str | None:
    """A number written in LaTeX (``42``, ``1{,}000``, ``\\frac{1}{2}``, ``-3/4``, ``90^\\circ``), else None."""
    s = re.sub(r"\\[!,;]|\{,\}|\\text\{[^}]*\}|\^\{?\\circ\}?|\\%|\\\$|\\left|\\right", "", s)
    frac = re.fullmatch(r"(-?)\\[dt]?frac\{?(-?\d+)\}?\{?(-?\d+)\}?|(-?)(\d+)/(\d+)", s)
    if frac:
        sign, num, den = (frac.group(1), frac.group(2), frac.group(3)) if frac.group(2) else frac.group(4, 5, 6)
        if int(den) == 0:
            return None
        return normalize_number(f"{sign}{int(num) / int(den)!r}")
    return normalize_number(s)


def extract_number(text: str | None) -> str | None:
    """A numeric answer: ``#### 42`` (GSM8K), else a numeric ``\\boxed{}``, else "answer is 42", else the last
    number in the text; normalised by :func:`normalize_number`. None when the text has no number."""
    if text is None:
        return None
    s = unwrap_list_string(text)
    m = re.findall(rf"####\s*\$?\s*({_NUMBER})", s)
    if m:
        return normalize_number(m[-1])
    boxed = extract_boxed(s)
    if boxed is not None:
        num = _latex_number(boxed)
        if num is not None:
            return num
    m = re.findall(rf"answer\s*(?:is|:)\s*\**\s*\$?\s*({_NUMBER})", s, re.I)
    if m:
        return normalize_number(m[-1])
    nums = re.findall(_NUMBER, s)
    return normalize_number(nums[-1]) if nums else None


# --- code ------------------------------------------------------------------------------------------------------------

_CODE_BLOCK = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\r?\n(.*?)(?:```|$)", re.S | re.I)
_PYTHON_TAG = re.compile(r"\[PYTHON\](.*?)(?:\[/PYTHON\]|$)", re.S)


def extract_code(text: str | None) -> str | None:
    """The program in a response: the first fenced block or ``[PYTHON]...[/PYTHON]`` span (truncated ones too),
    else the text itself when it starts like code (``def``/``import``/``class``); None when there is none."""
    if text is None:
        return None
    s = unwrap_list_string(text).replace("\r\n", "\n")
    for pat in (_PYTHON_TAG, _CODE_BLOCK):
        m = pat.search(s)
        if m and m.group(1).strip():
            return m.group(1).strip("\n")
    stripped = s.strip()
    if re.match(r"(def|import|from|class)\s", stripped):
        return stripped
    return None


def normalize_code(text: str | None) -> str | None:
    """Extracted code with comments, docstrings, blank lines and formatting removed (``ast`` round trip when it
    parses, else line-wise stripping); None when the response holds no code."""
    code = extract_code(text)
    if code is None:
        return None
    try:
        tree = _quiet_parse(code, "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        lines = (re.sub(r"#.*$", "", ln).strip() for ln in code.splitlines())
        return "\n".join(ln for ln in lines if ln) or None
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and _is_docstring(body[0]):
            node.body = body[1:] or [ast.Pass()]  # type: ignore[attr-defined]
    return ast.unparse(tree) or None


def _is_docstring(node: ast.AST) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


# --- dispatch --------------------------------------------------------------------------------------------------------


def extract_answer(
    text: str | None, kind: AnswerKind | str, n_options: int = 4, choices: Sequence[str] = ()
) -> str | None:
    """The answer of ``kind`` in ``text`` (None: no answer). TEXT returns the stripped text (None when blank)."""
    try:
        kind = AnswerKind(kind)
    except ValueError:
        raise WorkloadError(f"unknown answer kind {kind!r}; valid: {[k.value for k in AnswerKind]}") from None
    if kind is AnswerKind.CHOICE:
        return extract_choice(text, n_options, choices)
    if kind is AnswerKind.NUMERIC:
        return extract_number(text)
    if kind is AnswerKind.BOXED:
        return extract_boxed(text)
    if kind is AnswerKind.CODE:
        return normalize_code(text)
    stripped = unwrap_list_string(text).strip() if text is not None else ""
    return stripped or None

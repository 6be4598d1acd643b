"""Shared pieces of every toy task.

- `Problem`: one question (prompt, canonical answer, hashable content).
- `Task`: sampling (with a fixed train/test split), demonstrations, verifier.
- The split hash: a problem is in the test split iff a stable hash of its
  canonical key falls in a fixed bucket of `Task.test_percent` percent (20 by
  default), so train and test are disjoint by construction, independent of
  seeds, and the same on every machine.
- Small text helpers shared by the tasks: canonical integer answers and a tiny
  recursive-descent parser for + - * / ( ) expressions (no eval/exec anywhere).

Completion conventions (see each task module for its exact format):
  - A task with a thinking phase writes "<thinking>#<answer>": everything after
    the LAST "#" is the final answer, so "#" is the token where the answer phase
    starts. Direct tasks (and countdown) have no "#": the whole completion is
    the answer.
  - The caller adds BOS before the prompt and EOS after the completion; the
    strings here contain neither.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Union

import numpy as np

SPLITS = ("train", "test")
TEST_PERCENT = 20          # default Task.test_percent: a key is in the test split iff its hash bucket (0..99) is < 20
ANSWER_MARKER = "#"        # everything after the last "#" is the final answer
MAX_TRIES = 100_000        # rejection-sampling guard; real tasks need a handful of tries
MAX_PARSE_CHARS = 256      # longer completions are wrong without parsing (keeps the verifier O(1)-ish)
MAX_PAREN_DEPTH = 32       # bounds the parser's recursion, whatever the input

# Canonical non-negative or negative integer: no sign on 0, no leading zeros, ASCII
# digits only ("\d" would also accept e.g. Arabic-Indic digits).
_INT_RE = re.compile(r"0|-?[1-9][0-9]*")


@dataclass(frozen=True)
class Problem:
    """One question of one task.

    task:       task name, e.g. "addition"
    prompt:     question text, always ends with "=", e.g. "23+48=" (the model sees BOS + prompt)
    answer:     one canonical correct final answer, e.g. "71" (countdown: the target, e.g. "25")
    difficulty: the task's difficulty level the problem was drawn at
    data:       hashable task-specific content, e.g. (23, 48) or ((3, 4, 7), 25)
    """

    task: str
    prompt: str
    answer: str
    difficulty: int
    data: tuple


def check_str(completion: object) -> None:
    """Verifiers take text only; anything else is a caller bug, so say so loudly."""
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")


def split_of_key(key: str, test_percent: int = TEST_PERCENT) -> str:
    """'test' iff the stable hash bucket (0..99) of `key` is < `test_percent`.

    hashlib (not Python's salted hash()) so the split is the same in every process.
    """
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    return "test" if bucket < test_percent else "train"


def parse_int(text: str) -> str | None:
    """`text` itself if it is a canonical decimal integer ("71", "0", "-4"), else None.

    Canonical means: ASCII digits, no leading zeros, no "+" sign, no "-0", nothing else
    (not even whitespace or a trailing newline).
    """
    return text if _INT_RE.fullmatch(text) else None


def answer_after_marker(completion: str) -> str | None:
    """Final answer of a thinking-phase completion: the canonical integer after the last "#".

    "3+8=1c1;2+4+1=7;#71" -> "71";  "#071" -> None;  "71" (no marker) -> None.
    """
    pos = completion.rfind(ANSWER_MARKER)
    if pos < 0:
        return None
    return parse_int(completion[pos + 1:])


# ---------------------------------------------------------------------------
# Arithmetic expressions: trees, a parser and a printer (used by countdown and chain).
# A tree is an int (a number) or (op, left, right) with op in "+-*/".
# ---------------------------------------------------------------------------
Tree = Union[int, tuple]
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
ATOM = 3  # precedence of a number or a parenthesised group


def join(op: str, left: str, left_prec: int, right: str, right_prec: int) -> str:
    """Text of `left op right` with the fewest parentheses that keep its value.

    The left operand needs parentheses only if it binds looser than `op`
    ("(1+2)*3"). The right one also when it binds equally and `op` is - or /
    ("1-(2-3)", "8/(4/2)"); for + and * regrouping to the left keeps the value
    ("1+(2-3)" -> "1+2-3", "6*(4/2)" -> "6*4/2", which stays an exact division).
    """
    prec = PRECEDENCE[op]
    if left_prec < prec:
        left = f"({left})"
    if right_prec < prec or (right_prec == prec and op in "-/"):
        right = f"({right})"
    return f"{left}{op}{right}"


def to_text(tree: Tree) -> tuple[str, int]:
    """(text, precedence) of a tree, printed with `join`'s minimal parentheses."""
    if isinstance(tree, int):
        return str(tree), ATOM
    op, left, right = tree
    lt, lp = to_text(left)
    rt, rp = to_text(right)
    return join(op, lt, lp, rt, rp), PRECEDENCE[op]


def leaves(tree: Tree) -> list[int]:
    """The numbers of a tree, left to right."""
    if isinstance(tree, int):
        return [tree]
    return leaves(tree[1]) + leaves(tree[2])


class ParseError(ValueError):
    """The text is not an expression of the grammar in `parse_expression`."""


def parse_expression(text: str) -> Tree:
    """Parse an arithmetic expression into a tree (left-associative, usual precedence).

    Grammar (no whitespace, no unary minus, no leading zeros):
        expr   := term   (("+" | "-") term)*
        term   := factor (("*" | "/") factor)*
        factor := NUMBER | "(" expr ")"
        NUMBER := "0" | [1-9][0-9]*
    "3*7+4" -> ("+", ("*", 3, 7), 4);  "3+", "(3", "3)", "", "++", "3 4", "03" -> ParseError.
    Input longer than MAX_PARSE_CHARS or nested deeper than MAX_PAREN_DEPTH is a
    ParseError too, so no input can blow the recursion limit or take long.
    """
    if len(text) > MAX_PARSE_CHARS:
        raise ParseError(f"expression longer than {MAX_PARSE_CHARS} characters")
    parser = _Parser(text)
    tree = parser.expr(depth=0)
    if parser.pos != len(text):
        raise ParseError(f"unexpected {text[parser.pos]!r} at position {parser.pos}")
    return tree


_DIGITS = frozenset("0123456789")  # a set, not a str: "" in "0123" would be True


class _Parser:
    """Recursive descent over `text`; `pos` is the next unread character."""

    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        """The next character, or "" at the end (matches no token)."""
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expr(self, depth: int) -> Tree:
        tree = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.peek()
            self.pos += 1
            tree = (op, tree, self.term(depth))
        return tree

    def term(self, depth: int) -> Tree:
        tree = self.factor(depth)
        while self.peek() in ("*", "/"):
            op = self.peek()
            self.pos += 1
            tree = (op, tree, self.factor(depth))
        return tree

    def factor(self, depth: int) -> Tree:
        ch = self.peek()
        if ch == "(":
            if depth >= MAX_PAREN_DEPTH:
                raise ParseError(f"parentheses nested deeper than {MAX_PAREN_DEPTH}")
            self.pos += 1
            tree = self.expr(depth + 1)
            if self.peek() != ")":
                raise ParseError(f"expected ')' at position {self.pos}")
            self.pos += 1
            return tree
        start = self.pos
        while self.peek() in _DIGITS:
            self.pos += 1
        digits = self.text[start:self.pos]
        if not digits:
            raise ParseError(f"expected a number or '(' at position {start}")
        if len(digits) > 1 and digits[0] == "0":
            raise ParseError(f"number {digits!r} has a leading zero")
        return int(digits)


# ---------------------------------------------------------------------------
# Task
# ---------------------------------------------------------------------------
@dataclass
class Task:
    """A family of problems with a sampler, demonstrations and a verifier.

    Subclasses implement `key`, `_draw`, `demonstration` and `final_answer`
    (and `reward` if "final answer == problem.answer" is not the right check).
    """

    name: str
    max_new_tokens: int          # longest demonstration at max difficulty + EOS + a little slack
    default_difficulty: int
    difficulties: tuple[int, ...]
    test_percent: int = TEST_PERCENT  # share (in %) of the canonical keys in the test split
    context: int = 96            # model context (tokens) a base for this task needs: BOS + prompt + max_new_tokens

    def __post_init__(self):
        if isinstance(self.test_percent, bool) or not isinstance(self.test_percent, int) \
                or not 0 < self.test_percent < 100:
            raise ValueError(f"task {self.name!r}: test_percent must be an integer in 1..99, got {self.test_percent!r}")

    def check_difficulty(self, difficulty: int | tuple[int, ...] | list[int] | None) -> int | tuple[int, ...]:
        """The level(s) `sample` will draw at: None -> the default level, a 1-tuple -> its level,
        a longer tuple (or list) -> a mixture. ValueError naming the valid levels otherwise."""
        if difficulty is None:
            return self.default_difficulty
        levels = tuple(difficulty) if isinstance(difficulty, (tuple, list)) else (difficulty,)
        bad = [d for d in levels if isinstance(d, bool) or d not in self.difficulties]
        if bad or not levels:
            raise ValueError(
                f"difficulty {difficulty!r} is not valid for task {self.name!r}; "
                f"valid difficulties: {self.difficulties} (or a tuple of them: a mixture)"
            )
        return levels if len(levels) > 1 else levels[0]

    def sample(
        self,
        n: int,
        rng: np.random.Generator,
        split: str = "train",
        difficulty: int | tuple[int, ...] | None = None,
    ) -> list[Problem]:
        """Draw `n` problems of one split, deterministically given the rng state.

        Draws are independent (with replacement), so a list may contain repeats;
        small spaces (1-digit addition has 100 problems) will repeat a lot.
        Candidates of the other split are rejected, so train and test never share
        a canonical key.

        `difficulty`: None (the task's default level), one level, or a tuple of levels:
        a mixture, each problem's level drawn uniformly from the tuple first (a level
        listed twice is drawn twice as often). A single level, or a 1-tuple, draws no
        level, so it consumes the rng exactly as before mixtures existed.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise TypeError(f"n must be an int, got {type(n).__name__}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        levels = self.check_difficulty(difficulty)
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        problems = []
        for _ in range(int(n)):
            level = levels if isinstance(levels, int) else levels[int(rng.integers(len(levels)))]
            for _attempt in range(MAX_TRIES):
                problem = self._draw(level, rng, split)
                if problem is not None and self.split_of(problem) == split:
                    problems.append(problem)
                    break
            else:  # never expected: every difficulty has plenty of problems in both splits
                raise RuntimeError(f"{self.name}: no {split} problem found in {MAX_TRIES} draws")
        return problems

    def split_of(self, problem: Problem) -> str:
        """'train' or 'test', a pure function of the problem's canonical key."""
        return split_of_key(self.key(problem), self.test_percent)

    def reward(self, problem: Problem, completion: str) -> float:
        """1.0 iff the completion's final answer is exactly the canonical answer, else 0.0."""
        check_str(completion)
        return 1.0 if self.final_answer(completion) == problem.answer else 0.0

    # --- implemented per task -------------------------------------------------
    def key(self, problem: Problem) -> str:
        """Canonical key that decides the split, e.g. "addition:23+48"."""
        raise NotImplementedError

    def _draw(self, difficulty: int, rng: np.random.Generator, split: str) -> Problem | None:
        """One candidate problem; `sample` rejects it if it belongs to the other split.
        (A task may use `split` to avoid drawing wasted candidates; None = try again.)"""
        raise NotImplementedError

    def demonstration(self, problem: Problem, rng: np.random.Generator) -> str:
        """A correct completion (no EOS)."""
        raise NotImplementedError

    def final_answer(self, completion: str) -> str | None:
        """The final answer text of a completion, None if there is none; never raises on a str."""
        raise NotImplementedError

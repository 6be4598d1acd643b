"""Countdown: combine some of the given numbers with + - * / ( ) to hit a target.

Prompt: the numbers (sorted, comma-separated), ":", the target, "=":

    "3,4,7:25="  ->  "3*7+4"   (or "4+3*7", "7*3+4", ...)

`difficulty` is how many numbers are given (3 or 4, default 3), each drawn
from 1..9 (repeats allowed). The target is drawn uniformly among the values in
10..99 (of the requested split) that have at least 2 distinct solutions, or, if
there are none, among all reachable values in 10..99; numbers that reach
nothing in 10..99 are redrawn. "Distinct" is up to swapping the operands of +
and *: "3*7+4", "4+3*7", "4+7*3" count once, "4*7-3" is a second solution of
3,4,7:25; "5-2+8" and "8-2+5" count as two (different orders of operations).
(Forgetting regrouping too, e.g. "5-2+8" ~ "8-2+5", would leave only ~215
preferred 3-number problems, so this weaker notion is deliberate.)
`answer` is the target.

Completion format: the whole completion is one expression, nothing else (no
"#", no spaces, no "=target"). Grammar: `toy_tasks.base.parse_expression`
(numbers without leading zeros, + - * / and parentheses, no unary minus).

Reward 1.0 iff the expression parses, every division is exact (non-zero
divisor, integer result; e.g. "7/2*2" is rejected), its value is the target,
and its numbers are a sub-multiset of the given ones (each given number used at
most once; not all need to be used; "34" is the number 34, not 3 and 4).
Intermediate values may be negative ("4-7+3*9" is fine).

`final_answer` is the value the expression claims, as a string, whenever it
parses and evaluates (even if it uses numbers that were not given), else None.

Solutions are enumerated exactly: every sub-multiset of the numbers, every
order, every binary tree, every operator; division only where exact. This is
the same rule the verifier applies, so every enumerated solution earns 1.0.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations

import numpy as np

from toy_tasks.base import (
    ATOM,
    PRECEDENCE,
    Problem,
    Task,
    Tree,
    check_str,
    join,
    leaves,
    parse_expression,
    split_of_key,
)

DIFFICULTIES = (3, 4)
NUMBER_RANGE = (1, 9)       # inclusive
TARGET_RANGE = (10, 99)     # inclusive: two-digit targets
MIN_SOLUTIONS = 2           # preferred number of distinct solutions (1: any reachable target)
SLACK = 4
OPS = "+-*/"


def apply(op: str, a: int, b: int) -> int | None:
    """a op b over the integers; None for a division that is not exact (or by zero)."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0 or a % b != 0:
        return None
    return a // b  # exact, so floor division is true division (also for negatives)


def evaluate(tree: Tree) -> int:
    """Exact integer value of a parsed tree; ValueError on an inexact or zero division."""
    if isinstance(tree, int):
        return tree
    op, left, right = tree
    value = apply(op, evaluate(left), evaluate(right))
    if value is None:
        raise ValueError("division by zero or with a remainder")
    return value


def check_expression(completion: str) -> tuple[int, list[int]] | None:
    """(value, numbers used) if `completion` is a valid exact expression, else None."""
    try:
        tree = parse_expression(completion)
        return evaluate(tree), leaves(tree)
    except ValueError:  # ParseError is a ValueError
        return None


# ---------------------------------------------------------------------------
# Enumeration. Multisets are sorted tuples; every function is cached on them, and
# the caches are shared by all problems (3,4,7 and 3,4,7,8 share sub-multisets).
# ---------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _splits(ms: tuple[int, ...]) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """Every ordered (left, right) split of multiset `ms` into two non-empty parts, each once."""
    out = set()
    n = len(ms)
    for mask in range(1, 2**n - 1):
        left = tuple(ms[i] for i in range(n) if mask >> i & 1)
        right = tuple(ms[i] for i in range(n) if not mask >> i & 1)
        out.add((left, right))
    return tuple(sorted(out))


@lru_cache(maxsize=None)
def _sub_multisets(ms: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Every non-empty sub-multiset of `ms`, each once."""
    return tuple(sorted({sub for k in range(1, len(ms) + 1) for sub in combinations(ms, k)}))


@lru_cache(maxsize=None)
def values(ms: tuple[int, ...]) -> frozenset[int]:
    """Every value of an expression using each number of `ms` exactly once."""
    if len(ms) == 1:
        return frozenset(ms)
    out = set()
    for left, right in _splits(ms):
        for a in values(left):
            for b in values(right):
                for op in OPS:
                    out.add(apply(op, a, b))
    out.discard(None)
    return frozenset(out)


@lru_cache(maxsize=None)
def reachable(numbers: tuple[int, ...]) -> frozenset[int]:
    """Every value of an expression using a sub-multiset of `numbers`."""
    return frozenset().union(*(values(sub) for sub in _sub_multisets(numbers)))


def commutative_form(tree: Tree) -> str:
    """Fully parenthesised text with the operands of + and * sorted, so that two
    solutions that differ only by swapping such operands get the same form:
    "3*7+4", "4+7*3" -> "((3*7)+4)"; "8-2+5" and "5+8-2" stay different."""
    if isinstance(tree, int):
        return str(tree)
    op, left, right = tree
    a, b = commutative_form(left), commutative_form(right)
    if op in "+*":
        a, b = sorted((a, b))
    return f"({a}{op}{b})"


@lru_cache(maxsize=100_000)
def _exprs(ms: tuple[int, ...], value: int) -> tuple[tuple[str, int], ...]:
    """Every expression using each number of `ms` exactly once with value `value`,
    as (text, precedence), deduplicated by text (a+(b+c) and (a+b)+c print alike)."""
    if len(ms) == 1:
        return ((str(ms[0]), ATOM),) if ms[0] == value else ()
    found: dict[str, int] = {}
    for left, right in _splits(ms):
        right_values = values(right)
        for a in values(left):
            for b in right_values:
                for op in OPS:
                    if apply(op, a, b) != value:
                        continue
                    for lt, lp in _exprs(left, a):
                        for rt, rp in _exprs(right, b):
                            found[join(op, lt, lp, rt, rp)] = PRECEDENCE[op]
    return tuple(sorted(found.items()))


@lru_cache(maxsize=8192)
def solutions(numbers: tuple[int, ...], target: int) -> tuple[tuple[str, ...], int]:
    """(all solution texts sorted, number of distinct solutions up to commuting + and *).

    `numbers` must be sorted. solutions((3, 4, 7), 25) ==
    (("3*7+4", "4*7-3", "4+3*7", "4+7*3", "7*3+4", "7*4-3"), 2).
    """
    texts = sorted(
        text
        for sub in _sub_multisets(numbers)
        if target in values(sub)
        for text, _prec in _exprs(sub, target)
    )
    # Forms are computed on the parse of each text, so they depend only on the text.
    n_distinct = len({commutative_form(parse_expression(t)) for t in texts})
    return tuple(texts), n_distinct


def _key(numbers: tuple[int, ...], target: int) -> str:
    """Split key: sorted numbers + target, e.g. "countdown:3,4,7:25"."""
    return "countdown:" + ",".join(map(str, sorted(numbers))) + f":{target}"


@dataclass
class CountdownTask(Task):
    def make_problem(self, numbers: tuple[int, ...] | list[int], target: int) -> Problem:
        """The problem "n1,n2,...:target=" (numbers shown sorted; difficulty = how many)."""
        numbers = tuple(sorted(int(x) for x in numbers))
        prompt = ",".join(map(str, numbers)) + f":{target}="
        return Problem(self.name, prompt, str(target), len(numbers), (numbers, int(target)))

    def key(self, problem: Problem) -> str:
        return _key(*problem.data)

    def _draw(self, difficulty: int, rng: np.random.Generator, split: str) -> Problem | None:
        lo, hi = NUMBER_RANGE
        numbers = tuple(sorted(int(x) for x in rng.integers(lo, hi + 1, size=difficulty)))
        # Only targets of the requested split, so no draw is wasted on the other split.
        candidates = [
            t for t in sorted(reachable(numbers))
            if TARGET_RANGE[0] <= t <= TARGET_RANGE[1]
            and split_of_key(_key(numbers, t), self.test_percent) == split
        ]
        # Uniform among targets with >= MIN_SOLUTIONS solutions: try random candidates
        # and drop the ones that fall short (equivalent to filtering them all first,
        # but only counts solutions for the targets actually tried).
        fallback = list(candidates)
        while candidates:
            target = candidates.pop(int(rng.integers(len(candidates))))
            if solutions(numbers, target)[1] >= MIN_SOLUTIONS:
                return self.make_problem(numbers, target)
        if fallback:  # every candidate has fewer than MIN_SOLUTIONS solutions
            return self.make_problem(numbers, fallback[int(rng.integers(len(fallback)))])
        return None  # nothing reachable in range for this split: draw new numbers

    def demonstration(self, problem: Problem, rng: np.random.Generator) -> str:
        """A solution drawn uniformly from all solution texts (commuted variants included)."""
        numbers, target = problem.data
        texts, _ = solutions(tuple(sorted(numbers)), target)
        if not texts:
            raise ValueError(f"countdown problem {problem.prompt!r} has no solution")
        return texts[int(rng.integers(len(texts)))]

    def final_answer(self, completion: str) -> str | None:
        check_str(completion)
        checked = check_expression(completion)
        return None if checked is None else str(checked[0])

    def reward(self, problem: Problem, completion: str) -> float:
        check_str(completion)
        checked = check_expression(completion)
        if checked is None:
            return 0.0
        value, used = checked
        numbers, target = problem.data
        # Counter subtraction keeps only positive counts: anything left over was
        # used more often than given (or not given at all).
        overused = Counter(used) - Counter(numbers)
        return 1.0 if value == target and not overused else 0.0


def _max_completion_len() -> int:
    # Minimal parentheses: with k numbers there are k-1 operators and at most k-2
    # non-root operator nodes, each wrapped in at most one pair: "(9-(8-7))*6".
    k = max(DIFFICULTIES)
    return k + (k - 1) + 2 * (k - 2)


COUNTDOWN = CountdownTask(
    name="countdown",
    max_new_tokens=_max_completion_len() + 1 + SLACK,
    default_difficulty=3,
    difficulties=DIFFICULTIES,
)

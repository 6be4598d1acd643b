"""Tests of the toy tasks: formats, verifiers (against independent brute force), splits, errors."""
from __future__ import annotations

import ast
import itertools
import re
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minirlvr.tokenizer import CHARS, encode
from toy_tasks import TASKS, Problem, Task, get_task
from toy_tasks.base import parse_expression, to_text
from toy_tasks.countdown import COUNTDOWN, check_expression, reachable, solutions

CONTEXT = 96  # BOS + prompt + completion + EOS must fit (a task may declare a longer context)
EXPECTED_TASKS = {
    "addition", "addition_scratchpad", "addition_verbose", "multiplication", "multiplication_scratchpad", "countdown", "chain",
    "chain_orders",
}
THINKING_TASKS = {"addition_scratchpad", "addition_verbose", "multiplication_scratchpad", "chain", "chain_orders"}
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# One fixed problem per task (a realistic one, so the verifier does real work).
PROBLEMS = {name: task.sample(1, np.random.default_rng(123))[0] for name, task in TASKS.items()}


# ---------------------------------------------------------------------------
# Independent helpers (nothing from toy_tasks)
# ---------------------------------------------------------------------------
def ast_value(text: str) -> int | None:
    """Exact value of a + - * / ( ) expression via Python's ast, None if not one.

    Independent of toy_tasks' parser: only int constants and BinOp(+ - * /) are
    allowed, every division must be exact, and the textual rules Python does not
    share (no whitespace, no "#" comments, no leading zeros like "00") are
    checked on the raw text.
    """
    if not text or any(ch not in "0123456789+-*/()" for ch in text):
        return None
    if re.search(r"(?<![0-9])0[0-9]", text) or "**" in text or "//" in text:
        return None
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        return None

    def ev(n: ast.AST) -> Fraction:
        if isinstance(n, ast.Constant) and type(n.value) is int:
            return Fraction(n.value)
        if isinstance(n, ast.BinOp):
            a, b = ev(n.left), ev(n.right)
            if isinstance(n.op, ast.Add):
                return a + b
            if isinstance(n.op, ast.Sub):
                return a - b
            if isinstance(n.op, ast.Mult):
                return a * b
            if isinstance(n.op, ast.Div):
                if b == 0 or (a / b).denominator != 1:
                    raise ArithmeticError
                return a / b
        raise ArithmeticError  # UnaryOp, Call, Tuple, ... are not part of the grammar

    try:
        value = ev(node)
    except ArithmeticError:
        return None
    return int(value)


def numbers_in(text: str) -> list[int]:
    return [int(t) for t in re.findall(r"[0-9]+", text)]


def brute_force_texts(numbers: tuple[int, ...]) -> list[str]:
    """Every fully parenthesised expression over every ordered sub-selection of `numbers`."""

    def trees(seq: tuple[int, ...]):
        if len(seq) == 1:
            yield str(seq[0])
            return
        for i in range(1, len(seq)):
            for left in trees(seq[:i]):
                for right in trees(seq[i:]):
                    for op in "+-*/":
                        yield f"({left}{op}{right})"

    out = []
    for k in range(1, len(numbers) + 1):
        for perm in set(itertools.permutations(numbers, k)):
            out.extend(trees(perm))
    return out


def random_texts(rng: np.random.Generator, alphabet: str, n: int, max_len: int = 8) -> list[str]:
    return ["".join(rng.choice(list(alphabet), size=int(rng.integers(0, max_len + 1)))) for _ in range(n)]


# ---------------------------------------------------------------------------
# Registry and argument checking
# ---------------------------------------------------------------------------
def test_registry():
    assert set(TASKS) == EXPECTED_TASKS
    for name, task in TASKS.items():
        assert isinstance(task, Task) and task.name == name and get_task(name) is task
        assert task.default_difficulty in task.difficulties
    assert Problem is PROBLEMS["addition"].__class__


def test_unknown_task_lists_known_names():
    with pytest.raises(ValueError) as err:
        get_task("subtraction")
    message = str(err.value)
    assert "'subtraction'" in message
    assert all(name in message for name in TASKS)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_bad_sample_arguments(name):
    task, rng = TASKS[name], np.random.default_rng(0)
    with pytest.raises(ValueError, match="train.*test"):
        task.sample(2, rng, split="validation")
    with pytest.raises(ValueError) as err:
        task.sample(2, rng, difficulty=99)
    assert all(str(d) in str(err.value) for d in task.difficulties)
    with pytest.raises(ValueError):
        task.sample(-1, rng)
    assert task.sample(0, rng) == []


@pytest.mark.parametrize("name", sorted(TASKS))
def test_non_str_completion_is_type_error(name):
    task, problem = TASKS[name], PROBLEMS[name]
    for bad in (None, 71, b"71", ["7", "1"]):
        with pytest.raises(TypeError, match="str"):
            task.reward(problem, bad)


# ---------------------------------------------------------------------------
# Verifiers never raise
# ---------------------------------------------------------------------------
NASTY = [
    "", "#", "##", "=", "(", ")", "-", "-0", "0", "00", "#-0", "\n", "\x00", "\x7f", "71\n", " 71",
    "٣+٤", "３", "⁷", "𝟕", "#٧١", "\u200b", "é", "\ud800", "1e3", "1_000", "0x1f", "∞", "NaN",
    "(" * 100_000, ")" * 100_000, "(" * 50 + "1" + ")" * 50, "1+" * 50_000 + "1", "9*" * 120 + "9",
    "1" * 1_000_000, "#" + "1" * 1_000_000, "#" * 100_000, "x" * 1_000_000,
    "[3+4]7;#", "3+8=1c1;#", "7/0", "0/0", "(((((((((((((((((((((((((((((((((((1)))))))))))))))))))))))))))))))))))",
]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_reward_never_raises_on_nasty_strings(name):
    task, problem = TASKS[name], PROBLEMS[name]
    for text in NASTY:
        assert task.reward(problem, text) in (0.0, 1.0)
        answer = task.final_answer(text)
        assert answer is None or isinstance(answer, str)


@pytest.mark.parametrize("name", sorted(TASKS))
@FAST
@given(text=st.one_of(st.text(), st.text(alphabet=CHARS), st.text(alphabet="0123456789+-*/()#", max_size=40)))
def test_reward_never_raises(name, text):
    task, problem = TASKS[name], PROBLEMS[name]
    assert task.reward(problem, text) in (0.0, 1.0)
    answer = task.final_answer(text)
    assert answer is None or isinstance(answer, str)


# ---------------------------------------------------------------------------
# Demonstrations: correct, in the vocabulary, within the context and max_new_tokens
# ---------------------------------------------------------------------------
def check_demo(task: Task, problem: Problem, demo: str) -> None:
    assert problem.prompt.endswith("=") and problem.task == task.name
    assert task.reward(problem, demo) == 1.0, (problem.prompt, demo)
    assert task.final_answer(demo) == problem.answer
    n_tokens = len(encode(problem.prompt, bos=True) + encode(demo, eos=True))
    assert n_tokens <= task.context and task.context == (128 if task.name == "addition_verbose" else CONTEXT)
    assert len(demo) + 1 <= task.max_new_tokens, (task.name, demo)
    # Generation never runs past the context: BOS + prompt + max_new_tokens fits.
    assert 1 + len(problem.prompt) + task.max_new_tokens <= task.context
    if task.name in THINKING_TASKS:  # one "#" separates thinking from answer
        assert demo.count("#") == 1 and demo.endswith("#" + problem.answer)
    else:
        assert "#" not in demo


@pytest.mark.parametrize("name", sorted(TASKS))
def test_demonstrations(name):
    task = TASKS[name]
    for difficulty in task.difficulties:
        for seed in range(8):
            rng = np.random.default_rng(seed)
            for split in ("train", "test"):
                for problem in task.sample(25, rng, split=split, difficulty=difficulty):
                    assert problem.difficulty == difficulty
                    check_demo(task, problem, task.demonstration(problem, rng))


def test_worst_case_lengths():
    rng = np.random.default_rng(0)
    worst = [
        (TASKS["addition"], TASKS["addition"].make_problem(99999, 99999)),
        (TASKS["addition_scratchpad"], TASKS["addition_scratchpad"].make_problem(99999, 99999)),
        (TASKS["multiplication"], TASKS["multiplication"].make_problem(999, 9)),
        (TASKS["multiplication_scratchpad"], TASKS["multiplication_scratchpad"].make_problem(999, 9)),
        (COUNTDOWN, COUNTDOWN.make_problem((9, 8, 7, 6), 18)),
        (TASKS["chain"], TASKS["chain"].make_problem("(6+7)*9*4*1")),
        (TASKS["chain"], TASKS["chain"].make_problem("9*(9-(8-(7-6)))")),
    ]
    for task, problem in worst:
        for _ in range(20):
            check_demo(task, problem, task.demonstration(problem, rng))
    # The longest countdown prompt and expression shapes fit as well.
    assert 1 + len("9,9,9,9:99=") + COUNTDOWN.max_new_tokens <= CONTEXT
    assert len("(9-(8-7))*6") + 1 <= COUNTDOWN.max_new_tokens


# ---------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------
def test_documented_examples():
    rng = np.random.default_rng(0)
    add, adds = TASKS["addition"], TASKS["addition_scratchpad"]
    p = add.make_problem(23, 48)
    assert (p.prompt, p.answer, add.demonstration(p, rng)) == ("23+48=", "71", "71")
    assert adds.demonstration(adds.make_problem(23, 48), rng) == "3+8=1c1;2+4+1=7;#71"
    assert adds.demonstration(adds.make_problem(95, 17), rng) == "5+7=2c1;9+1+1=1c1;#112"
    mul, muls = TASKS["multiplication"], TASKS["multiplication_scratchpad"]
    assert mul.make_problem(37, 6).prompt == "37*6="
    assert muls.demonstration(muls.make_problem(37, 6), rng) == "7*6=2c4;3*6+4=2c2;#222"
    assert muls.demonstration(muls.make_problem(905, 8), rng) == "5*8=0c4;0*8+4=4;9*8=2c7;#7240"
    chain = TASKS["chain"]
    p = chain.make_problem("(3+4)*2-5")
    assert (p.prompt, p.answer, p.difficulty) == ("(3+4)*2-5=", "9", 3)
    assert chain.demonstration(p, rng) == "[3+4]7;[7*2]14;[14-5]9;#9"
    # Standard precedence, leftmost ready operation first.
    assert chain.demonstration(chain.make_problem("2*3+4*5"), rng) == "[2*3]6;[4*5]20;[6+20]26;#26"
    assert chain.demonstration(chain.make_problem("1+2*3"), rng) == "[2*3]6;[1+6]7;#7"
    p = COUNTDOWN.make_problem((7, 3, 4), 25)
    assert (p.prompt, p.answer, p.data) == ("3,4,7:25=", "25", ((3, 4, 7), 25))
    assert "3*7+4" in solutions((3, 4, 7), 25)[0]
    assert solutions((3, 4, 7), 25) == (("3*7+4", "4*7-3", "4+3*7", "4+7*3", "7*3+4", "7*4-3"), 2)


def verify_column_scratchpad(a: int, b: int, demo: str, op: str) -> None:
    """Independently replay a scratchpad: every step's arithmetic and the carry chain."""
    thinking, answer = demo.split("#")
    steps = thinking.split(";")
    assert steps[-1] == ""
    xs = str(a)[::-1]
    carry = 0
    digits = []
    for i, step in enumerate(steps[:-1]):
        m = re.fullmatch(r"([0-9])\%s([0-9])(?:\+([0-9]))?=([0-9])(?:c([1-9]))?" % op, step)
        assert m, step
        x, y, cin, d, cout = m.groups()
        assert x == xs[i]
        assert y == (str(b).zfill(len(xs))[::-1][i] if op == "+" else str(b))
        assert int(cin or 0) == carry and (cin is None) == (carry == 0)
        total = int(x) + int(y) + carry if op == "+" else int(x) * int(y) + carry
        assert total == int(d) + 10 * int(cout or 0)
        digits.append(d)
        carry = int(cout or 0)
    expected = (str(carry) if carry else "") + "".join(reversed(digits))
    assert str(int(expected)) == answer


def test_scratchpads_replay():
    rng = np.random.default_rng(0)
    adds, muls = TASKS["addition_scratchpad"], TASKS["multiplication_scratchpad"]
    for d in adds.difficulties:
        for p in adds.sample(50, rng, difficulty=d):
            verify_column_scratchpad(*p.data, adds.demonstration(p, rng), "+")
    for d in muls.difficulties:
        for p in muls.sample(50, rng, difficulty=d):
            verify_column_scratchpad(*p.data, muls.demonstration(p, rng), "*")


def test_chain_problems_and_steps():
    task, rng = TASKS["chain"], np.random.default_rng(0)
    for d in task.difficulties:
        for p in task.sample(100, rng, difficulty=d, split="train") + task.sample(100, rng, difficulty=d, split="test"):
            expr = p.prompt[:-1]
            assert set(expr) <= set("123456789+-*()") and ast_value(expr) == int(p.answer)
            assert sum(expr.count(op) for op in "+-*") == d
            demo = task.demonstration(p, rng)
            steps = re.findall(r"\[([0-9]+)([-+*])([0-9]+)\]([0-9]+);", demo)
            assert "".join(f"[{a}{o}{b}]{v};" for a, o, b, v in steps) + "#" + p.answer == demo
            assert len(steps) == d
            for a, o, b, v in steps:
                assert ast_value(f"{a}{o}{b}") == int(v) and 0 <= int(v) <= 999
            assert steps[-1][3] == p.answer


def replay_plan(expr: str, demo: str) -> bool:
    """Independently check a chain completion: every step evaluates an operation of the current
    expression whose operands are plain numbers (an innermost "a op b" that binds at its place), and
    substituting its value leaves an expression of the same value; ends with "#answer"."""
    steps = re.findall(r"\[([0-9]+)([-+*])([0-9]+)\]([0-9]+);", demo)
    if "".join(f"[{a}{o}{b}]{v};" for a, o, b, v in steps) + f"#{ast_value(expr)}" != demo:
        return False
    for a, o, b, v in steps:
        if ast_value(f"{a}{o}{b}") != int(v):
            return False
        # replace one occurrence of "a o b" that Python's parse tree evaluates as one node
        for m in re.finditer(re.escape(f"{a}{o}{b}"), expr):
            before, after = expr[:m.start()], expr[m.end():]
            if (before and before[-1].isdigit()) or (after and after[0].isdigit()):
                continue
            new = before + v + after
            new = re.sub(r"\(([0-9]+)\)", r"\1", new)  # "(7)" -> "7"
            # the operation is a node of the tree iff replacing it keeps the value and shortens the tree by one op
            if ast_value(new) == ast_value(expr) and sum(new.count(c) for c in "+-*") == sum(expr.count(c) for c in "+-*") - 1:
                expr = new
                break
        else:
            return False
    return expr == str(ast_value(expr))


def test_addition_verbose_is_the_scratchpad_with_removable_rechecks():
    from toy_tasks.addition import recheck_count, verbose_scratchpad
    verbose, pad, rng = TASKS["addition_verbose"], TASKS["addition_scratchpad"], np.random.default_rng(0)
    assert verbose_scratchpad(23, 48, [1, 0]) == "3+8=1c1;?3+8=1c1;2+4+1=7;#71"
    with pytest.raises(ValueError, match="one re-check count per column"):
        verbose_scratchpad(23, 48, [1])
    for d in verbose.difficulties:
        assert [p.prompt for p in verbose.sample(40, np.random.default_rng(d), difficulty=d)] == \
            [p.prompt for p in pad.sample(40, np.random.default_rng(d), difficulty=d)]
        for p in verbose.sample(40, rng, difficulty=d):
            base = pad.demonstration(p, rng)
            demos = [verbose.demonstration(p, rng) for _ in range(60)]
            for demo in demos:
                steps = demo.split(";")
                # removing the "?" steps gives the plain scratchpad; each "?" step repeats the step before it
                assert ";".join(x for x in steps if not x.startswith("?")) == base
                assert all(not x.startswith("?") or x[1:] == steps[i - 1].lstrip("?") for i, x in enumerate(steps))
                assert 0 <= recheck_count(demo) <= 2 * d and len(base) <= len(demo) < 3 * len(base)
                assert verbose.reward(p, demo) == 1.0
            assert len({recheck_count(x) for x in demos}) > 1  # the length really varies per problem
    assert recheck_count("?;?x") == 2 and recheck_count("") == 0


def test_chain_orders_same_problems_any_valid_order():
    from toy_tasks.chain import valid_plans
    chain, orders, rng = TASKS["chain"], TASKS["chain_orders"], np.random.default_rng(0)
    assert [p.prompt for p in orders.sample(50, np.random.default_rng(3))] == \
        [p.prompt for p in chain.sample(50, np.random.default_rng(3))]
    p = orders.make_problem("2*3+4*5")
    assert {orders.demonstration(p, rng) for _ in range(40)} == valid_plans(parse_expression("2*3+4*5")) == {
        "[2*3]6;[4*5]20;[6+20]26;#26", "[4*5]20;[2*3]6;[6+20]26;#26"}
    assert valid_plans(parse_expression("(3+4)*2-5")) == {"[3+4]7;[7*2]14;[14-5]9;#9"}  # one order only
    multi = 0
    for d in orders.difficulties:
        for q in orders.sample(60, rng, difficulty=d):
            plans = valid_plans(parse_expression(q.data[0]))
            multi += len(plans) > 1
            assert chain.demonstration(q, rng) in plans  # the leftmost-ready order is one of them
            for demo in plans:
                assert replay_plan(q.data[0], demo), (q.prompt, demo)
                assert orders.reward(q, demo) == chain.reward(q, demo) == 1.0
            assert orders.demonstration(q, rng) in plans
    assert multi > 20  # many prompts have a choice of plan
    assert not replay_plan("1+2*3", "[1+2]3;[3*3]9;#7") and not replay_plan("2*3+4*5", "[3+4]7;[6+20]26;#26")


# ---------------------------------------------------------------------------
# Verifiers agree with brute force
# ---------------------------------------------------------------------------
def completions_for(answer: str, rng: np.random.Generator) -> list[str]:
    near = [answer, "0" + answer, answer + " ", answer + "0", "-" + answer, "#" + answer, "##" + answer,
            "1c1;#" + answer, "#" + answer + ";", str(int(answer) + 1), answer[:-1], ""]
    return near + random_texts(rng, "0123456789#", 20, 4) + random_texts(rng, CHARS, 10, 6)


@pytest.mark.parametrize("name", ["addition", "addition_scratchpad", "multiplication", "multiplication_scratchpad"])
def test_column_verifiers_brute_force(name):
    task, rng = TASKS[name], np.random.default_rng(0)
    op = "+" if name.startswith("addition") else "*"
    for a in range(10):
        for b in range(10) if op == "+" else range(2, 10):
            truth = str(a + b if op == "+" else a * b)
            problem = task.make_problem(a, b)
            assert problem.answer == truth and problem.prompt == f"{a}{op}{b}="
            for c in completions_for(truth, rng):
                if name.endswith("scratchpad"):
                    expected = "#" in c and c.split("#")[-1] == truth
                else:
                    expected = c == truth
                assert task.reward(problem, c) == float(expected), (problem.prompt, c)


@FAST
@given(text=st.text(alphabet="0123456789#;c+=", max_size=12), a=st.integers(0, 99), b=st.integers(0, 99))
def test_scratchpad_reward_is_last_segment(text, a, b):
    task = TASKS["addition_scratchpad"]
    expected = "#" in text and text.split("#")[-1] == str(a + b)
    assert task.reward(task.make_problem(a, b), text) == float(expected)


@FAST
@given(text=st.text(alphabet="0123456789#;[]+-*", max_size=12))
def test_chain_reward_is_last_segment(text):
    task = TASKS["chain"]
    problem = task.make_problem("9*(1+2)-3")  # 24
    assert task.reward(problem, text) == float("#" in text and text.split("#")[-1] == "24")
    assert task.reward(problem, text + "#24") == 1.0


def expressions(digits: str = "0123456789") -> st.SearchStrategy[str]:
    """Random well-formed expressions (plus occasional junk) over the countdown grammar."""
    number = st.text(alphabet=digits, min_size=1, max_size=2)

    def extend(inner):
        return st.one_of(
            st.tuples(inner, st.sampled_from("+-*/"), inner).map(lambda t: "".join(t)),
            inner.map(lambda s: f"({s})"),
        )

    return st.recursive(number, extend, max_leaves=6)


COUNTDOWN_TEXT = st.one_of(
    expressions(),
    expressions("123456789"),
    st.text(alphabet="0123456789+-*/() #", max_size=12),
)


@settings(max_examples=400, deadline=None)
@given(text=COUNTDOWN_TEXT)
def test_countdown_parser_matches_ast(text):
    checked = check_expression(text)
    expected = ast_value(text)
    assert (None if checked is None else checked[0]) == expected, text
    assert COUNTDOWN.final_answer(text) == (None if expected is None else str(expected))


@settings(max_examples=300, deadline=None)
@given(text=COUNTDOWN_TEXT, numbers=st.lists(st.integers(1, 9), min_size=3, max_size=4), target=st.integers(-20, 99))
def test_countdown_reward_matches_brute_force(text, numbers, target):
    problem = COUNTDOWN.make_problem(numbers, target)
    value = ast_value(text)
    used = Counter(numbers_in(text)) if value is not None else None
    legal = used is not None and all(used[k] <= numbers.count(k) for k in used)
    assert COUNTDOWN.reward(problem, text) == float(value == target and legal), (problem.prompt, text)


@pytest.mark.parametrize("numbers", [(3, 4, 7), (2, 2, 7), (1, 5, 5), (6, 6, 6), (1, 2, 9, 9)])
def test_countdown_enumeration_matches_brute_force(numbers):
    by_value: dict[int, set[str]] = {}
    for full in brute_force_texts(numbers):
        value = ast_value(full)
        if value is not None:
            # Reprint with minimal parentheses (the form the task's solutions use).
            by_value.setdefault(value, set()).add(to_text(parse_expression(full))[0])
    assert reachable(numbers) == set(by_value)
    for target in [t for t in sorted(by_value) if 10 <= t <= 99][:15] + [0, -3, 1]:
        texts, n_distinct = solutions(numbers, target)
        if target not in by_value:
            assert texts == () and n_distinct == 0
            continue
        assert set(texts) == by_value[target], target
        assert 1 <= n_distinct <= len(texts)
        problem = COUNTDOWN.make_problem(numbers, target)
        for text in texts:
            assert ast_value(text) == target
            assert COUNTDOWN.reward(problem, text) == 1.0


def test_countdown_rejections():
    p = COUNTDOWN.make_problem((3, 4, 7), 6)
    assert COUNTDOWN.reward(p, "3+3") == 0.0            # 3 given once
    assert COUNTDOWN.reward(COUNTDOWN.make_problem((3, 3, 4), 6), "3+3") == 1.0
    assert COUNTDOWN.reward(p, "2*3") == 0.0            # 2 not given
    assert COUNTDOWN.reward(p, "7-4+3") == 1.0
    assert COUNTDOWN.reward(p, "((7-4)+(3))") == 1.0    # redundant parentheses are fine
    for bad in ["3+", "(3", "3)", "", "++", "3 4", "03", "+3+3", "-1+7", " 7-4+3", "7-4+3 ", "#7-4+3",
                "7-4+3#", "7-4+3=6", "()", "(7-4)(3)", "7--4", "7-4+3\n", "٧-٤+٣"]:
        assert COUNTDOWN.reward(p, bad) == 0.0, bad
    for malformed in ["3+", "(3", "3)", "", "++", "3 4", "03", "()", "7/2*2", "7/(4-4)"]:
        assert COUNTDOWN.final_answer(malformed) is None, malformed
    q = COUNTDOWN.make_problem((2, 2, 7), 7)
    assert COUNTDOWN.reward(q, "7/2*2") == 0.0          # 7/2 is not an integer
    assert COUNTDOWN.reward(q, "7*2/2") == 1.0
    assert COUNTDOWN.reward(COUNTDOWN.make_problem((3, 4, 9), 25), "34-9") == 0.0  # "34" is not given
    assert COUNTDOWN.final_answer("34-9") == "25"       # ... but it does claim 25
    assert COUNTDOWN.final_answer("4-7") == "-3"


def test_countdown_targets_and_demo_diversity():
    rng = np.random.default_rng(0)
    for d in COUNTDOWN.difficulties:
        for split in ("train", "test"):
            for p in COUNTDOWN.sample(100, rng, split=split, difficulty=d):
                numbers, target = p.data
                assert len(numbers) == d and all(1 <= x <= 9 for x in numbers)
                assert 10 <= target <= 99
                # A target with >= 2 distinct solutions whenever this split offers one.
                if solutions(numbers, target)[1] < 2:
                    for t in reachable(numbers):
                        if 10 <= t <= 99 and COUNTDOWN.split_of(COUNTDOWN.make_problem(numbers, t)) == split:
                            assert solutions(numbers, t)[1] < 2, (numbers, target, t)
    p = COUNTDOWN.make_problem((3, 4, 7), 25)
    demos = {COUNTDOWN.demonstration(p, rng) for _ in range(100)}
    assert demos == set(solutions((3, 4, 7), 25)[0]) and len(demos) > 2


# ---------------------------------------------------------------------------
# Splits and determinism
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TASKS))
def test_train_test_disjoint(name):
    task = TASKS[name]
    for d in task.difficulties:
        train = task.sample(200, np.random.default_rng(1), split="train", difficulty=d)
        test = task.sample(200, np.random.default_rng(2), split="test", difficulty=d)
        assert all(task.split_of(p) == "train" for p in train)
        assert all(task.split_of(p) == "test" for p in test)
        assert not {task.key(p) for p in train} & {task.key(p) for p in test}
        assert not {p.prompt for p in train} & {p.prompt for p in test}


def test_test_fraction_of_problem_space():
    add = TASKS["addition"]
    one_digit = [add.make_problem(a, b) for a in range(10) for b in range(10)]
    two_digit = [add.make_problem(a, b) for a in range(10, 100) for b in range(10, 100)]
    frac1 = np.mean([add.split_of(p) == "test" for p in one_digit])
    frac2 = np.mean([add.split_of(p) == "test" for p in two_digit])
    assert 0.1 <= frac1 <= 0.3
    assert 0.18 <= frac2 <= 0.22
    # Commuted operands share a split; the scratchpad variant has the same test set.
    for p in two_digit[:500]:
        a, b = p.data
        assert add.split_of(p) == add.split_of(add.make_problem(b, a))
        assert TASKS["addition_scratchpad"].split_of(TASKS["addition_scratchpad"].make_problem(a, b)) == add.split_of(p)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_determinism(name):
    task = TASKS[name]
    for split in ("train", "test"):
        first = task.sample(30, np.random.default_rng(7), split=split)
        assert first == task.sample(30, np.random.default_rng(7), split=split)
        assert first != task.sample(30, np.random.default_rng(8), split=split)
        demos = [task.demonstration(p, np.random.default_rng(i)) for i, p in enumerate(first)]
        assert demos == [task.demonstration(p, np.random.default_rng(i)) for i, p in enumerate(first)]


# ---------------------------------------------------------------------------
# Per-task test share and difficulty mixtures (problem distribution knobs)
# ---------------------------------------------------------------------------
# Digests of the splits as they were when the share was one global constant (20%), computed with
# that code: 60 problems per split and difficulty (rng seeded with the level), key + split of each.
SPLIT_DIGESTS = {
    "addition": "1c54046b10d9549e",
    "addition_scratchpad": "1c54046b10d9549e",
    "addition_verbose": "b242bd4f5f4fa216",  # levels 1-3 only; same problems as addition's (tested below)
    "chain": "43acca00d9eeffa8",
    "chain_orders": "43acca00d9eeffa8",  # chain's problems and splits exactly
    "countdown": "908d7880935ac331",
    "multiplication": "97f15f06e6b65d66",
    "multiplication_scratchpad": "97f15f06e6b65d66",
}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_split_of_every_task_is_unchanged(name):
    import hashlib
    task = TASKS[name]
    assert task.test_percent == 20
    h = hashlib.sha256()
    for d in task.difficulties:
        for split in ("train", "test"):
            for p in task.sample(60, np.random.default_rng(d), split=split, difficulty=d):
                h.update(f"{task.key(p)}|{split}|{task.split_of(p)};".encode())
    assert h.hexdigest()[:16] == SPLIT_DIGESTS[name]


def test_whole_split_of_small_spaces_is_unchanged():
    import hashlib
    add, mul = TASKS["addition"], TASKS["multiplication"]
    s = "".join(add.split_of(add.make_problem(a, b))[1] for a in range(100) for b in range(100))
    assert (hashlib.sha256(s.encode()).hexdigest()[:16], s.count("e")) == ("765a80085aa2619b", 1964)
    s = "".join(mul.split_of(mul.make_problem(a, b))[1] for a in range(1000) for b in range(10))
    assert (hashlib.sha256(s.encode()).hexdigest()[:16], s.count("e")) == ("38a6e04fcea63f87", 2018)


def test_test_percent_is_per_task():
    from dataclasses import replace
    add = TASKS["addition"]
    half = replace(add, name="addition_half", test_percent=50)
    space = [add.make_problem(a, b) for a in range(10, 100) for b in range(10, 100)]
    frac = np.mean([half.split_of(p) == "test" for p in space])
    assert 0.47 <= frac <= 0.53
    # a larger share only adds keys to the test split (the bucket threshold moves up)
    assert all(half.split_of(p) == "test" for p in space if add.split_of(p) == "test")
    assert all(half.split_of(p) == "test" for p in half.sample(50, np.random.default_rng(0), split="test"))
    cd = replace(COUNTDOWN, name="countdown_half", test_percent=50)   # countdown draws targets of the split itself
    assert all(cd.split_of(p) == "test" for p in cd.sample(20, np.random.default_rng(0), split="test"))
    for bad in (0, 100, 20.5, True):
        with pytest.raises(ValueError, match="test_percent"):
            replace(add, test_percent=bad)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_difficulty_mixture(name):
    task = TASKS[name]
    levels = task.difficulties[:2]
    probs = task.sample(200, np.random.default_rng(0), difficulty=levels)
    counts = Counter(p.difficulty for p in probs)
    assert set(counts) == set(levels) and min(counts.values()) > 60   # uniform over the tuple: ~100 each
    assert probs == task.sample(200, np.random.default_rng(0), difficulty=list(levels))
    # a single level (or a 1-tuple) draws no level: the same stream as before mixtures existed
    one = task.difficulties[-1]
    assert task.sample(20, np.random.default_rng(3), difficulty=(one,)) == task.sample(20, np.random.default_rng(3), difficulty=one)
    assert task.sample(20, np.random.default_rng(3)) == task.sample(20, np.random.default_rng(3), difficulty=task.default_difficulty)
    for bad in ((), (levels[0], 99), (True,), "2"):
        with pytest.raises(ValueError, match="valid difficulties"):
            task.sample(2, np.random.default_rng(0), difficulty=bad)


def test_mixture_weights_follow_repeats():
    add = TASKS["addition"]
    counts = Counter(p.difficulty for p in add.sample(600, np.random.default_rng(1), difficulty=(1, 1, 2)))
    assert 350 <= counts[1] <= 450 and counts[1] + counts[2] == 600

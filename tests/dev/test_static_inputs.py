"""Every predictor's Inputs must read the same to the Go CLI's static parser as to Python."""

import textwrap
from pathlib import Path

import pytest

from cogvx.dev.static_inputs import static_input_problems

REPO = Path(__file__).resolve().parents[2]
PREDICTORS = ["predict_t2v", "predict_i2v", "predict_caption", "predict_enhance"]


def test_predictor_files_are_found():
    found = sorted(REPO.glob("predict_*/predict.py"))
    if (REPO / "predict_t2v" / "predict.py").exists():
        assert found, "predict_t2v/predict.py exists but the glob found no predictor"
    extra = {p.parent.name for p in found} - set(PREDICTORS)
    assert not extra, f"add {sorted(extra)} to PREDICTORS so they are checked"


@pytest.mark.parametrize("folder", [*PREDICTORS, "tests/sample_runner"])
def test_predictor_inputs_survive_the_go_parser(folder):
    path = REPO / folder / "predict.py"
    if not path.exists():
        pytest.skip(f"{folder}/predict.py not written yet")
    problems = static_input_problems(path)
    assert problems == [], "\n".join(problems)


HEADER = """\
from typing import Optional
import cog
from cog import BaseRunner, Input, Path
from elsewhere import IMPORTED_MAX, IMPORTED_SIZES

LOW = 1
SIZES = ["a", "b"]
"""

# (run() parameter line, text expected in the single problem reported)
BAD = [
    ("x: int = Input(default=1, ge=LOW)", "ge is dropped: `LOW` is no decimal number literal"),
    ("x: int = Input(default=1, le=IMPORTED_MAX)", "le is dropped"),
    ("x: int = Input(default=1, le=(10))", "le is dropped: `(10)`"),
    ("x: int = Input(default=1, le=0x10)", "le is dropped: `0x10`"),
    ("x: str = Input(min_length=LOW)", "min_length is dropped"),
    ("x: str = Input(max_length=2.5)", "max_length=2.5 must be a non-negative integer"),
    ("x: str = Input(default='a', choices=IMPORTED_SIZES)", "imported from elsewhere"),
    ("x: str = Input(default='a', choices=('a', 'b'))", "a tuple is not accepted here"),
    ("x: str = Input(default='a', choices=[c for c in SIZES])", "choices cannot be resolved"),
    ("x: int = Input(default=IMPORTED_MAX)", "default silently becomes None: IMPORTED_MAX is"),
    ("x: str = Input(default=SIZES[0])", "default silently becomes None: `SIZES[0]`"),
    ("x: float = Input(default=(0.5))", "default silently becomes None: `(0.5)`"),
    ("x: int = Input(default=None)", "REQUIRED input for the Go CLI: annotate Optional"),
    ("x: Path = None", "REQUIRED input for the Go CLI: annotate Optional"),
    ("x: str = Input(description='one ' 'two')", "the Go CLI reads \"one ' 'two\""),
    ("x: str = Input(default='tab\\there')", "the Go CLI reads 'tab\\\\there'"),
    ("x: str = Input(description=f'{LOW} steps')", "description is dropped"),
    ("x: str = Input(regex=u'^a')", "regex is dropped"),
    ("x: str = Input('positional')", "positional Input() arguments are ignored"),
    ("x: str = cog.Input(default='z')", "is no Input for the Go CLI"),
    ("x: str = Input(deprecated=1)", "deprecated=1 is dropped"),
    ("x = Input(default=3)", "missing type annotation"),
    ("x: 'int' = 3", "type `'int'` is not resolved"),
    ("x: list[Optional[int]] = Input(description='d')", "is not resolved by the Go CLI"),
    ("x: int = LOW + 1", "default `LOW + 1` is not a static literal"),
]


def write(tmp_path: Path, param: str, extra: str = "", body: str = "") -> Path:
    source = (
        HEADER
        + extra
        + textwrap.dedent(
            f"""
        class Runner(BaseRunner):
            def run(self, {param}) -> Path:
                {body or "return Path('out')"}
        """
        )
    )
    path = tmp_path / "predict.py"
    path.write_text(source)
    return path


@pytest.mark.parametrize(("param", "expected"), BAD, ids=[b[0] for b in BAD])
def test_each_bad_input_is_reported(tmp_path, param, expected):
    problems = static_input_problems(write(tmp_path, param))
    assert len(problems) == 1, "\n".join(problems)
    assert expected in problems[0], problems[0]
    assert problems[0].startswith(f"{tmp_path / 'predict.py'}:")


def test_input_outside_run_is_reported(tmp_path):
    path = write(
        tmp_path, "x: int = 1", extra="GLOBAL = Input(default=3)\n", body="y = Input(default=2)"
    )
    problems = static_input_problems(path)
    assert len(problems) == 2, problems
    assert all("Input(...) here is invisible to the Go CLI" in p for p in problems)


def test_reassigned_and_partial_constants_are_reported(tmp_path):
    extra = 'LATE = ["p", "q"]\nLATE = LATE + ["r"]\nTUP = ("x", int("1"), "y")\n'
    a = static_input_problems(write(tmp_path, "x: str = Input(default='p', choices=LATE)", extra))
    b = static_input_problems(write(tmp_path, "x: str = Input(default='x', choices=TUP)", extra))
    assert len(a) == 1 and "the Go CLI reads ['p', 'q']" in a[0]
    assert len(b) == 1 and "the Go CLI reads ['x', 'y']" in b[0]


GOOD = '''
MODES = {"fast": 1, "slow": 2}
MORE = ("c", "d")
HELP = "A same-file constant description."


class Inputs:
    shared = Input(description="Shared through a class attribute.", default=2, ge=1, le=4)
    seed = Input(description="Random seed; blank picks one.", default=None)


class Runner(BaseRunner):
    def setup(self, weights: Optional[str] = None) -> None:
        self.weights = weights

    def run(
        self,
        prompt: str = Input(description="""A triple-quoted description, it's fine."""),
        seed: Optional[int] = Inputs.seed,
        shared: int = Inputs.shared,
        offset: int = Input(default=-1, ge=-5, le=1_000),
        scale: float = Input(default=-0.5, ge=-1.0, le=1e3),
        size: str = Input(default="a", choices=SIZES + ["c"], description=HELP),
        more: str = Input(default="c", choices=MORE),
        mode: str = Input(default="fast", choices=list(MODES.keys())),
        fps: int = Input(default=8, choices=[8, 16]),
        name: str = Input(default="x", regex=r"^\\w+$", min_length=1, max_length=10),
        image: Optional[Path] = Input(default=None),
        mask: Path | None = None,
        loop: bool = False,
        count: int = LOW,
        tags: list[str] = Input(default=["a", "b"]),
        old: str = Input(default="", deprecated=True),
    ) -> Path:
        return Path("out")


class Runner2(Runner):
    """A subclass with its own defaults redefines run()."""

    def run(self, prompt: str = Input(description="Prompt."), fps: int = 16) -> Path:
        return Path("out")
'''


def test_good_predictor_has_no_problems(tmp_path):
    path = tmp_path / "predict.py"
    path.write_text(HEADER + GOOD)
    assert static_input_problems(path) == []


def test_syntax_error_is_a_problem(tmp_path):
    path = tmp_path / "predict.py"
    path.write_text("def run(:\n")
    assert "syntax error" in static_input_problems(path)[0]

"""Each concept has one home: the code a chapter shows is the code in book/, line for line.

The one convention: a code cell whose first line is ``# book/<module path>.py`` shows code from that
module (the comment may be repeated above later definitions of the same cell). Every function and
class (dataclasses included) defined at the top level of such a cell must be identical to the
module's, decorators included. A ``# book/...`` comment anywhere else is an error, since the code
under it would go unchecked.

``TAUGHT_IN_FULL`` says which modules a reader sees whole: every public function and/or class
(or the classes named) must be shown in some chapter.
"""
import ast
import importlib
import inspect
import re

import nbformat
import pytest

from book.grader import exercises
from conftest import ROOT

MARK = re.compile(r"# (book/[\w/]+)\.py\s*$")  # the whole first line of a cell that shows book code
ANY_MARK = re.compile(r"^\s*#\s*book/\S*\.py\b")  # what looks like a marker, wherever it is

# module -> what some chapter must show of it: "functions" (every public function), "classes"
# (every public class), or the names of particular classes
TAUGHT_IN_FULL = {
    "book.attention": {"functions"},
    "book.rnn": {"functions", "classes"},
    "book.multihead": {"functions", "MultiHeadAttention"},
    "book.positional": {"functions", "SinusoidalPositionalEncoding", "LearnedPositionalEmbedding"},
    "book.layers": {"functions", "TokenEmbedding", "LayerNorm", "FeedForward", "EncoderLayer", "DecoderLayer"},
    "book.bpe": {"functions", "classes"},
    "book.pretrained": {"BertConfig", "BertEmbeddings", "BertEncoder"},
    "book.gpt": {"GPTConfig", "GPT"},
    "book.t5": {"T5Config", "T5"},
    "book.vit": {"ViTConfig", "PatchEmbedding", "ViT", "SmallCNN"},
}


def _code_cells():
    for path in sorted((ROOT / "chapters").glob("*.ipynb")):
        for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if cell.cell_type == "code":
                yield path.stem, index, cell.source


def marked_cells():
    """(chapter, cell index, module path such as 'book/rnn', source) of every cell that shows book code."""
    found = []
    for chapter, index, source in _code_cells():
        match = MARK.fullmatch(source.split("\n", 1)[0])
        if match:
            found.append((chapter, index, match.group(1), source))
    return found


def shown_definitions():
    """(chapter, module, name, source lines) of every function and class shown in a marked cell."""
    found = []
    for chapter, _, module_path, source in marked_cells():
        lines = source.splitlines()
        for node in ast.parse(source).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])  # with @dataclass etc.
                found.append((chapter, module_path.replace("/", "."), node.name,
                              "\n".join(lines[start - 1: node.end_lineno])))
    return found


MARKED = marked_cells()
SHOWN = shown_definitions()


# ----------------------------------------------------------------------------- the markers
@pytest.mark.parametrize("chapter", sorted({e.split("/")[0] for e in exercises()}))
def test_every_chapter_shows_book_code(chapter):
    assert (ROOT / "chapters" / f"{chapter}.ipynb").exists(), f"no notebook for chapter {chapter}"
    assert any(c == chapter for c, _, _, _ in MARKED), f"{chapter} shows no cell marked `# book/<module>.py`"


@pytest.mark.parametrize("chapter,index,module_path,source", MARKED,
                         ids=[f"{c}-cell{i}" for c, i, _, _ in MARKED])
def test_marker_names_a_module_and_the_cell_defines_its_code(chapter, index, module_path, source):
    assert (ROOT / f"{module_path}.py").is_file(), f"{chapter} cell {index}: there is no {module_path}.py"
    importlib.import_module(module_path.replace("/", "."))
    tree = ast.parse(source)
    assert any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for n in tree.body), (
        f"{chapter} cell {index} is marked `# {module_path}.py` but defines no function or class")
    for n, line in enumerate(source.splitlines()[1:], start=2):
        if ANY_MARK.match(line):
            assert line.strip() == f"# {module_path}.py", (
                f"{chapter} cell {index}, line {n}: `{line.strip()}` in a cell of `# {module_path}.py`: "
                "one cell shows one module")


def test_markers_stand_on_the_first_line_of_a_cell():
    misplaced = [f"{chapter} cell {index}, line {n}: {line.strip()}"
                 for chapter, index, source in _code_cells()
                 if not MARK.fullmatch(source.split("\n", 1)[0])
                 for n, line in enumerate(source.splitlines(), start=1) if ANY_MARK.match(line)]
    assert not misplaced, ("a `# book/<module>.py` marker must be the first line of its cell "
                           "(split the cell), else its code goes unchecked:\n" + "\n".join(misplaced))


# ----------------------------------------------------------------------------- the code
@pytest.mark.parametrize("chapter,module,name,source", SHOWN, ids=[f"{c}-{n}" for c, _, n, _ in SHOWN])
def test_chapter_code_is_identical_to_book(chapter, module, name, source):
    mod = importlib.import_module(module)
    assert hasattr(mod, name), f"{chapter} shows {name} as part of {module}, which has no such name"
    assert inspect.getsource(getattr(mod, name)).strip() == source.strip(), (
        f"{chapter}'s {name} differs from {module}.{name}: edit both together")


def _public(module, kind):
    return {n for n, obj in vars(module).items() if kind(obj) and getattr(obj, "__module__", None) == module.__name__
            and not n.startswith("_")}


@pytest.mark.parametrize("module_name", sorted(TAUGHT_IN_FULL))
def test_module_is_taught_in_full(module_name):
    module = importlib.import_module(module_name)
    spec = TAUGHT_IN_FULL[module_name]
    required = {name for name in spec if name not in ("functions", "classes")}
    missing_names = {n for n in required if not inspect.isclass(getattr(module, n, None))}
    assert not missing_names, f"TAUGHT_IN_FULL names classes that {module_name} lacks: {missing_names}"
    if "functions" in spec:
        required |= _public(module, inspect.isfunction)
    if "classes" in spec:
        required |= _public(module, inspect.isclass)
    shown = {name for _, m, name, _ in SHOWN if m == module_name}
    assert required <= shown, f"{module_name}: not shown in any chapter: {sorted(required - shown)}"


# ----------------------------------------------------------------------------- exercises are not retyping
def _defined_in_chapters_up_to(number):
    """name -> chapter, for every top-level function or class a chapter up to `number` defines."""
    found = {}
    for chapter, _, source in _code_cells():
        if chapter[:2] <= number:
            try:
                body = ast.parse(source).body
            except SyntaxError:  # cells with IPython magics
                continue
            for node in body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    found.setdefault(node.name, chapter)
    return found


@pytest.mark.parametrize("exercise_id", exercises())
def test_no_exercise_asks_for_code_a_chapter_prints(exercise_id):
    """An exercise whose answer a chapter (its own or an earlier one) prints is retyping, not an exercise."""
    from book.grader import get_exercise
    ex = get_exercise(exercise_id)
    if ex.kind != "function":
        return
    shown = _defined_in_chapters_up_to(ex.chapter[:2])
    assert ex.name not in shown, (
        f"{exercise_id} asks for `{ex.name}`, which {shown.get(ex.name)} prints in full: make the learner "
        "derive, extend, debug or predict instead")

"""Each concept has one home: the functions a chapter shows are the ones in book/, line for line.

A chapter cell that begins with the comment ``# book/<module>.py`` shows code that lives in that
module; every function and class defined in such a cell must be identical to the module's.
"""
import ast
import importlib
import inspect
import re

import nbformat
import pytest

from conftest import ROOT

MARK = re.compile(r"^# (book/[\w/]+)\.py\s*$", re.M)


def shown_functions():
    found = []
    for path in sorted((ROOT / "chapters").glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type != "code":
                continue
            marks = MARK.findall(cell.source)
            if not marks:
                continue
            module = marks[0].replace("/", ".")
            tree = ast.parse(cell.source)
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    if node.decorator_list:  # include decorator lines (e.g. @dataclass)
                        node.lineno = node.decorator_list[0].lineno
                    lines = cell.source.splitlines()[node.lineno - 1 : node.end_lineno]  # whole lines
                    found.append((path.name, module, node.name, "\n".join(lines)))
    return found


def test_chapters_show_book_code():
    assert len(shown_functions()) >= 5


@pytest.mark.parametrize("chapter,module,name,source", shown_functions(), ids=lambda x: x if isinstance(x, str) and "\n" not in x else "")
def test_chapter_code_is_identical_to_book(chapter, module, name, source):
    mod = importlib.import_module(module)
    assert hasattr(mod, name), f"{chapter} shows {name} as part of {module}, which has no such function"
    assert inspect.getsource(getattr(mod, name)).strip() == source.strip(), (
        f"{chapter}'s {name} differs from {module}.{name}: edit both together")


def test_every_public_function_of_attention_is_taught():
    import book.attention as A

    taught = {name for _, module, name, _ in shown_functions() if module == "book.attention"}
    public = {n for n, f in vars(A).items() if inspect.isfunction(f) and f.__module__ == A.__name__ and not n.startswith("_")}
    assert public <= taught, f"not shown in a chapter: {public - taught}"

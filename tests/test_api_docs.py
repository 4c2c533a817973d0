"""docs/api.md says what the code does: its request table, stylize_video's signature and keywords and
its "Adding an option" example are read here and compared with the code, so they cannot drift; and
`dir(stylebatch)` shows the names the package imports when first used (a notebook's tab completion)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import stylebatch
from stylebatch import requests
from stylebatch.api import stylize_video

ROOT = Path(__file__).resolve().parent.parent
API_MD = ROOT / "docs" / "api.md"
REQUESTS_PY = ROOT / "worker" / "stylebatch" / "requests.py"
TABLE_HEADER = "| request | command | fields |"


def _section(doc: str, heading: str) -> str:
    """The text under `heading` (a markdown heading line), up to the next heading of any level."""
    start = doc.index(heading + "\n") + len(heading) + 1
    end = re.search(r"^#{1,6} ", doc[start:], re.M)
    return doc[start:start + end.start()] if end else doc[start:]


def _request_table() -> dict[str, tuple[str, list[str]]]:
    """docs/api.md's request table: request name -> (its command cell, the field names it lists, in order)."""
    lines = API_MD.read_text().splitlines()
    start = lines.index(TABLE_HEADER) + 2  # past the header and its |---| line
    rows = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        name, command, listed = (cell.strip() for cell in line.strip().strip("|").split("|"))
        rows[name.strip("`")] = (command, re.findall(r"`(\w+)`", listed))
    return rows


def test_the_request_table_lists_every_request_with_exactly_its_dataclass_fields() -> None:
    table = _request_table()
    types = [*requests.STAGES, requests.ModelOptions, requests.EncodingOptions]
    assert sorted(table) == sorted(cls.__name__ for cls in types)
    for cls in types:
        command, listed = table[cls.__name__]
        assert listed == [f.name for f in dataclasses.fields(cls)], cls.__name__
        if cls.command:
            assert command == f"`stylebatch {cls.command}`", cls.__name__


def _documented_signature() -> ast.arguments:
    doc = " ".join(API_MD.read_text().split())
    shown = re.search(r"`stylize_video\((.*?)\) -> Result`", doc)
    assert shown, "docs/api.md shows stylize_video's signature as `stylize_video(...) -> Result`"
    return ast.parse(f"def stylize_video({shown.group(1)}): pass").body[0].args


def test_the_documented_signature_of_stylize_video_is_its_signature() -> None:
    args, params = _documented_signature(), inspect.signature(stylize_video).parameters.values()
    positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    keywords = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
    assert [a.arg for a in args.args] == positional
    assert {a.arg: ast.literal_eval(d) for a, d in zip(args.kwonlyargs, args.kw_defaults)} == keywords
    assert [a.arg for a in args.kwonlyargs] == list(keywords)  # in the same order, too


# What the docs name as the keywords that are no `stylebatch run` flag of their own name.
NOT_A_FLAG_OF_THE_SAME_NAME = {"encoder", "progress"}


def _run_flags() -> set[str]:
    found = set()
    for cls in (requests.RunRequest, requests.ModelOptions, requests.EncodingOptions):
        for f in dataclasses.fields(cls):
            if "flag" in f.metadata:
                found.update(f.metadata["flag"].flags)
    return found


def test_each_keyword_of_stylize_video_is_the_run_flag_of_its_name_but_those_the_docs_name() -> None:
    run_flags = _run_flags()
    keywords = [p.name for p in inspect.signature(stylize_video).parameters.values() if p.kind is p.KEYWORD_ONLY]
    assert [k for k in keywords if k not in NOT_A_FLAG_OF_THE_SAME_NAME and f"--{k.replace('_', '-')}"
            not in run_flags] == []
    assert [k for k in NOT_A_FLAG_OF_THE_SAME_NAME if f"--{k.replace('_', '-')}" in run_flags] == []
    said = " ".join(_section(API_MD.read_text(), "## One call").split())
    sentence = said[said.index("does exactly what `stylebatch run` does"):]
    sentence = sentence[:sentence.index(" - ")]  # up to the list that follows it
    for name in NOT_A_FLAG_OF_THE_SAME_NAME:
        assert f"`{name}`" in sentence, f"the docs name {name} as an exception"
    encoding_flags = [f.metadata["flag"].flags[-1] for f in dataclasses.fields(requests.EncodingOptions)]
    assert [flag for flag in encoding_flags if f"`{flag}`" not in sentence] == []  # what `encoder` stands for


def _fields_of(tree: ast.Module) -> dict[str, str]:
    """Every annotated field of the classes in `tree` (or at its top): name -> its statement, as ast.dump."""
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            found.setdefault(node.target.id, ast.dump(node))
    return found


def test_the_adding_an_option_example_is_the_code_of_real_fields() -> None:
    section = _section(API_MD.read_text(), "### Adding an option (for contributors)")
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "the section shows a field in a python code block"
    shown = _fields_of(ast.parse(textwrap.dedent(blocks[0])))
    real = {name: dump for node in ast.parse(REQUESTS_PY.read_text()).body if isinstance(node, ast.ClassDef)
            for name, dump in _fields_of(node).items()}  # type: ignore[arg-type]
    assert shown, "the example declares a field"
    assert {name: dump == real.get(name) for name, dump in shown.items()} == {name: True for name in shown}


def test_dir_of_the_package_shows_the_names_it_imports_when_first_used() -> None:
    names = dir(stylebatch)
    assert {"stylize_video", "list_styles", "Result", "__version__"} <= set(names)
    assert set(stylebatch.__all__) <= set(names)
    assert {"BadInput", "RunRequest", "__getattr__"} <= set(names)  # what is there already, still shown
    assert names == sorted(names)


def test_dir_of_the_package_imports_nothing_heavy() -> None:
    code = ("import sys, stylebatch; dir(stylebatch); "
            "print(sorted(m for m in ('stylebatch.api', 'stylebatch.run', 'torch', 'av', 'importlib.metadata') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"

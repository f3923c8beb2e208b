"""What plugin authors and users rely on is documented, signatures included.

docs/plugins.md documents the contract as Python stubs in ```python blocks: `class Backend:` with its
attributes and `def`s, hook functions at the top level. These tests parse those blocks, turn each stub into
a real signature and compare it with `inspect.signature` of the code, so a renamed parameter, a changed
annotation or default, or a new member fails here until the documentation follows. docs/configuration.md
must have a table row for every environment variable the server reads.
"""

from __future__ import annotations
import __future__

import ast
import inspect
import re
import typing
from collections.abc import Callable, Iterator
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import msgspec
import pytest

import modelyard.plugin
from modelyard.runtime import contract, hookspecs
from modelyard.runtime.plugins import build_plugin_manager

ROOT = Path(__file__).parents[2]
PLUGINS_DOC = ROOT / "docs" / "plugins.md"
CONFIGURATION_DOC = ROOT / "docs" / "configuration.md"
ENV_NAME = re.compile(r"(OLLAMA|MODELYARD)_[A-Z0-9]+(_[A-Z0-9]+)*")

# The contract's classes a plugin implements or builds, documented member by member.
CONTRACT_CLASSES = [
    contract.Backend,
    contract.LoadedModel,
    contract.ModelView,
    contract.LoadSpec,
    contract.Completion,
    contract.Constraint,
    *typing.get_args(contract.Event),  # TextDelta, ThinkingDelta, ToolCallEvent, Logprobs, Done
    contract.TokenLogprob,
    contract.Embeddings,
    contract.Details,
    contract.Remote,
]


# --- reading the documentation ---------------------------------------------------------------------------


@cache
def python_blocks(path: Path) -> list[ast.Module]:
    """The ```python blocks of a Markdown file, parsed. A block that does not parse fails the test: a
    signature in it would otherwise go unchecked."""
    text = path.read_text()
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        line = text.count("\n", 0, match.start()) + 2
        try:
            blocks.append(ast.parse(match.group(1), filename=f"{path.name}:{line}"))
        except SyntaxError as exc:
            pytest.fail(f"{path.name}: the python block at line {line} does not parse: {exc}")
    return blocks


def documented_members(class_name: str) -> dict[str, ast.stmt]:
    """Members of every `class <class_name>` stub in docs/plugins.md, by name."""
    members: dict[str, ast.stmt] = {}
    for block in python_blocks(PLUGINS_DOC):
        for node in block.body:
            if isinstance(node, ast.ClassDef) and node.name == class_name:
                for statement in node.body:
                    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        members[statement.name] = statement
                    elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                        members[statement.target.id] = statement
                    elif isinstance(statement, ast.Assign):
                        for target in statement.targets:
                            if isinstance(target, ast.Name):
                                members[target.id] = statement
    return members


def documented_functions(*, hookimpl: bool) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Top-level functions of the python blocks: hook specifications (undecorated) or, with `hookimpl`,
    the examples decorated with `@hookimpl`."""
    return [
        node
        for block in python_blocks(PLUGINS_DOC)
        for node in block.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and any(isinstance(d, ast.Name) and d.id == "hookimpl" for d in node.decorator_list) == hookimpl
    ]


def stub_namespace() -> dict[str, Any]:
    """What a documented default may name: modelyard.plugin's exports and msgspec."""
    return {**vars(modelyard.plugin), "msgspec": msgspec}


def stub_function(node: ast.FunctionDef | ast.AsyncFunctionDef) -> Callable[..., Any]:
    """A documented `def` made into a function, annotations kept as written (strings, as the code's are)."""
    stub = ast.fix_missing_locations(
        ast.Module(body=[type(node)(**{**vars(node), "decorator_list": []})], type_ignores=[])
    )
    code = compile(stub, str(PLUGINS_DOC), "exec", flags=__future__.annotations.compiler_flag, dont_inherit=True)
    namespace = stub_namespace()
    exec(code, namespace)
    return namespace[node.name]


# --- one normal form for the code and the documentation --------------------------------------------------


class Annotation:
    """An annotation shown as normalised source text (`list[str]`, not `'list[str]'`)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def normal_annotation(annotation: Any) -> Any:
    if annotation is inspect.Parameter.empty:
        return annotation
    if isinstance(annotation, str):
        return Annotation(ast.unparse(ast.parse(annotation, mode="eval")))
    return Annotation(inspect.formatannotation(annotation))


def signature_text(function: Callable[..., Any], *, is_async: bool, is_classmethod: bool, name: str) -> str:
    """`async def load(self, model: ModelView, spec: LoadSpec) -> LoadedModel`, whitespace normalised."""
    signature = inspect.signature(function)
    signature = signature.replace(
        parameters=[
            parameter.replace(annotation=normal_annotation(parameter.annotation))
            for parameter in signature.parameters.values()
        ],
        return_annotation=normal_annotation(signature.return_annotation),
    )
    prefix = ("@classmethod " if is_classmethod else "") + ("async " if is_async else "")
    return f"{prefix}def {name}{signature}"


def code_signature(cls: type, name: str) -> str:
    member = inspect.getattr_static(cls, name)
    function = member.__func__ if isinstance(member, classmethod | staticmethod) else member
    is_async = inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)
    return signature_text(function, is_async=is_async, is_classmethod=isinstance(member, classmethod), name=name)


def doc_signature(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    is_classmethod = any(isinstance(d, ast.Name) and d.id == "classmethod" for d in node.decorator_list)
    return signature_text(
        stub_function(node),
        is_async=isinstance(node, ast.AsyncFunctionDef),
        is_classmethod=is_classmethod,
        name=node.name,
    )


MISSING = object()


def code_attributes(cls: type) -> dict[str, tuple[str, Any]]:
    """Public class attributes and fields: name -> (normalised annotation, default or MISSING)."""
    annotations = cls.__dict__.get("__annotations__", {})
    attributes: dict[str, tuple[str, Any]] = {}
    if issubclass(cls, msgspec.Struct):
        for field in msgspec.structs.fields(cls):
            default = field.default
            if field.default_factory is not msgspec.NODEFAULT:
                default = field.default_factory()
            attributes[field.name] = (
                repr(normal_annotation(annotations[field.name])),
                MISSING if default is msgspec.NODEFAULT else default,
            )
        return attributes
    for name, annotation in annotations.items():
        if not name.startswith("_"):
            attributes[name] = (repr(normal_annotation(annotation)), cls.__dict__.get(name, MISSING))
    for name, value in cls.__dict__.items():
        if isinstance(value, property | cached_property) and not name.startswith("_"):
            getter = value.fget if isinstance(value, property) else value.func
            assert getter is not None, f"{cls.__name__}.{name} is a property without a getter"
            attributes[name] = (repr(normal_annotation(inspect.signature(getter).return_annotation)), MISSING)
    return attributes


def code_methods(cls: type) -> list[str]:
    """Public methods defined on the class itself (and its constructor, where it has its own)."""
    names = []
    for name, value in cls.__dict__.items():
        if isinstance(value, property | cached_property):
            continue
        function = value.__func__ if isinstance(value, classmethod | staticmethod) else value
        if inspect.isfunction(function) and (not name.startswith("_") or name == "__init__"):
            names.append(name)
    return names


def attribute_text(name: str, annotation: str, default: Any) -> str:
    if default is MISSING:
        return f"{name}: {annotation}"
    shown = default.__name__ if isinstance(default, type) else repr(default)
    return f"{name}: {annotation} = {shown}"


def doc_attribute(name: str, node: ast.stmt) -> tuple[str, Any]:
    """A documented attribute as (normalised annotation, value or MISSING)."""
    if isinstance(node, ast.AnnAssign):
        annotation = repr(normal_annotation(ast.unparse(node.annotation)))
        if node.value is None:
            return annotation, MISSING
        return annotation, eval(compile(ast.Expression(node.value), str(PLUGINS_DOC), "eval"), stub_namespace())
    if isinstance(node, ast.Assign):
        return "(no annotation)", eval(compile(ast.Expression(node.value), str(PLUGINS_DOC), "eval"), stub_namespace())
    return "(a method)", MISSING


# --- the tests -----------------------------------------------------------------------------------------


def hook_specs() -> Iterator[Callable[..., Any]]:
    for _, function in inspect.getmembers(hookspecs, inspect.isfunction):
        if hasattr(function, "modelyard_spec"):
            yield function


def test_every_hook_is_documented_with_its_parameters():
    documented = {node.name: node for node in documented_functions(hookimpl=False)}
    specs = {spec.__name__: list(inspect.signature(spec).parameters) for spec in hook_specs()}
    assert specs, "no hook specifications found in modelyard.runtime.hookspecs"
    problems = []
    for name, wanted in specs.items():
        node = documented.get(name)
        if node is None:
            problems.append(f"hook {name}({', '.join(wanted)}) has no `def {name}(...)` stub")
            continue
        # pluggy calls hooks by keyword: the parameter names are the hook's signature.
        found = list(inspect.signature(stub_function(node)).parameters)
        if found != wanted:
            problems.append(f"hook {name} takes ({', '.join(wanted)}), documented as ({', '.join(found)})")
    for node in documented_functions(hookimpl=True):
        # An implementation may take fewer of the hook's arguments, never others.
        taken = list(inspect.signature(stub_function(node)).parameters)
        if node.name not in specs:
            problems.append(f"the @hookimpl example {node.name} implements no hook")
        elif not set(taken) <= set(specs[node.name]):
            problems.append(f"the @hookimpl example {node.name}({', '.join(taken)}) takes arguments the hook has not")
    assert not problems, "docs/plugins.md:\n" + "\n".join(problems)


@pytest.mark.parametrize("cls", CONTRACT_CLASSES, ids=lambda cls: cls.__name__)
def test_every_contract_member_is_documented_with_its_signature(cls):
    documented = documented_members(cls.__name__)
    problems = []
    if not documented:
        problems.append(f"no `class {cls.__name__}:` stub")
    for name in code_methods(cls):
        wanted = code_signature(cls, name)
        node = documented.get(name)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            problems.append(f"{cls.__name__}.{name} is not documented: `{wanted}`")
        elif (found := doc_signature(node)) != wanted:
            problems.append(f"{cls.__name__}.{name} is documented as `{found}`, the code has `{wanted}`")
    for name, (annotation, default) in code_attributes(cls).items():
        wanted = attribute_text(name, annotation, default)
        node = documented.get(name)
        if node is None:
            problems.append(f"{cls.__name__}.{name} is not documented: `{wanted}`")
            continue
        found = attribute_text(name, *doc_attribute(name, node))
        if found != wanted:
            problems.append(f"{cls.__name__}.{name} is documented as `{found}`, the code has `{wanted}`")
    assert not problems, "docs/plugins.md:\n" + "\n".join(problems)


def test_every_export_of_modelyard_plugin_is_mentioned():
    text = PLUGINS_DOC.read_text()
    missing = [name for name in modelyard.plugin.__all__ if not re.search(rf"(?<![\w.]){re.escape(name)}\b", text)]
    assert not missing, f"docs/plugins.md never mentions these exports of modelyard.plugin: {', '.join(missing)}"


def variables_read_by_the_server() -> dict[str, str]:
    """Environment variable names in the server's source (core and the in-repo plugins, not tests), with
    where each is read: every string literal that is exactly such a name."""
    found: dict[str, str] = {}
    for path in sorted([*(ROOT / "core" / "modelyard").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and ENV_NAME.fullmatch(node.value):
                found.setdefault(node.value, f"read at {path.relative_to(ROOT)}:{node.lineno}")
    return found


def backend_settings_variables() -> dict[str, str]:
    """MODELYARD_<BACKEND>_<FIELD> for every field of every installed backend's Settings."""
    classes: list[Any] = []
    build_plugin_manager().hook.register_backends(register=classes.append)
    assert classes, "no backend is installed"
    return {
        f"MODELYARD_{backend.name.upper()}_{field.upper()}": f"a field of {backend.__module__}.{backend.Settings.__name__}"
        for backend in classes
        for field in backend.Settings.__struct_fields__
    }


def test_every_environment_variable_the_server_reads_is_documented():
    rows = set(re.findall(r"^\|\s*`([A-Z0-9_]+)`", CONFIGURATION_DOC.read_text(), re.MULTILINE))
    read = {**variables_read_by_the_server(), **backend_settings_variables()}
    assert "OLLAMA_HOST" in read and "MODELYARD_ECHO_DELAY" in read  # the scan itself works
    missing = [f"{name} ({where})" for name, where in sorted(read.items()) if name not in rows]
    assert not missing, "docs/configuration.md has no table row for:\n" + "\n".join(missing)


def test_the_echo_tutorial_quotes_the_echo_backend_as_it_is():
    text = PLUGINS_DOC.read_text()
    tutorial = text[text.index("## Tutorial: the echo backend") :]
    tutorial = tutorial[: tutorial.find("\n## ", 1)]
    blocks = re.findall(r"^```python\n(.*?)^```", tutorial, re.DOTALL | re.MULTILINE)
    source = (ROOT / "plugins" / "modelyard_echo" / "__init__.py").read_text()
    assert len(blocks) >= 4, "the echo tutorial in docs/plugins.md has lost its code blocks"
    stale = [block.splitlines()[0] for block in blocks if block not in source]
    assert not stale, (
        "docs/plugins.md's echo tutorial quotes code that plugins/modelyard_echo/__init__.py no longer has, "
        f"in the blocks starting: {stale}"
    )
    quoted = {node.name for block in blocks for node in ast.parse(block).body if hasattr(node, "name")}
    defined = {node.name for node in ast.parse(source).body if hasattr(node, "name")}
    assert defined <= quoted, f"the echo tutorial leaves out {', '.join(sorted(defined - quoted))}"

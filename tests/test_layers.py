"""The layering rule, read from the imports (docs/layout.md): the serving layers import only
downward, serving code never reaches tool-only or test-only code, and cogvx modules import each
other without cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PREDICTORS = sorted(ROOT.glob("predict_*/predict.py"))
# Packages the serving path must never import: SAT conversion, dev-only builders and tools, tests.
FORBIDDEN = ("cogvx.convert", "cogvx.dev", "tests", "tools")
# The serving layers, bottom first: a module imports its own layer or the ones below, never above.
LAYERS = {
    "leaves": (
        "cogvx.errors",
        "cogvx.settings",
        "cogvx.log",
        "cogvx.checks",
        "cogvx.models",
        "cogvx.children",
    ),
    "infrastructure": ("cogvx.gpu", "cogvx.images", "cogvx.net", "cogvx.weights", "cogvx.video"),
    "domain": (
        "cogvx.cogvideox",
        "cogvx.lora",
        "cogvx.fast",
        "cogvx.cogvlm2",
        "cogvx.venhancer",
        "cogvx.speed",
        "cogvx.prompting",
        "cogvx.parallel",
    ),
    "services": ("cogvx.services",),
}
# Tooling may import any layer; no layer imports it. cogvx.webui: the web page (tools/web.py).
TOOLING = ("cogvx.convert", "cogvx.dev", "cogvx.webui")
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted((ROOT / "cogvx").rglob("*.py"))}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _imports(path: Path, name: str) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in `path`, function bodies included.

    `from pkg import x` names the submodule pkg.x when there is one, else pkg itself. Imports
    under `if TYPE_CHECKING:` do not run and are skipped."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out: list[tuple[str, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(ast.Module(body=child.orelse, type_ignores=[]), top)
                continue
            deferred = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                out.extend((a.name, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (child.level - 1)]
                    base = ".".join([*pkg, *([base] if base else [])])
                for a in child.names:
                    sub = f"{base}.{a.name}"
                    out.append((sub if sub in MODULES else base, top))
            visit(child, top and not deferred)

    visit(tree, True)
    return out


GRAPH = {name: _imports(path, name) for name, path in MODULES.items()}


def _with_parents(name: str) -> list[str]:
    """`name` and the packages importing it runs first (cogvx.a.b -> cogvx, cogvx.a, cogvx.a.b)."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def reachable(start: Path) -> dict[str, str]:
    """Every module `start` imports directly or through cogvx, mapped to the module importing it."""
    seen: dict[str, str] = {}
    todo = [(m, "<start>") for m, _ in _imports(start, "__main__")]
    while todo:
        mod, by = todo.pop()
        for m in _with_parents(mod):
            if m in seen:
                continue
            seen[m] = by
            todo.extend((n, m) for n, _ in GRAPH.get(m, []))
    return seen


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return found


def _edges(module_level_only: bool) -> dict[str, set[str]]:
    """cogvx module -> the cogvx modules it imports (all imports, or module-level ones only)."""
    keep = lambda m, top, name: m in MODULES and m != name and (top or not module_level_only)  # noqa: E731
    return {name: {m for m, top in deps if keep(m, top, name)} for name, deps in GRAPH.items()}


def test_there_are_four_predictors():
    assert [p.parent.name for p in PREDICTORS] == [
        "predict_caption",
        "predict_enhance",
        "predict_i2v",
        "predict_t2v",
    ]


@pytest.mark.parametrize("predictor", PREDICTORS, ids=lambda p: p.parent.name)
def test_serving_path_never_reaches_tool_or_test_code(predictor):
    seen = reachable(predictor)
    bad = {m: by for m, by in seen.items() if any(_under(m, f) for f in FORBIDDEN)}
    assert not bad, f"{predictor.parent.name} reaches (module <- imported by): {bad}"


def test_no_import_cycle_among_cogvx_modules_at_module_level():
    assert _cycles(_edges(module_level_only=True)) == []


def test_no_import_cycle_even_through_function_level_imports():
    assert _cycles(_edges(module_level_only=False)) == []


def layer_of(name: str) -> int | None:
    """Index of the serving layer holding module `name` (None: the root package or tooling)."""
    for i, prefixes in enumerate(LAYERS.values()):
        if any(_under(name, p) for p in prefixes):
            return i
    return None


def downward_violations(graph: dict[str, list[tuple[str, bool]]]) -> list[str]:
    """'a (layer) -> b (layer)' for every import of a higher layer, function-level ones included."""
    names = list(LAYERS)
    bad = []
    for name, deps in sorted(graph.items()):
        mine = layer_of(name)
        if mine is None:
            continue
        for dep, _ in deps:
            theirs = layer_of(dep)
            if theirs is not None and theirs > mine:
                bad.append(f"{name} ({names[mine]}) -> {dep} ({names[theirs]})")
            if any(_under(dep, t) for t in TOOLING):
                bad.append(f"{name} ({names[mine]}) -> {dep} (tooling)")
    return sorted(set(bad))


def test_every_module_has_a_place():
    homeless = [
        n
        for n in MODULES
        if n != "cogvx" and layer_of(n) is None and not any(_under(n, t) for t in TOOLING)
    ]
    assert homeless == [], "add these modules to a layer in LAYERS (and docs/layout.md)"


def test_layers_import_only_downward():
    assert downward_violations(GRAPH) == []


def test_the_layer_rule_can_fail():
    fake = {"cogvx.checks": [("cogvx.services.video", False)], "cogvx.gpu": [("cogvx.dev", True)]}
    assert downward_violations(fake) == [
        "cogvx.checks (leaves) -> cogvx.services.video (services)",
        "cogvx.gpu (infrastructure) -> cogvx.dev (tooling)",
    ]


def test_predictors_import_only_services_and_leaves():
    allowed = LAYERS["services"] + LAYERS["leaves"] + ("cogvx.net.inputs", "cog")
    for predictor in PREDICTORS:
        for mod, _ in _imports(predictor, "__main__"):
            if mod.startswith("cogvx"):
                assert any(_under(mod, a) for a in allowed), f"{predictor.parent.name}: {mod}"


@pytest.mark.parametrize("path", sorted(MODULES.values()), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_is_under_500_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines: split it by concern"


def test_public_weight_entry_points_stay_importable():
    from cogvx.weights import install_weights, pack_folder

    assert callable(install_weights) and callable(pack_folder)


def test_the_walker_sees_function_level_and_relative_imports():
    # A check that reads nothing passes everything: pin edges the rules depend on.
    assert ("cogvx.lora.sat_format", False) in GRAPH["cogvx.lora.files"]  # in normalize_lora
    assert ("cogvx.cogvlm2.model", True) in GRAPH["cogvx.cogvlm2.captioner"]  # from .model
    assert "cogvx.convert.sat" in reachable(ROOT / "tools/convert_weight_sat2hf.py")
    assert "cogvx.venhancer.pipeline" in reachable(ROOT / "predict_enhance/predict.py")
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def environment_readers(modules: dict[str, Path]) -> list[str]:
    """Modules other than cogvx.settings that touch os.environ / os.getenv (the root package may
    pin a library setting before any math: MKL_CBWR)."""
    found = []
    for name, path in sorted(modules.items()):
        if name in ("cogvx.settings", "cogvx"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"):
                found.append(f"{name}:{node.lineno}")
    return found


def test_cogvx_environment_variables_are_read_in_settings_only():
    assert environment_readers(MODULES) == []


def test_the_environment_rule_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nVALUE = os.environ.get('COGVX_X')\n")
    assert environment_readers({"cogvx.bad": bad}) == ["cogvx.bad:2"]

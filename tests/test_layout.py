"""The house's rules, checked on the source: imports run one way (rollout <- reward <- trainer
<- cluster) and no module takes part in an import circle, even through an import inside a
function (which would only be hiding it)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["rollout", "reward", "trainer", "cluster"]  # each may import only the ones before it


def modules() -> dict[str, Path]:
    out = {}
    for stage in STAGES:
        for path in (ROOT / stage).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """Our modules imported anywhere in the file (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p, set(mods)) - {m} for m, p in mods.items()}


def test_imports_run_one_way():
    wrong = [(m, d) for m, deps in graph().items() for d in deps
             if STAGES.index(d.split(".")[0]) > STAGES.index(m.split(".")[0])]
    assert wrong == [], f"imports that run upward: {wrong}"


def test_no_import_circle():
    g = graph()
    # Package __init__ modules re-exporting their children are not circles of their own.
    g = {m: {d for d in deps if not m.startswith(d + ".") and not d.startswith(m + ".")} for m, deps in g.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, stack: list[str]) -> bool:
        state[m] = 1
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                cycle.extend(stack[stack.index(d):] + [m, d] if d in stack else [m, d])
                return True
            if state.get(d) is None and visit(d, stack + [m]):
                return True
        state[m] = 2
        return False

    for m in sorted(g):
        if state.get(m) is None and visit(m, []):
            break
    assert cycle == [], f"import circle: {' -> '.join(cycle)}"


def test_the_rl_loop_has_its_room():
    assert (ROOT / "cluster" / "rl" / "controller.py").is_file()
    for moved in ("controller", "streaming", "scheduler", "buffer", "experience", "simulate", "progress"):
        assert not (ROOT / "cluster" / f"{moved}.py").exists(), f"cluster/{moved}.py belongs in cluster/rl/"

"""The dependency rule (ARCHITECTURE.md, "Layers"), read from every module's imports.

Transports (api, cli) -> engine -> core; stores and runtimes depend on core only, and no
implementation on another's; node/ is the composition root and may import anything. Each import
of the package, at the top of a module or inside a function, is checked against what the layer of
its module may use.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "spearlet"
EVERYTHING = "*"

# What the runtimes share: the protocol, child processes, the sandbox, warm instances. Any runtime
# may use them; an implementation (process, python, wasm) uses no other's, only its own helpers
# (wasm_memory, wasm_compile for wasm).
RUNTIMES_SHARED = ("base", "sandbox", "bubblewrap", "pool")

# Each layer: what its modules may import (a module, or a package and all in it), besides themselves.
# The first entry whose name is the module's, or a package holding it, applies.
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "core": ("core",),
    "config": (),
    "store.base": ("core",),
    "store": ("core", "store.base"),
    "runtimes": ("core", *(f"runtimes.{name}" for name in RUNTIMES_SHARED)),
    "artifacts": ("core", "artifacts"),
    "engine": ("core", "config", "engine", "store.base", "runtimes.base", "artifacts"),
    # Cluster mode: the engine's dispatch over the Redis store, whose connection it shares.
    "cluster": ("core", "config", "engine", "store.base", "store.redis"),
    # Joining a SPEAR cluster: above the engine (its TaskSource, the lifecycle and pool listeners).
    "sms": ("core", "config", "engine", "runtimes.pool", "artifacts", "sms"),
    "observability": ("core", "observability", "engine", "runtimes.pool"),
    "api": ("core", "api", "engine", "observability"),
    # The Python client speaks the wire only: the stubs and the value rules it shares with the node.
    "client": ("core", "client", "api.grpc.spearlet_pb2", "api.grpc.spearlet_pb2_grpc", "api.grpc.values"),
    "cli": ("core", "config", "api", "observability", "node", "client"),
    "node": (EVERYTHING,),
    "__main__": ("cli",),
    "examples": (),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer(module: str) -> str:
    return max((key for key in MAY_IMPORT if under(module, key)), key=len)


def family(module: str) -> str:
    """A runtime implementation's own modules share its first word (wasm, wasm_memory)."""
    return module.split(".")[1].split("_")[0] if module.count(".") else module


def is_module(name: str) -> bool:
    """Whether `name` (spearlet.x.y) is a module or package of the source tree."""
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path) -> set[str]:
    """The modules of the package that `path` imports, relative to `spearlet` ("" for the package
    itself, which holds only its version). The package imports absolutely: a relative import is
    returned as such, and no rule allows it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if under(alias.name, "spearlet"))
        elif isinstance(node, ast.ImportFrom) and node.level:
            found.add("relative " + "." * node.level + (node.module or ""))
        elif isinstance(node, ast.ImportFrom) and under(node.module or "", "spearlet"):
            # `from spearlet.api.grpc import spearlet_pb2` imports that module, not the whole package.
            modules = [f"{node.module}.{alias.name}" for alias in node.names]
            if all(map(is_module, modules)):
                found.update(modules)
            else:
                found.add(node.module or "")
    return {name.removeprefix("spearlet").lstrip(".") if under(name, "spearlet") else name for name in found}


def allowed(module: str, imported: str) -> bool:
    if imported == "" or under(imported, module) or under(module, imported):
        return True
    rules = MAY_IMPORT[layer(module)]
    if EVERYTHING in rules or any(under(imported, rule) for rule in rules):
        return True
    if layer(module) == "runtimes" and under(imported, "runtimes"):
        return family(module) == family(imported)
    return False


def violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
            continue
        module = module_name(path)
        found += [f"{module} -> {imported}" for imported in sorted(imports(path)) if not allowed(module, imported)]
    return found


def test_every_import_of_the_package_follows_the_dependency_rule() -> None:
    assert violations() == []


def test_every_module_of_the_package_belongs_to_a_layer() -> None:
    modules = [module_name(p) for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py"]
    assert [m for m in modules if not any(under(m, key) for key in MAY_IMPORT)] == []


def test_the_rule_reads_imports_inside_functions_and_refuses_one_implementation_reaching_into_another(
    tmp_path: Path,
) -> None:
    source = tmp_path / "process.py"
    source.write_text("def run():\n    from spearlet.runtimes.python import code_location\n")
    assert imports(source) == {"runtimes.python"}
    assert not allowed("runtimes.process", "runtimes.python")
    assert not allowed("core.models", "engine.invoker")
    assert not allowed("engine.invoker", "api.service")
    assert not allowed("store.sqlite", "store.redis")
    assert allowed("runtimes.wasm", "runtimes.wasm_memory") and allowed("runtimes.python", "runtimes.base")


def bench_imports(path: Path) -> list[str]:
    """The modules of the benchmark suite (`bench`) that a test module imports."""
    tree = ast.parse(path.read_text(), str(path))
    names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level]
    return [name for name in names if under(name, "bench")]


def test_no_test_imports_the_benchmark_suite_but_the_suite_s_own_tests() -> None:
    """The suite measures and the tests prove behaviour: a test leaning on a bench helper would
    break, or silently change what it proves, whenever a benchmark is reworked. Only tests/bench/,
    which proves the suite itself (its waits, its readiness checks), imports it."""
    tests = Path(__file__).resolve().parent
    found = {
        str(p.relative_to(tests)): bench_imports(p)
        for p in sorted(tests.rglob("*.py"))
        if p.relative_to(tests).parts[0] != "bench"
    }
    assert {path: names for path, names in found.items() if names} == {}


def test_the_bench_check_sees_both_forms_of_import(tmp_path: Path) -> None:
    source = tmp_path / "test_x.py"
    source.write_text("import bench.common\n\ndef f():\n    from bench.echo_server import serve\n")
    assert bench_imports(source) == ["bench.common", "bench.echo_server"]

"""The package's surface: the command line parses without torch, and the public API names what it says."""
import importlib
import inspect
import pkgutil
import subprocess
import sys

import resnext

# Every subcommand's --help, a top-level --help, and argument errors: none may import the heavy libraries, so a
# mistyped flag costs a fraction of a second (torch and torchvision take 3-5 s to import on a 2-core machine).
PARSE_ONLY = [["--help"], ["--version"], ["train", "--epochs", "x"], ["train", "--data-backend", "nope"],
              ["evaluate"], ["export", "--weights", "w"]] + [[command, "--help"] for command in (
                  "info", "data", "train", "demo", "report", "evaluate", "predict", "export", "serve", "benchmark")]
PROBE = """
import json, sys
from resnext.cli import main
seen = {}
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit:
        pass
    seen[" ".join(argv)] = sorted(m for m in ("torch", "torchvision", "numpy", "PIL", "matplotlib") if m in sys.modules)
print(json.dumps(seen))
"""


def test_parsing_help_and_argument_errors_never_import_torch():
    import json

    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(PARSE_ONLY)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {" ".join(argv): [] for argv in PARSE_ONLY}


def test_public_names_are_the_documented_functions_even_after_every_submodule_loads():
    # A submodule import binds its name on the package: `resnext.predict` must stay the function, not a module.
    for module in pkgutil.walk_packages(resnext.__path__, "resnext."):
        if module.name.split(".")[-1] not in ("__main__", "serve"):  # serve needs PyTriton; __main__ runs the CLI
            importlib.import_module(module.name)
    for name in resnext.__all__:
        value = getattr(resnext, name)
        assert not inspect.ismodule(value), name
    assert callable(resnext.predict) and resnext.predict.__module__ == "resnext.prediction"
    assert set(resnext.__all__) <= set(dir(resnext))


def test_only_the_cli_bench_and_demo_import_the_training_loop():
    # Evaluation, inference, prediction and export share evaluation.py and device.py, not the training module.
    import ast
    from pathlib import Path

    root = Path(resnext.__file__).parent
    importers = set()
    for path in root.rglob("*.py"):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = module.rsplit(".", node.level if path.name != "__init__.py" else node.level - 1)[0]
                target = f"{base}.{node.module}" if node.module else base
            elif isinstance(node, ast.ImportFrom):
                target = node.module or ""
            elif isinstance(node, ast.Import):
                target = " ".join(alias.name for alias in node.names)
            else:
                continue
            if "resnext.training" in target.split():
                importers.add(module)
    assert importers == {"resnext.cli.train", "resnext.bench", "resnext.demo"}

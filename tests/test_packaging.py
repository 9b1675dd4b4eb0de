"""Packaging checks for every distribution under pkgs/*.

Metadata (default run): name, requires-python, a JAX range that holds the locked JAX, license,
README with a quickstart doctest, py.typed, PEP 420 namespace (no src/respax/__init__.py),
workspace sources for respax dependencies pinned to the workspace version, the respax
dependencies declared exactly as the sources import them, no dependency cycles, `__version__`.

Install (~30-65 s a package on 2 cores, so all in the slow run, which CI runs; the default
run keeps the metadata checks within the 15-minute budget): the install command of each
package's README, exactly as written (`pip install pkgs/core pkgs/curvature`, run from the
repository root with the pip of a fresh virtual environment), installs it; there it imports,
ships py.typed, keeps `respax` a namespace, reports its `__version__`, and runs its README's
quickstart as a doctest.
"""

import ast
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PACKAGES = sorted(path.parent for path in (REPO / "pkgs").glob("*/pyproject.toml"))
PACKAGE_IDS = [path.name for path in PACKAGES]

# A fenced ```python / ```pycon / ```py block; the quickstart is every such block with `>>>`.
_FENCE = re.compile(r"^```(?:python|pycon|py)[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)

# Runs in the fresh environment (one process, to import JAX once): first reports what got
# installed where, as one JSON line, then runs the README's doctest blocks in order, sharing
# one namespace.
_FRESH_ENVIRONMENT_SCRIPT = r"""
import doctest, importlib, json, re, sys
from importlib import metadata
from pathlib import Path

name, path = sys.argv[1], sys.argv[2]
module = importlib.import_module(f"respax.{name}")
import respax

print(json.dumps({
    "module_file": module.__file__,
    "version": getattr(module, "__version__", None),
    "distribution_version": metadata.version("respax-" + name.replace("_", "-")),
    "respax_file": getattr(respax, "__file__", None),
    "py_typed": (Path(module.__file__).parent / "py.typed").is_file(),
    "distributions": sorted(d.metadata["Name"].lower() for d in metadata.distributions()),
}))
sys.stdout.flush()

text = open(path, encoding="utf-8").read()
fence = re.compile(r"^```(?:python|pycon|py)[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
blocks = [m for m in fence.finditer(text) if re.search(r"^\s*>>>", m.group(1), re.MULTILINE)]
if not blocks:
    print(f"{path}: no quickstart (a ```python block with >>> examples)")
    sys.exit(3)
globs = {"__name__": "__readme__"}
parser = doctest.DocTestParser()
runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
for match in blocks:
    line = text.count("\n", 0, match.start(1))
    test = parser.get_doctest(match.group(1), globs, "README", path, line)
    runner.run(test, clear_globs=False)
    globs = test.globs  # a DocTest runs on a copy of the namespace it is given
failed, attempted = runner.summarize(verbose=False)
print(f"README doctest: {attempted} examples, {failed} failed")
sys.exit(1 if failed or not attempted else 0)
"""


def _pyproject(package: Path) -> dict:
    with open(package / "pyproject.toml", "rb") as file:
        return tomllib.load(file)


def _distribution_name(package: Path) -> str:
    return _pyproject(package)["project"]["name"]


def _requirements(package: Path) -> list[Requirement]:
    return [Requirement(spec) for spec in _pyproject(package)["project"].get("dependencies", [])]


_BY_DISTRIBUTION = {_distribution_name(package): package for package in PACKAGES}


def _respax_dependencies(package: Path) -> set[str]:
    return {req.name for req in _requirements(package) if req.name.startswith("respax-")}


def _local_closure(package: Path) -> list[Path]:
    """The package and every respax package it needs, directly or not, dependencies first."""
    order: list[Path] = []

    def visit(path: Path, stack: tuple[str, ...]) -> None:
        name = _distribution_name(path)
        if name in stack:
            raise AssertionError(f"dependency cycle: {' -> '.join((*stack, name))}")
        if path in order:
            return
        for dependency in sorted(_respax_dependencies(path)):
            assert dependency in _BY_DISTRIBUTION, (
                f"{name} depends on {dependency}, which is not a package under pkgs/"
            )
            visit(_BY_DISTRIBUTION[dependency], (*stack, name))
        order.append(path)

    visit(package, ())
    return order


def _quickstart_blocks(readme: Path) -> list[str]:
    text = readme.read_text(encoding="utf-8")
    return [block for block in _FENCE.findall(text) if re.search(r"^\s*>>>", block, re.MULTILINE)]


def test_packages_are_discovered():
    assert {"core", "testing"} <= set(PACKAGE_IDS), PACKAGE_IDS


@pytest.mark.parametrize("package", PACKAGES, ids=PACKAGE_IDS)
def test_metadata(package: Path):
    project = _pyproject(package)["project"]
    name = package.name
    problems = []

    expected_name = "respax-" + name.replace("_", "-")
    if project.get("name") != expected_name:
        problems.append(f"project.name is {project.get('name')!r}, expected {expected_name!r}")

    requires_python = project.get("requires-python")
    if not requires_python:
        problems.append("requires-python is not declared")
    elif not SpecifierSet(requires_python).contains(Version(sys.version.split()[0])):
        problems.append(f"requires-python {requires_python!r} excludes the test interpreter")

    jax_requirements = [req for req in _requirements(package) if req.name == "jax"]
    if not jax_requirements:
        problems.append("no jax dependency declared")
    for requirement in jax_requirements:
        operators = {spec.operator for spec in requirement.specifier}
        if not operators & {">=", ">", "~=", "=="}:
            problems.append(f"jax requirement {requirement} has no lower bound")
        if not operators & {"<", "<=", "~=", "=="}:
            problems.append(f"jax requirement {requirement} has no upper bound (a tested range)")
        locked = metadata.version("jax")
        if not requirement.specifier.contains(locked, prereleases=True):
            problems.append(f"jax requirement {requirement} excludes the tested jax {locked}")

    if not project.get("license"):
        problems.append("license is not declared")
    for pattern in project.get("license-files", []):
        if not list(package.glob(pattern)):
            problems.append(f"license-files pattern {pattern!r} matches no file")
    if not (package / "LICENSE").is_file():
        problems.append("no LICENSE file")

    readme = project.get("readme")
    readme_path = package / (readme if isinstance(readme, str) else (readme or {}).get("file", ""))
    if not readme or not readme_path.is_file():
        problems.append(f"readme {readme!r} is not declared or does not exist")

    source = package / "src" / "respax"
    if (source / "__init__.py").exists():
        problems.append("src/respax/__init__.py exists: respax must stay a PEP 420 namespace")
    if not (source / name / "py.typed").is_file():
        problems.append(f"src/respax/{name}/py.typed is missing")
    if not (source / name / "__init__.py").is_file():
        problems.append(f"src/respax/{name}/__init__.py is missing")

    sources = _pyproject(package).get("tool", {}).get("uv", {}).get("sources", {})
    for dependency in sorted(_respax_dependencies(package)):
        if sources.get(dependency) != {"workspace": True}:
            problems.append(f"[tool.uv.sources] lacks `{dependency} = {{ workspace = true }}`")
    for requirement in _requirements(package):
        if requirement.name.startswith("respax-"):
            # A bare name would let pip take a same-named distribution from an index.
            wanted = _pyproject(_BY_DISTRIBUTION[requirement.name])["project"]["version"]
            if str(requirement.specifier) != f"=={wanted}":
                problems.append(f"{requirement} is not pinned to the workspace version =={wanted}")
    _local_closure(package)  # no cycles, no unknown respax dependency

    assert not problems, f"{package.relative_to(REPO)}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("package", PACKAGES, ids=PACKAGE_IDS)
def test_readme_has_a_quickstart_doctest(package: Path):
    readme = package / "README.md"
    assert readme.is_file(), f"{readme.relative_to(REPO)} does not exist"
    assert _quickstart_blocks(readme), (
        f"{readme.relative_to(REPO)} has no quickstart: every package's README needs a "
        "```python block of `>>>` examples (a doctest), which test_install_and_quickstart runs "
        "in a fresh environment"
    )


def _clean_environment() -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP"}
    }
    env.update(JAX_PLATFORMS="cpu", UV_PYTHON_DOWNLOADS="never", UV_NO_PROGRESS="1")
    return env


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _readme_install_command(package: Path) -> str:
    """The `pip install ...` line of the ```bash block under the README's `## Install`."""
    text = (package / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Install\n(.*?)(?=^## |\Z)", text, re.DOTALL | re.MULTILINE)
    assert section, f"{package.relative_to(REPO)}/README.md has no `## Install` section"
    block = re.search(r"^```bash\n(.*?)^```", section.group(1), re.DOTALL | re.MULTILINE)
    assert block, f"{package.relative_to(REPO)}/README.md: `## Install` has no ```bash block"
    commands = [line for line in block.group(1).splitlines() if line.startswith("pip install ")]
    assert len(commands) == 1, f"{package.relative_to(REPO)}/README.md: {commands}"
    return commands[0]


@pytest.mark.parametrize("package", PACKAGES, ids=PACKAGE_IDS)
def test_readme_install_command_names_every_local_package(package: Path):
    expected = " ".join(str(p.relative_to(REPO)) for p in _local_closure(package))
    assert _readme_install_command(package) == f"pip install {expected}"
    root_readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert re.search(rf"^pip install {re.escape(expected)}\s", root_readme, re.MULTILINE), (
        f"README.md does not show `pip install {expected}`"
    )


def _imported_respax_packages(package: Path) -> set[str]:
    """The other respax packages that a package's sources import."""
    found = set()
    for path in (package / "src" / "respax" / package.name).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                parts = name.split(".")
                if parts[0] == "respax" and len(parts) > 1 and parts[1] != package.name:
                    found.add("respax-" + parts[1].replace("_", "-"))
    return found


# Declared ahead of the import that DESIGN.md's dependency direction plans (core <- curvature <-
# interp: interp consumes curvature's operators, issue 10 point 3).
_PLANNED = {("interp", "respax-curvature")}


@pytest.mark.parametrize("package", PACKAGES, ids=PACKAGE_IDS)
def test_respax_dependencies_are_the_imported_ones(package: Path):
    declared = _respax_dependencies(package)
    imported = _imported_respax_packages(package)
    where = package.relative_to(REPO)
    assert imported <= declared, f"{where} imports {sorted(imported - declared)} undeclared"
    unused = {d for d in declared - imported if (package.name, d) not in _PLANNED}
    assert not unused, f"{where} declares {sorted(unused)} but never imports them"


@pytest.mark.parametrize("package", PACKAGES, ids=PACKAGE_IDS)
def test_version_is_the_distribution_version(package: Path):
    module = importlib.import_module(f"respax.{package.name}")
    version = _pyproject(package)["project"]["version"]
    assert module.__version__ == version == metadata.version(_distribution_name(package))


def _third_party_closure(package: Path) -> set[str]:
    """Every distribution the package's third-party dependencies need, by uv.lock."""
    with open(REPO / "uv.lock", "rb") as file:
        locked = {entry["name"]: entry for entry in tomllib.load(file)["package"]}
    pending = [
        req.name.lower()
        for path in _local_closure(package)
        for req in _requirements(path)
        if not req.name.startswith("respax-")
    ]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending += [dep["name"] for dep in locked.get(name, {}).get("dependencies", [])]
    return seen


DEFAULT_INSTALLS: set[str] = set()  # every fresh-venv install runs in `make test-slow` (CI)


@pytest.mark.parametrize(
    "package",
    [
        p if p.name in DEFAULT_INSTALLS else pytest.param(p, marks=pytest.mark.slow)
        for p in PACKAGES
    ],
    ids=PACKAGE_IDS,
)
def test_install_and_quickstart(package: Path, tmp_path: Path):
    env = _clean_environment()
    venv = tmp_path / "venv"
    created = _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    assert created.returncode == 0, created.stderr
    python = venv / "bin" / "python"

    # The README's command, exactly as a user types it at the repository root.
    command = _readme_install_command(package)
    words = shlex.split(command)
    installed = _run([str(venv / "bin" / "pip"), *words[1:]], REPO, env)
    assert installed.returncode == 0, (
        f"`{command}` (README of {package.name}) fails in a fresh environment:\n"
        f"{installed.stdout[-3000:]}\n{installed.stderr[-3000:]}"
    )
    paths = [str(path) for path in _local_closure(package)]

    script = tmp_path / "check_fresh_environment.py"
    script.write_text(_FRESH_ENVIRONMENT_SCRIPT, encoding="utf-8")
    readme = package / "README.md"
    result = _run([str(python), str(script), package.name, str(readme)], tmp_path, env)
    lines = result.stdout.splitlines()
    assert lines and lines[0].startswith("{"), (
        f"import respax.{package.name} fails in a fresh environment:\n{result.stderr[-4000:]}"
    )
    layout = json.loads(lines[0])
    assert str(venv) in layout["module_file"], layout  # the installed copy, not the work tree
    assert layout["respax_file"] is None, f"respax is not a namespace package: {layout}"
    assert layout["py_typed"], f"py.typed is not installed for respax.{package.name}"
    assert layout["version"] == layout["distribution_version"], layout
    # Dev-only tools must not leak into a runtime install, unless a third-party runtime
    # dependency needs them itself (tokenizers -> huggingface-hub -> tqdm).
    dev_only = {"pytest", "beartype", "matplotlib", "scikit-learn", "tqdm"}
    leaked = dev_only & set(layout["distributions"]) - _third_party_closure(package)
    assert not leaked, (leaked, layout["distributions"])
    assert result.returncode == 0, (
        f"the quickstart of {readme.relative_to(REPO)} fails in a fresh environment with only "
        f"{', '.join(_distribution_name(Path(p)) for p in paths)} installed:\n"
        f"{result.stdout[-6000:]}\n{result.stderr[-4000:]}"
    )

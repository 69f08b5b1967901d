"""The README's module map matches the code: every library and node module is in it, every
file it names exists, and every name it says to start reading at is defined in those files."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def module_map():
    text = (REPO / "README.md").read_text()
    table = text[text.index("| Concept | File | Start reading at |"):]
    table = table[:table.index("\n\n")]
    return [[c.strip() for c in row.strip("|").split("|")] for row in table.splitlines()[2:]]


def test_readme_module_map_matches_the_code():
    rows = module_map()
    named = set()
    for concept, files, start in rows:
        paths = re.findall(r"`((?:adapters|nodes|js)/[\w*./]+)`", files)
        assert paths, f"row {concept!r} names no file"
        for p in paths:
            found = sorted(REPO.glob(p))
            assert found, f"{p} (row {concept!r}) does not exist"
            named.update(f.relative_to(REPO).as_posix() for f in found)
        sources = "\n".join(f.read_text() for p in paths for f in REPO.glob(p) if f.suffix == ".py")
        for name in re.findall(r"`(\w+)`", start):
            assert re.search(rf"^(?:class|def) {name}\b|^{name} = ", sources, re.M), \
                f"{name} (row {concept!r}) is not defined in {', '.join(paths)}"
    modules = {p.relative_to(REPO).as_posix() for d in ("adapters", "nodes") for p in (REPO / d).glob("*.py")
               if p.name != "__init__.py"}
    assert not modules - named, f"modules missing from the README's module map: {sorted(modules - named)}"

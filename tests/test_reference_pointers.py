"""Every `Qn` / `§n` pointer in the tree resolves to a heading of docs/reference.md.

A pointer is written `docs/reference.md Q6` or `docs/reference.md §2.4` (lists: `docs/reference.md Q1, Q3`,
ranges: `docs/reference.md Q1–Q20`). A bare quirk or section number, or one naming another document, fails:
the reason a line of code exists must be readable inside the repository.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference.md"
SCANNED = ("metis", "tests", "configs", "benchmarks", "docs", "scripts", "README.md", "train.py", "finetune.py", "infer.py")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt", ".cfg"}
SKIP = ("tests/fixtures/",)

ID = r"(?:Q\d+|§\d+(?:\.\d+)*)"
POINTER = re.compile(rf"docs/reference\.md\s+({ID}(?:\s*(?:,|and|–|-|/)\s*{ID})*)")
ANY_ID = re.compile(rf"(?<![\w§]){ID}(?!\w)")
HEADING = re.compile(rf"^#+\s+({ID})\b", re.M)


def anchors() -> set[str]:
    return set(HEADING.findall(REFERENCE.read_text(encoding="utf-8")))


def files() -> list[Path]:
    out = []
    for name in SCANNED:
        path = ROOT / name
        for f in [path] if path.is_file() else sorted(path.rglob("*")):
            rel = f.relative_to(ROOT).as_posix()
            if f.is_file() and f.suffix in SUFFIXES and not rel.startswith(SKIP):
                out.append(f)
    return out


def problems(text: str, known: set[str], inside_reference: bool = False) -> list[str]:
    """'line: message' for every pointer that is bare or names no heading (docs/reference.md itself may
    use bare pointers to its own headings)."""
    found = []
    covered = set()
    for m in POINTER.finditer(text):
        for ref in re.finditer(ID, m.group(1)):
            covered.add(m.start(1) + ref.start())
            if ref.group(0) not in known:
                found.append(f"{text.count(chr(10), 0, m.start()) + 1}: docs/reference.md has no heading {ref.group(0)}")
    for m in ANY_ID.finditer(text):
        if inside_reference and m.group(0) in known:
            continue
        if m.start() not in covered:
            line = text.count("\n", 0, m.start()) + 1
            found.append(f"{line}: bare pointer {m.group(0)!r} (write it as 'docs/reference.md {m.group(0)}')")
    return found


def test_reference_has_every_quirk_and_section():
    known = anchors()
    assert {f"Q{i}" for i in range(1, 21)} <= known
    assert {f"§{i}" for i in range(0, 11)} <= known


def test_every_pointer_in_the_tree_resolves():
    known = anchors()
    bad = []
    for f in files():
        text = f.read_text(encoding="utf-8", errors="replace")
        bad += [f"{f.relative_to(ROOT)}:{p}" for p in problems(text, known, inside_reference=f == REFERENCE)]
    assert not bad, "unresolved Qn/§n pointers:\n" + "\n".join(bad)


def test_the_scan_catches_bare_and_dangling_pointers():
    q6, q7, q8, s24 = "Q" + "6", "Q" + "7", "Q" + "8", "§" + "2.4"  # spelled apart: this file is scanned too
    ref = "docs/reference.md"
    known = {q6, s24}
    assert problems(f"x = 1  # {ref} {q6}, {s24}", known) == []
    assert problems(f"# row 0 decides ({q6})", known) == [f"1: bare pointer '{q6}' (write it as '{ref} {q6}')"]
    assert problems(f"# ARCHITECTURE.md {s24}", known)  # another document: bare here
    assert problems(f"# {ref} {q7}", known) == [f"1: {ref} has no heading {q7}"]
    assert problems(f"# {ref} {q6}–{q7}", known) == [f"1: {ref} has no heading {q7}"]
    assert problems(f"see {q6} and {q8}", known, inside_reference=True) == [f"1: bare pointer '{q8}' (write it as '{ref} {q8}')"]

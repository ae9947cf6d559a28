"""Build BENCHMARKS.md from its template (benchmarks/page_notes.md) and the results files.

The page holds speed and scale figures only, and every table on it is a copy of (part of) a results
file that a benchmark script wrote under benchmarks/results/. The template is the page's prose with
one line per table to copy:

    <!-- include results/NAME.md [SELECTOR] -->

SELECTOR picks what to copy (default: the whole file, less a leading "# " title):
    table           the file's first markdown table
    from-table      from the first table line to the end of the file
    section="P"     the "## " section whose heading starts with P, the heading kept as a paragraph
    from="P"        from the first line that starts with P to the end of the file
    line="P"        the paragraph (lines up to a blank one) that starts with a line starting with P

Template-only comments, ``<!--- ... -->`` (three dashes), are left out of the page; other HTML
comments are copied. A selector that matches nothing, or a missing file, is an error, so a changed
results format fails the build instead of dropping a table.

The prose must not state a measured number that no results file holds: every decimal number in it
(outside the copied parts) must round from a number in a results file the template names (an
include, or a mention of ``results/NAME.md``); a version string such as 2.13.0 must appear in one
verbatim. Integers (sizes, counts, settings) are not checked. The build fails otherwise.

Run: python benchmarks/build_page.py [--notes PATH] [--results DIR] [--out PATH] [--check]
(``make bench`` runs it after the benchmarks; ``--check`` compares instead of writing.)
"""

from __future__ import annotations

import argparse
import difflib
import re
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOTES = HERE / "page_notes.md"
RESULTS = HERE / "results"
PAGE = HERE.parent / "BENCHMARKS.md"

INCLUDE = re.compile(r"^<!--\s*include\s+(?P<args>.*?)\s*-->\s*$")
TEMPLATE_COMMENT = re.compile(r"<!---.*?-->\n?", re.S)
CITED = re.compile(r"results/([\w.+-]+\.md)")
DOTTED = re.compile(r"(?<![\d.])\d+(?:\.\d+)+")
NUMBER = re.compile(r"(?<![\d.])\d+(?:\.\d+)?")


class PageError(Exception):
    """The template and the results files do not make a page (a missing file, an unknown selector,
    a selector that matches nothing, or prose with numbers no results file holds)."""


def _paragraph(lines: list[str], start: int) -> list[str]:
    end = start
    while end < len(lines) and lines[end].strip():
        end += 1
    return lines[start:end]


def _first(lines: list[str], test, what: str, name: str) -> int:
    for i, line in enumerate(lines):
        if test(line):
            return i
    raise PageError(f"results/{name}: no {what}")


def select(text: str, selector: str | None, name: str) -> str:
    """The part of results file ``name`` (its ``text``) that ``selector`` names (module docstring)."""
    lines = text.splitlines()
    if selector is None:
        while lines and not lines[0].strip():
            lines.pop(0)
        if lines and lines[0].startswith("# "):
            lines.pop(0)
        part = lines
    elif selector in ("table", "from-table"):
        start = _first(lines, lambda s: s.startswith("|"), "table", name)
        part = lines[start:]
        if selector == "table":
            end = next((i for i, s in enumerate(part) if not s.startswith("|")), len(part))
            part = part[:end]
    else:
        key, _, prefix = selector.partition("=")
        if not prefix:
            raise PageError(f"results/{name}: unknown selector {selector!r}")
        if key == "section":
            start = _first(lines, lambda s: s.startswith("## " + prefix), f"section {prefix!r}", name)
            end = next(
                (i for i in range(start + 1, len(lines)) if lines[i].startswith(("# ", "## "))), len(lines)
            )
            part = [lines[start][3:]] + lines[start + 1 : end]
        elif key == "from":
            part = lines[_first(lines, lambda s: s.startswith(prefix), f"line {prefix!r}", name) :]
        elif key == "line":
            part = _paragraph(lines, _first(lines, lambda s: s.startswith(prefix), f"line {prefix!r}", name))
        else:
            raise PageError(f"results/{name}: unknown selector {selector!r}")
    return "\n".join(part).strip("\n")


def _include(args: str, results: Path) -> tuple[str, str]:
    """(results file name, copied text) of one include line's arguments."""
    words = shlex.split(args)
    if not words or not words[0].startswith("results/") or len(words) > 2:
        raise PageError(f"bad include line: <!-- include {args} -->")
    name = words[0].removeprefix("results/")
    path = results / name
    if not path.is_file():
        raise PageError(f"results/{name}: no such results file under {results}")
    return name, select(path.read_text(), words[1] if len(words) > 1 else None, name)


def _backing(names: set[str], results: Path) -> tuple[set[str], str]:
    """Every number of the named results files, written with 0 to 4 decimals, and their text."""
    texts = [(results / n).read_text() for n in sorted(names) if (results / n).is_file()]
    text = re.sub(r"(?<=\d),(?=\d{3})", "", "\n".join(texts))  # 3,274,634 -> 3274634
    shown = set()
    for token in NUMBER.findall(text):
        value = float(token)
        shown.update(f"{value:.{d}f}" for d in range(5))
    return shown, "\n".join(texts)


def unbacked_numbers(template: str, results: Path = RESULTS) -> list[str]:
    """Decimal numbers and version strings in the template's prose that no results file it names
    holds (rounded to the decimals the prose shows); [] when every one is backed."""
    template = TEMPLATE_COMMENT.sub("", template)
    prose = "\n".join(line for line in template.splitlines() if not INCLUDE.match(line))
    shown, text = _backing(set(CITED.findall(template)), results)
    missing = []
    for token in DOTTED.findall(prose):
        backed = token in text if token.count(".") > 1 else token in shown
        if not backed:
            missing.append(token)
    return missing


def build(notes: Path = NOTES, results: Path = RESULTS) -> str:
    """The page's text: the template with each include line replaced by its part of a results file."""
    template = notes.read_text()
    missing = unbacked_numbers(template, results)
    if missing:
        raise PageError(
            f"{notes.name} states numbers that no results file it names holds: {', '.join(missing)}"
        )
    out = []
    for line in TEMPLATE_COMMENT.sub("", template).splitlines():
        match = INCLUDE.match(line)
        out.append(_include(match["args"], results)[1] if match else line.rstrip())
    return "\n".join(out).strip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=Path, default=NOTES, help="the page's template")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the results files")
    parser.add_argument("--out", type=Path, default=PAGE, help="the page to write (BENCHMARKS.md)")
    parser.add_argument("--check", action="store_true", help="exit 1 if --out differs; write nothing")
    args = parser.parse_args(argv)
    try:
        page = build(args.notes, args.results)
    except PageError as exc:
        print(f"build_page: {exc}", file=sys.stderr)
        return 2
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != page:
            diff = difflib.unified_diff(
                current.splitlines(), page.splitlines(), str(args.out), "built", lineterm="", n=1
            )
            print("\n".join(list(diff)[:60]))
            print(f"build_page: {args.out} is not the built page; run python benchmarks/build_page.py")
            return 1
        return 0
    args.out.write_text(page)
    print(f"build_page: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

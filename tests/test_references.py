"""The book's scholarly apparatus: citations, the bibliography and the glossary.

Every ``{cite}`` key in a chapter's markdown or a book page is an entry of book/references.bib,
every entry is cited somewhere (book/references.md prints only what is cited), every entry links
to the work, and every ``{term}`` link lands on a headword of book/glossary.md.
"""
from __future__ import annotations

import collections
import json
import pathlib
import re

import pytest
from pybtex.database import parse_file

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIB = ROOT / "book" / "references.bib"
GLOSSARY = ROOT / "book" / "glossary.md"
CHAPTERS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PAGES = sorted((ROOT / "book").glob("*.md"))

# {cite}`key`, {cite:p}`a,b`, {cite:t}`key` (sphinxcontrib-bibtex roles in MyST syntax).
CITE = re.compile(r"\{cite(?::\w+)?\}`([^`]*)`")
# {term}`feature map` or {term}`feature maps <feature map>` (the target follows the text).
TERM = re.compile(r"\{term\}`([^`]*)`")
TARGET = re.compile(r"<([^<>]+)>\s*$")


def reader_texts():
    """(where, text) for every markdown cell of the notebooks and every book page."""
    for path in CHAPTERS:
        for index, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
            if cell["cell_type"] == "markdown":
                source = cell["source"]
                yield f"{path.name} cell {index}", "".join(source) if isinstance(source, list) else source
    for page in PAGES:
        yield page.name, page.read_text(encoding="utf-8")


def citations():
    """(where, key) for every key of every citation."""
    for where, text in reader_texts():
        for match in CITE.finditer(text):
            for key in match.group(1).split(","):
                yield where, key.strip()


def term_targets():
    """(where, target) for every glossary link, the target lower-cased as Sphinx matches it."""
    for where, text in reader_texts():
        for match in TERM.finditer(text):
            inner = match.group(1)
            target = TARGET.search(inner)
            name = target.group(1) if target else inner
            yield where, " ".join(name.split()).lower()


def glossary_entries() -> list[list[str]]:
    """The glossary's entries, each as its term lines (headword first, then aliases and Chinese)."""
    entries = []
    text = GLOSSARY.read_text(encoding="utf-8")
    for block in re.findall(r"```\{glossary\}\n(.*?)```", text, re.S):
        terms: list[str] = []
        for line in block.split("\n"):
            if line.strip() and not line.startswith((" ", "\t", ":")):
                terms.append(line.strip())
            elif terms:
                entries.append(terms)
                terms = []
    return entries


def glossary_terms() -> list[str]:
    """Every term line (headword, alias or Chinese name) of the glossary, in order."""
    return [term for entry in glossary_entries() for term in entry]


@pytest.fixture(scope="module")
def bibliography():
    return parse_file(str(BIB), bib_format="bibtex")


def test_bib_keys_are_unique():
    keys = re.findall(r"^@\w+\{([^,\s]+),", BIB.read_text(encoding="utf-8"), re.M)
    repeated = [key for key, n in collections.Counter(k.lower() for k in keys).items() if n > 1]
    assert not repeated, f"references.bib defines these keys more than once: {repeated}"


def test_every_citation_resolves_to_the_bibliography(bibliography):
    keys = set(bibliography.entries.keys())
    unknown = [f"{where}: {key!r}" for where, key in citations() if key not in keys]
    assert not unknown, "citation keys missing from book/references.bib: " + "; ".join(unknown)


def test_every_bibliography_entry_is_cited_somewhere(bibliography):
    cited = {key for _, key in citations()}
    uncited = sorted(set(bibliography.entries.keys()) - cited)
    assert not uncited, ("entries of book/references.bib that no chapter or page cites (cite them "
                         f"where the text relies on them, or remove them): {uncited}")


def test_every_bibliography_entry_links_to_the_work(bibliography):
    unlinked = [key for key, entry in bibliography.entries.items()
                if not any(entry.fields.get(f) for f in ("url", "doi", "eprint"))]
    assert not unlinked, f"entries with no url, doi or eprint: {unlinked}"


def test_arxiv_entries_say_so_and_their_url_is_the_same_paper(bibliography):
    wrong = []
    for key, entry in bibliography.entries.items():
        eprint = entry.fields.get("eprint")
        if not eprint:
            continue
        if entry.fields.get("archiveprefix", "").lower() != "arxiv":
            wrong.append(f"{key}: eprint without archiveprefix = {{arXiv}}")
        if not re.fullmatch(r"\d{4}\.\d{4,5}", eprint):
            wrong.append(f"{key}: {eprint!r} is not an arXiv identifier")
        url = entry.fields.get("url", "")
        if url.startswith("https://arxiv.org/") and url != f"https://arxiv.org/abs/{eprint}":
            wrong.append(f"{key}: url {url} is not arXiv {eprint}")
    assert not wrong, "; ".join(wrong)


def test_glossary_terms_are_unique():
    counts = collections.Counter(term.lower() for term in glossary_terms())
    repeated = [term for term, n in counts.items() if n > 1]
    assert not repeated, f"book/glossary.md lists these terms more than once: {repeated}"


def test_every_term_link_lands_on_a_glossary_headword():
    terms = {term.lower() for term in glossary_terms()}
    assert terms, "no glossary terms found in book/glossary.md"
    unknown = [f"{where}: {target!r}" for where, target in term_targets() if target not in terms]
    assert not unknown, "{term} links to words that are not in book/glossary.md: " + "; ".join(unknown)


def test_no_heading_carries_a_citation_or_a_glossary_link():
    found = [f"{where}: {line.strip()!r}" for where, text in reader_texts() for line in text.split("\n")
             if re.match(r"\s{0,3}#{1,6}\s", line) and ("{term}" in line or "{cite" in line)]
    assert not found, "headings link nothing (cite and link in the text below them): " + "; ".join(found)


def test_each_page_links_a_glossary_entry_once_at_its_first_use():
    entry_of = {term.lower(): entry[0] for entry in glossary_entries() for term in entry}
    seen: dict[str, set] = collections.defaultdict(set)
    repeated = []
    for where, target in term_targets():
        page, entry = where.split(" cell ")[0], entry_of.get(target, target)
        if entry in seen[page]:
            repeated.append(f"{where}: {entry!r}")
        seen[page].add(entry)
    assert not repeated, "link a glossary term at its first use on a page only: " + "; ".join(repeated)


def test_the_references_page_prints_what_is_cited():
    page = (ROOT / "book" / "references.md").read_text(encoding="utf-8")
    assert "```{bibliography}" in page, "book/references.md must hold the bibliography directive"
    assert ":all:" not in page, \
        "book/references.md must print the cited works only (no :all:), so every entry is cited"


def test_each_reference_prints_its_link_once():
    """The book's pybtex style prints an arXiv id or DOI once, not again as a url beside it."""
    import sys
    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    from mmgpt_bibstyle import AuthorYearStyle
    entries = parse_file(str(BIB)).entries
    twice = []
    for entry in AuthorYearStyle().format_entries(entries.values()):
        text = entry.text.render_as("text")
        fields = entries[entry.key].fields
        for field, prefix in (("eprint", "arxiv.org/abs/"), ("doi", "doi.org/")):
            if fields.get(field) and text.count(fields[field]) > 1:
                twice.append(f"{entry.key} ({prefix}{fields[field]})")
    assert not twice, "printed twice: " + ", ".join(twice)

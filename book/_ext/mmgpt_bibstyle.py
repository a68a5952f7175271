"""Author–year labels for the book's reference list (sphinxcontrib-bibtex through pybtex).

Citations in the text read "(Vaswani et al., 2017)" (``bibtex_reference_style: author_year``),
but pybtex's default labels in the list itself are alpha codes such as "[VSP+17]", which a
reader cannot match to the citation. This extension registers the formatting style
``mmgpt_author_year`` (``bibtex_default_style`` in _config.yml): pybtex's ``unsrt`` style with
labels "Vaswani et al., 2017", sorted by author, year and title, and "2023a"/"2023b" where two
entries would share a label. A url that only repeats an entry's arXiv id or DOI is printed
once, as that id, linked, instead of the same link twice.
"""
from __future__ import annotations

from collections import Counter

from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.template import optional, sentence


def _last_name(person) -> str:
    return " ".join(part.render_as("text") for part in person.rich_last_names)


def author_year(entry) -> str:
    names = [_last_name(p) for p in entry.persons.get("author", [])]
    if not names:
        authors = entry.fields.get("organization", entry.key)
    elif len(names) == 1:
        authors = names[0]
    elif len(names) == 2:
        authors = f"{names[0]} and {names[1]}"
    else:
        authors = f"{names[0]} et al."
    return f"{authors}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearLabelStyle(BaseLabelStyle):
    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        labels = [author_year(e) for e in entries]
        counts, seen = Counter(labels), Counter()
        for label in labels:
            if counts[label] > 1:
                seen[label] += 1
                label += "abcdefghijklmnopqrstuvwxyz"[seen[label] - 1]
            yield label


class AuthorYearStyle(UnsrtStyle):
    default_label_style = AuthorYearLabelStyle
    default_sorting_style = "author_year_title"

    def format_web_refs(self, e):
        # A url that only repeats the arXiv id or the DOI is printed once, as that id, linked.
        url = e.fields.get("url", "")
        eprint, doi = e.fields.get("eprint"), e.fields.get("doi")
        if url in (f"https://arxiv.org/abs/{eprint}", f"https://doi.org/{doi}"):
            return sentence[optional[self.format_eprint(e)], optional[self.format_doi(e)]]
        return super().format_web_refs(e)


register_plugin("pybtex.style.formatting", "mmgpt_author_year", AuthorYearStyle)


def setup(app):
    return {"parallel_read_safe": True, "parallel_write_safe": True}

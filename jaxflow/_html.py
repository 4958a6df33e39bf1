"""Self-contained HTML: escaped text, tables drawn from column specs, inline PNG figures.

The building blocks of the HTML report (`jaxflow._render.report_html`, which lays the
report out; `Report.to_html`). A page made from them needs no network and no other
file: the styles are inline in one `<style>` element and every figure is a
`data:image/png;base64,...` URI. Every string put into a page goes through `text`
(`html.escape`, control characters shown as `U+001B`): names, descriptions and error
messages read from a store are data someone else wrote, so they must never become markup.
"""

from __future__ import annotations

import base64
import html
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["text", "element", "table", "figure", "definition_list", "document", "fragment",
           "STYLE"]


def text(value) -> str:
    """`value` as HTML text: `&`, `<`, `>`, quotes as entities; control and invisible
    format characters (escape sequences, bidi overrides) shown as `U+XXXX`."""
    s = "".join(
        f"U+{ord(ch):04X}" if unicodedata.category(ch) in ("Cc", "Cf") and ch not in "\n\t"
        else ch
        for ch in str(value)
    )
    return html.escape(s, quote=True)


def element(tag: str, content: str = "", **attributes) -> str:
    """`<tag attributes>content</tag>`; `content` is HTML already (escape text with
    `text`), attribute values are escaped here (`class_` for `class`)."""
    attrs = "".join(
        f' {name.rstrip("_").replace("_", "-")}="{html.escape(str(value), quote=True)}"'
        for name, value in attributes.items()
        if value is not None
    )
    return f"<{tag}{attrs}>{content}</{tag}>"


def table(columns: Sequence, rows: Sequence, *, caption: str | None = None) -> str:
    """An HTML table from column specs (`jaxflow._render.Column`: `header`, `text(row)`,
    `align`, `style(row)`): the same columns and cells as the Markdown and rich tables.
    A column's style becomes the cell's class (`verdict-green`, ...)."""
    head = "".join(
        element("th", text(c.header), class_="num" if c.align == "right" else None)
        for c in columns
    )
    body = []
    for row in rows:
        cells = []
        for c in columns:
            classes = ["num"] if c.align == "right" else []
            if c.style is not None:
                classes.append(f"verdict-{c.style(row)}")
            cells.append(element("td", text(c.text(row)), class_=" ".join(classes) or None))
        body.append(element("tr", "".join(cells)))
    parts = [element("caption", text(caption))] if caption else []
    parts += [element("thead", element("tr", head)), element("tbody", "".join(body))]
    return element("table", "".join(parts))


def figure(name: str, png: bytes, caption: str | None = None) -> str:
    """A PNG inlined as a base64 data URI, with its file name as alt text and caption."""
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    img = f'<img src="{uri}" alt="{text(name)}">'
    return element("figure", img + element("figcaption", text(caption or name)))


def definition_list(items: Iterable[tuple[str, object]]) -> str:
    """`<dl>` of (term, value) pairs, both escaped."""
    return element(
        "dl", "".join(element("dt", text(k)) + element("dd", text(v)) for k, v in items)
    )


STYLE = """
.jaxflow-report { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
    margin: 0; color: #1b1f24; background: #fafafa; line-height: 1.45; }
.jaxflow-report main { max-width: 1100px; margin: 0 auto; padding: 1.5rem 2rem 3rem; }
.jaxflow-report header { background: #37474f; color: #fff; padding: 1.2rem 2rem; }
.jaxflow-report header h1 { margin: 0; font-size: 1.45rem; font-weight: 600; }
.jaxflow-report header p { margin: .3rem 0 0; opacity: .85; }
.jaxflow-report h2 { font-size: 1.2rem; margin: 2rem 0 .6rem; border-bottom: 1px solid #d0d7de;
    padding-bottom: .25rem; }
.jaxflow-report section { margin-bottom: 1rem; }
.jaxflow-report table { border-collapse: collapse; margin: .4rem 0 1rem; background: #fff;
    font-size: .92rem; box-shadow: 0 1px 2px rgba(0,0,0,.06); }
.jaxflow-report caption { text-align: left; font-weight: 600; padding: .3rem 0; }
.jaxflow-report th, .jaxflow-report td { border: 1px solid #d0d7de; padding: .35rem .7rem;
    text-align: left; vertical-align: top; }
.jaxflow-report th { background: #eef1f4; font-weight: 600; }
.jaxflow-report td.num, .jaxflow-report th.num { text-align: right;
    font-variant-numeric: tabular-nums; white-space: nowrap; }
.jaxflow-report td.verdict-green { color: #116329; font-weight: 600; }
.jaxflow-report td.verdict-red { color: #b3261e; font-weight: 600; }
.jaxflow-report td.verdict-yellow { color: #8a5a00; font-weight: 600; }
.jaxflow-report td.verdict-dim { color: #6e7781; }
.jaxflow-report ul.findings li { margin: .2rem 0; }
.jaxflow-report .conclusion { background: #fff; border-left: 4px solid #37474f;
    padding: .8rem 1rem; box-shadow: 0 1px 2px rgba(0,0,0,.06); }
.jaxflow-report .empty { color: #6e7781; font-style: italic; }
.jaxflow-report .figures { display: grid;
    grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 1rem; align-items: start; }
.jaxflow-report figure { margin: 0; background: #fff; padding: .5rem;
    box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.jaxflow-report figure img { max-width: 100%; height: auto; display: block; }
.jaxflow-report figcaption { font-size: .85rem; color: #57606a; margin-top: .3rem; }
.jaxflow-report dl { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem;
    font-size: .9rem; }
.jaxflow-report dt { color: #57606a; }
.jaxflow-report dd { margin: 0; font-family: ui-monospace, SFMono-Regular, Menlo, monospace;
    word-break: break-all; }
.jaxflow-report footer { color: #6e7781; font-size: .8rem; margin-top: 2rem; }
body { margin: 0; }
"""


def _content(title: str, subtitle: str, sections: Mapping[str, tuple[str, str]],
             footer: str) -> str:
    body = "".join(
        element("section", element("h2", text(heading)) + content, id=sid)
        for sid, (heading, content) in sections.items()
    )
    return (
        element("header", element("h1", text(title)) + element("p", text(subtitle)))
        + element("main", body + (element("footer", text(footer)) if footer else ""))
    )


def document(title: str, subtitle: str, sections: Mapping[str, tuple[str, str]],
             *, footer: str = "") -> str:
    """A complete HTML page: `title` and `subtitle` (plain text, escaped) in the header,
    then one `<section id=...>` per entry `id: (heading, html)` of `sections`."""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{text(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + element("div", _content(title, subtitle, sections, footer), class_="jaxflow-report")
        + "\n</body>\n</html>\n"
    )


def fragment(title: str, subtitle: str, sections: Mapping[str, tuple[str, str]],
             *, footer: str = "") -> str:
    """The same content as `document` as one `<div>` (for a notebook cell): its styles
    apply only inside the div, so they never restyle the page around it."""
    styles = element("style", STYLE.replace("\nbody { margin: 0; }", ""))
    return element("div", styles + _content(title, subtitle, sections, footer),
                   class_="jaxflow-report")

"""A tiny document model rendered twice: static HTML and Markdown carry the same content.

A page is a list of blocks (headings, paragraphs, tables, code, images, lists, notes); inline text is
a list of spans (plain strings, links, bold, code, badges). Links are written to ``.html`` targets
and rewritten to ``.md`` for the Markdown copy.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence

Span = "str | Link | Strong | Mono | Badge"


@dataclasses.dataclass
class Link:
    text: str
    href: str


@dataclasses.dataclass
class Strong:
    text: str


@dataclasses.dataclass
class Mono:
    text: str


@dataclasses.dataclass
class Badge:
    text: str
    kind: str  # pass | fail | inconclusive | missing | info | supported | contradicted | warn


Inline = str | Link | Strong | Mono | Badge | Sequence


@dataclasses.dataclass
class H:
    level: int
    text: str
    anchor: str | None = None


@dataclasses.dataclass
class P:
    spans: Inline


@dataclasses.dataclass
class Table:
    headers: list[str]
    rows: list[list[Inline]]
    css: str = ""


@dataclasses.dataclass
class Code:
    text: str


@dataclasses.dataclass
class Img:
    src: str
    alt: str
    caption: str = ""


@dataclasses.dataclass
class UL:
    items: list[Inline]


@dataclasses.dataclass
class Note:
    kind: str  # missing | warn | info
    spans: Inline


Block = H | P | Table | Code | Img | UL | Note


def _spans(x: Inline) -> list:
    if isinstance(x, str | Link | Strong | Mono | Badge):
        return [x]
    return [s for item in x for s in _spans(item)]


# --- HTML -------------------------------------------------------------------------------------------------
def inline_html(x: Inline) -> str:
    out = []
    for s in _spans(x):
        if isinstance(s, str):
            out.append(html.escape(s))
        elif isinstance(s, Link):
            out.append(f'<a href="{html.escape(s.href)}">{html.escape(s.text)}</a>')
        elif isinstance(s, Strong):
            out.append(f"<strong>{html.escape(s.text)}</strong>")
        elif isinstance(s, Mono):
            out.append(f"<code>{html.escape(s.text)}</code>")
        else:
            out.append(f'<span class="badge {html.escape(s.kind)}">{html.escape(s.text)}</span>')
    return "".join(out)


def block_html(b: Block) -> str:
    if isinstance(b, H):
        anchor = f' id="{html.escape(b.anchor)}"' if b.anchor else ""
        return f"<h{b.level}{anchor}>{html.escape(b.text)}</h{b.level}>"
    if isinstance(b, P):
        return f"<p>{inline_html(b.spans)}</p>"
    if isinstance(b, Table):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in b.headers)
        body = "".join("<tr>" + "".join(f"<td>{inline_html(c)}</td>" for c in row) + "</tr>" for row in b.rows)
        css = f' class="{html.escape(b.css)}"' if b.css else ""
        return f'<div class="table-wrap"><table{css}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    if isinstance(b, Code):
        return f"<pre><code>{html.escape(b.text)}</code></pre>"
    if isinstance(b, Img):
        cap = f"<figcaption>{html.escape(b.caption)}</figcaption>" if b.caption else ""
        return f'<figure><img src="{html.escape(b.src)}" alt="{html.escape(b.alt)}">{cap}</figure>'
    if isinstance(b, UL):
        return "<ul>" + "".join(f"<li>{inline_html(i)}</li>" for i in b.items) + "</ul>"
    return f'<div class="note {html.escape(b.kind)}">{inline_html(b.spans)}</div>'


# A tiny self-check: after load, count images that decoded; a headless browser test reads the result.
SELF_CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-ok', ok + '/' + imgs.length);
});
</script>"""


def page_html(title: str, blocks: Sequence[Block], css_href: str, nav: Sequence[Link] = ()) -> str:
    nav_html = " · ".join(f'<a href="{html.escape(n.href)}">{html.escape(n.text)}</a>' for n in nav)
    body = "\n".join(block_html(b) for b in blocks)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title>"
            f'<link rel="stylesheet" href="{html.escape(css_href)}"></head>\n'
            f'<body><nav>{nav_html}</nav><main>\n{body}\n</main>{SELF_CHECK}</body></html>\n')


# --- Markdown ---------------------------------------------------------------------------------------------
def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def inline_md(x: Inline, in_table: bool = False) -> str:
    out = []
    for s in _spans(x):
        if isinstance(s, str):
            out.append(_md_escape(s) if in_table else s)
        elif isinstance(s, Link):
            href = s.href[:-5] + ".md" if s.href.endswith(".html") else s.href.replace(".html#", ".md#")
            out.append(f"[{_md_escape(s.text)}]({href})")
        elif isinstance(s, Strong):  # Markdown bold cannot end in a space: move it outside
            text = _md_escape(s.text) if in_table else s.text
            core = text.rstrip()
            out.append(f"**{core}**{text[len(core):]}")
        elif isinstance(s, Mono):
            out.append(f"`{s.text}`")
        else:
            out.append(f"`{s.text}`")
    return "".join(out)


def block_md(b: Block) -> str:
    if isinstance(b, H):
        return f"{'#' * b.level} {b.text}"
    if isinstance(b, P):
        return inline_md(b.spans)
    if isinstance(b, Table):
        head = "| " + " | ".join(_md_escape(h) for h in b.headers) + " |"
        sep = "|" + "|".join("---" for _ in b.headers) + "|"
        rows = ["| " + " | ".join(inline_md(c, in_table=True) for c in r) + " |" for r in b.rows]
        return "\n".join([head, sep, *rows])
    if isinstance(b, Code):
        return f"```\n{b.text}\n```"
    if isinstance(b, Img):
        cap = f"\n\n*{b.caption}*" if b.caption else ""
        return f"![{b.alt}]({b.src}){cap}"
    if isinstance(b, UL):
        return "\n".join(f"- {inline_md(i)}" for i in b.items)
    prefix = {"missing": "**Not measured yet.** ", "warn": "**Note.** ", "info": ""}.get(b.kind, "")
    return "> " + prefix + inline_md(b.spans)


def page_md(title: str, blocks: Sequence[Block]) -> str:
    parts = [block_md(b) for b in blocks]
    if not (blocks and isinstance(blocks[0], H) and blocks[0].level == 1):
        parts.insert(0, f"# {title}")
    return "\n\n".join(parts) + "\n"

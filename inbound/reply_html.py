"""HTML replies: readable text, and the split at the mail client's quote container.

Most replies arrive as HTML, and each client marks the quoted message in its own way. Reading
that mark is far more reliable than guessing from text, so ``split_html_reply`` first looks for
it, then hands the new part to ``split_reply`` (which still catches what the markup does not
say: a signature delimiter, a header block typed as text, an attribution line).

Quote containers, and how they are treated:

* **Hard containers** — everything from the container's start tag to the end of the document
  is quoted, in document order, because these clients put the quoted message *after* a
  header block rather than inside one element: Gmail ``div.gmail_quote`` (it holds the
  ``gmail_attr`` attribution), Outlook on the web ``#appendonsend``, ``#divRplyFwdMsg`` (with
  the ``<hr>`` just before it), Outlook mobile ``#mail-editor-reference-message-container``,
  Outlook for Mac ``#OLK_SRC_BODY_SECTION``, Outlook desktop's header ``<div>`` with
  ``border-top:solid #E1E1E1`` (``#B5C4DF`` in older versions), Yahoo ``div.yahoo_quoted``,
  Zimbra ``hr#zwchr`` and Thunderbird's ``div.moz-forward-container``.
* **Citations** — ``<blockquote>`` (Apple Mail and Thunderbird use ``type="cite"``) becomes
  ``>``-prefixed lines, and Thunderbird's ``div.moz-cite-prefix`` an ordinary attribution
  line. These clients let people answer between quoted parts, so the plain-text rules decide:
  a top-posted reply loses the whole quote, an interleaved one keeps the lines it answers.
* **Signatures** — Gmail ``.gmail_signature`` (and its ``-- `` prefix), Thunderbird
  ``.moz-signature`` and Outlook ``#Signature`` go to ``signature``, even without ``-- ``.

``html_to_text`` is the readable rendering used for all of this: paragraphs separated by a
blank line, ``<br>`` and ``<div>`` as line breaks (Outlook's ``p.MsoNormal`` is a line, not a
paragraph), lists as ``-``/``1.`` items, links as ``text <url>`` when the text is not the
address itself, tables one row per line, scripts, styles and ``display:none`` left out.

The parser is the standard library's. It rescans the document for every start tag that
never closes, so unclosed ``<`` are escaped first (``_defused``); the tree is walked without
recursion (forwarded chains nest hundreds of ``<div>`` deep); quote and list prefixes stop
growing past a fixed depth; everything is linear in the size of the document. A small reply
takes a few hundred microseconds, most of it in the standard parser.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from html.parser import HTMLParser

from inbound.reply_text import ReplyParts, split_reply

__all__ = ["html_to_text", "split_html_reply"]

_VOID = frozenset(
    ("area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
     "source", "track", "wbr")
)
_SKIPPED = frozenset(("head", "script", "style", "title", "template", "noscript", "object"))
_PARAGRAPHS = frozenset(
    ("p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "dl", "table", "pre", "blockquote",
     "figure", "address")
)
_LINES = frozenset(
    ("div", "section", "article", "header", "footer", "main", "nav", "aside", "tr", "li",
     "dt", "dd", "center", "form", "fieldset", "caption", "tbody", "thead", "tfoot")
)
_CELLS = frozenset(("td", "th"))
_NONE: frozenset[str] = frozenset()
_HARD_QUOTE_IDS = frozenset(
    ("appendonsend", "divrplyfwdmsg", "mail-editor-reference-message-container",
     "olk_src_body_section", "zwchr")
)
_HARD_QUOTE_CLASSES = frozenset(
    ("gmail_quote", "gmail_quote_container", "yahoo_quoted", "moz-forward-container")
)
_SIGNATURE_CLASSES = frozenset(("gmail_signature", "gmail_signature_prefix", "moz-signature"))
_SIGNATURE_IDS = frozenset(("signature", "ms-outlook-mobile-signature"))
_OUTLOOK_HEADER_BORDERS = ("border-top:solid#e1e1e1", "border-top:solid#b5c4df")
_SPACES = re.compile(r"[ \t\r\n\f]+")
# The rest of a tag after "<": names, attributes and quoted values, up to ">" (never "<").
_TAG_REST = re.compile(r"""(?:[^<>"']++|"[^"]*+"|'[^']*+')*+>""")
#: Deeper quotes and lists are drawn at these depths: a line is not worth 10,000 prefixes.
_MAX_QUOTE_DEPTH = 20
_MAX_LIST_DEPTH = 10
#: An end tag closes one of this many innermost open elements, or is ignored as stray.
_MAX_END_TAG_SEARCH = 64
_SPACE_RUN = re.compile(r" {2,}")
_ASCII_SPACE = " \t\r\n\f"


# --- a small tree --------------------------------------------------------------------------


@dataclass(eq=False)
class _Element:
    """One element of the parsed document; text children are plain strings.

    The attributes the rules read (classes, id, style) are normalised once, at creation.
    """

    tag: str
    attrs: dict[str, str]
    parent: _Element | None = None
    children: list[_Element | str] = field(default_factory=list)
    classes: frozenset[str] = field(init=False)  # lower-cased
    ident: str = field(init=False)  # lower-cased id
    compact_style: str = field(init=False)  # lower-cased, without spaces

    def __post_init__(self) -> None:
        """Normalise the attributes the quote, signature and hidden-element rules test."""
        attrs = self.attrs
        self.classes = frozenset(attrs["class"].lower().split()) if "class" in attrs else _NONE
        self.ident = attrs.get("id", "").lower()
        self.compact_style = "".join(attrs["style"].lower().split()) if "style" in attrs else ""


class _TreeBuilder(HTMLParser):
    """Build an ``_Element`` tree, closing the tags HTML lets authors leave open."""

    def __init__(self) -> None:
        """Start with an empty document root; entities are decoded by the parser."""
        super().__init__(convert_charrefs=True)
        self.root = _Element("#root", {})
        self._open: list[_Element] = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """Open an element (void ones are complete at once)."""
        self._close_implied(tag)
        parent = self._open[-1]
        element = _Element(tag, {name: value or "" for name, value in attrs}, parent)
        parent.children.append(element)
        if tag not in _VOID:
            self._open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """``<br/>`` is one break; ``<div/>`` opens and closes an empty element."""
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        """Close the nearest open element of that name; a stray end tag is ignored.

        Only the innermost elements are searched, so a flood of stray end tags in a deep
        document stays linear.
        """
        if tag == "br":  # browsers read "</br>" as "<br>"
            self.handle_starttag("br", [])
            return
        lowest = max(1, len(self._open) - _MAX_END_TAG_SEARCH)
        for depth in range(len(self._open) - 1, lowest - 1, -1):
            if self._open[depth].tag == tag:
                del self._open[depth:]
                return

    def handle_data(self, data: str) -> None:
        """Keep text where it appears."""
        self._open[-1].children.append(data)

    def _close_implied(self, tag: str) -> None:
        """A new ``<p>``, ``<li>`` or cell closes the previous one, as browsers do."""
        top = self._open[-1].tag
        if (
            (tag == "p" and top == "p")
            or (tag == "li" and top == "li")
            or (tag in _CELLS and top in _CELLS)
        ):
            self._open.pop()
        elif tag == "tr" and top in _CELLS:
            self._open.pop()
            if self._open[-1].tag == "tr":
                self._open.pop()


def _parse(html: str) -> _Element:
    """Parse HTML into a tree (never raises: the standard parser is forgiving)."""
    builder = _TreeBuilder()
    builder.feed(_defused(html))
    builder.close()
    return builder.root


def _defused(html: str) -> str:
    """HTML whose every ``<`` starts a closed tag or comment, other ``<`` escaped as text.

    The standard parser rescans the rest of the document for each start tag that never
    closes, so "<a<a<a…" or '<a b="c" <a b="c" …' takes minutes for 100 KB. A browser shows
    such text anyway, so escaping those ``<`` changes nothing a reader would see, and one
    linear pass (possessive quantifiers: no backtracking) removes the quadratic case. An
    unclosed comment is escaped too (a browser would hide the rest of the document; showing
    it is the safer failure for an archive).
    """
    if "<" not in html:
        return html
    pieces: list[str] = []
    done = 0
    last_comment_end = html.rfind("-->")
    index = html.find("<")
    while index >= 0:
        if html.startswith("<!--", index) and index + 4 <= last_comment_end:
            index = html.find("<", html.find("-->", index + 4) + 3)
            continue
        following = html[index + 1 : index + 2]
        if following.isalpha() or (following and following in "/!?"):
            tag = _TAG_REST.match(html, index + 1)
            if tag is not None:
                index = html.find("<", tag.end())
                continue
        pieces.append(html[done:index])
        pieces.append("&lt;")
        done = index + 1
        index = html.find("<", index + 1)
    pieces.append(html[done:])
    return "".join(pieces)


def _walk(root: _Element) -> Iterator[_Element]:
    """Elements in document order, without recursion."""
    stack: list[_Element] = [root]
    while stack:
        element = stack.pop()
        yield element
        stack.extend(child for child in reversed(element.children) if isinstance(child, _Element))


# --- finding the quote container -----------------------------------------------------------


def _is_hard_quote(element: _Element) -> bool:
    """Whether an element starts a quoted message that runs to the end of the document."""
    if element.ident in _HARD_QUOTE_IDS:
        return True
    if element.tag == "div" and element.classes & _HARD_QUOTE_CLASSES:
        return True
    if element.tag in ("div", "p"):
        style = element.compact_style
        return any(border in style for border in _OUTLOOK_HEADER_BORDERS)
    return False


def _find_quote_start(root: _Element) -> _Element | None:
    """The first hard quote container, moved up to Outlook's ``<hr>`` just above it."""
    for element in _walk(root):
        if _is_hard_quote(element):
            return _previous_rule(element) or element
    return None


def _previous_rule(element: _Element) -> _Element | None:
    """The ``<hr>`` right before an element, ignoring whitespace, if there is one."""
    parent = element.parent
    if parent is None:
        return None
    index = parent.children.index(element)
    for sibling in reversed(parent.children[:index]):
        if isinstance(sibling, str):
            if sibling.strip(_ASCII_SPACE):
                return None
            continue
        return sibling if sibling.tag == "hr" else None
    return None


def _is_hidden(element: _Element) -> bool:
    """Elements a reader never sees (scripts, styles, ``display:none`` preheaders)."""
    return (
        element.tag in _SKIPPED
        or "hidden" in element.attrs
        or "display:none" in element.compact_style
    )


def _is_signature(element: _Element) -> bool:
    """Elements that clients use to hold the author's signature."""
    return bool(element.classes & _SIGNATURE_CLASSES) or element.ident in _SIGNATURE_IDS


# --- rendering -----------------------------------------------------------------------------


class _Target(Enum):
    """Which part of the reply rendered text goes to."""

    TEXT = "text"
    QUOTED = "quoted"
    SIGNATURE = "signature"


class _TextBuffer:
    """Rendered lines of one part, with the line and paragraph logic of a browser."""

    def __init__(self) -> None:
        """An empty part: finished lines, and the pieces of the line being written."""
        self.lines: list[str] = []
        self._pieces: list[str] = []
        self._has_content = False
        self._preformatted = False
        self._written = False
        self._depth = 0

    def add(self, text: str, depth: int, preformatted: bool) -> None:
        """Append text to the current line (pre text may hold its own line breaks)."""
        if preformatted:
            first, *rest = text.split("\n")
            self._add_piece(first, depth, visible=True, preformatted=True)
            for line in rest:
                self.line_break(depth)
                self._add_piece(line, depth, visible=True, preformatted=True)
            return
        collapsed = _SPACES.sub(" ", text.replace("\ufeff", ""))
        if not self._pieces:
            collapsed = collapsed.lstrip(" ")
        if collapsed:
            visible = bool(collapsed.strip(_ASCII_SPACE))
            self._add_piece(collapsed, depth, visible=visible, preformatted=False)

    def _add_piece(self, piece: str, depth: int, visible: bool, preformatted: bool) -> None:
        """Add to the current line; the quote depth of a line is the one it started at."""
        if not self._pieces:
            self._depth = depth
        self._pieces.append(piece)
        self._has_content = self._has_content or visible
        self._preformatted = self._preformatted or preformatted

    def line_break(self, depth: int) -> None:
        """End the current line, even an empty one (``<br>``)."""
        line = "".join(self._pieces)
        if not self._preformatted:
            line = _SPACE_RUN.sub(" ", line).strip(" ")
        line = line.replace("\xa0", " ").rstrip()
        if line == "--":  # the signature delimiter keeps its space (RFC 3676)
            line = "-- "
        level = self._depth if self._pieces else depth
        if level:
            line = ">" * level + (" " + line if line else "")
        self.lines.append(line)
        self._written = self._written or bool(line.strip("> "))
        self._pieces = []
        self._has_content = False
        self._preformatted = False

    def is_empty(self) -> bool:
        """Whether nothing visible has been written yet."""
        return not self._has_content and not self._written

    def ensure_line_break(self, depth: int) -> None:
        """End the current line if it holds anything (block boundaries)."""
        if self._has_content:
            self.line_break(depth)
        else:
            self._pieces = []
            self._preformatted = False

    def paragraph_break(self, depth: int) -> None:
        """End the line and leave one blank line, unless one is already there."""
        self.ensure_line_break(depth)
        if self.lines and self.lines[-1].strip("> "):
            self.lines.append(">" * depth)

    def close_quote(self, depth: int) -> None:
        """End a quote level without the blank quoted lines its paragraphs left behind."""
        self.ensure_line_break(depth)
        while self.lines and self.lines[-1] and not self.lines[-1].strip(">"):
            self.lines.pop()

    def result(self) -> str:
        """The text: one blank line at most between paragraphs, none around."""
        self.ensure_line_break(0)
        out: list[str] = []
        for line in self.lines:
            if not line and (not out or not out[-1]):
                continue
            out.append(line)
        while out and not out[-1]:
            out.pop()
        return "\n".join(out)


@dataclass
class _ListState:
    """An open ``<ul>``/``<ol>`` and its item counter."""

    ordered: bool
    count: int = 0


@dataclass
class _LinkState:
    """An open ``<a>``: its address and the text seen inside it."""

    href: str
    text: list[str] = field(default_factory=list)


class _Renderer:
    """Walk the tree and write each part's text; ``split`` turns the part routing on."""

    def __init__(self, quote_start: _Element | None, split: bool) -> None:
        """Render into three parts; without ``split`` everything goes to the text."""
        self.buffers = {target: _TextBuffer() for target in _Target}
        self._quote_start = quote_start
        self._split = split
        self._target = _Target.TEXT
        self._signature: _Element | None = None
        self._depth = 0
        self._nesting = 0
        self._pre = 0
        self._lists: list[_ListState] = []
        self._links: list[_LinkState] = []

    @property
    def _buffer(self) -> _TextBuffer:
        """The part being written."""
        return self.buffers[self._target]

    def render(self, root: _Element) -> None:
        """Render the whole tree, iteratively."""
        stack: list[tuple[_Element | str, bool]] = [(root, False)]
        while stack:
            node, leaving = stack.pop()
            if isinstance(node, str):
                self._text(node)
            elif leaving:
                self._leave(node)
            elif self._enter(node):
                stack.append((node, True))
                stack.extend((child, False) for child in reversed(node.children))

    def _text(self, data: str) -> None:
        """Write text, and remember it as the text of the open link."""
        self._buffer.add(data, self._depth, preformatted=self._pre > 0)
        if self._links:
            self._links[-1].text.append(data)

    def _enter(self, element: _Element) -> bool:
        """Open an element; False means its content is skipped."""
        if _is_hidden(element):
            return False
        if self._split and element is self._quote_start:
            self._buffer.ensure_line_break(self._depth)
            self._target = _Target.QUOTED
            if element.tag == "hr":  # Outlook's rule above the header: a separator only
                return False
        if self._split and self._target is _Target.TEXT and _is_signature(element):
            self._buffer.ensure_line_break(self._depth)
            self._signature = element
            self._target = _Target.SIGNATURE
        self._open_block(element)
        return True

    def _open_block(self, element: _Element) -> None:
        """Line and paragraph breaks, quote depth and rules at an element's start."""
        tag = element.tag
        buffer = self._buffer
        if tag == "br":
            buffer.line_break(self._depth)
        elif tag == "hr":
            if self._target is _Target.QUOTED and buffer.is_empty():
                return  # the rule Outlook draws above its header block only separates
            buffer.ensure_line_break(self._depth)
            buffer.add("-----", self._depth, preformatted=False)
            buffer.line_break(self._depth)
        elif tag == "blockquote":
            buffer.paragraph_break(self._depth)
            self._nesting += 1
            self._depth = min(self._nesting, _MAX_QUOTE_DEPTH)
        elif tag in _PARAGRAPHS and not self._is_line_block(element):
            buffer.paragraph_break(self._depth)
        elif tag in _LINES or tag in _PARAGRAPHS:
            buffer.ensure_line_break(self._depth)
        elif tag in _CELLS:
            buffer.add(" ", self._depth, preformatted=False)
        self._open_inline(element)

    def _open_inline(self, element: _Element) -> None:
        """Lists, list bullets, preformatted text and links at an element's start."""
        tag = element.tag
        if tag in ("ul", "ol"):
            self._lists.append(_ListState(ordered=tag == "ol"))
        elif tag == "li":
            self._buffer.add(self._bullet(), self._depth, preformatted=True)
        elif tag == "pre":
            self._pre += 1
        elif tag == "a":
            self._links.append(_LinkState(element.attrs.get("href", "").strip()))

    def _is_line_block(self, element: _Element) -> bool:
        """Paragraph tags that only break the line.

        Outlook writes each line as ``<p class="MsoNormal">`` (a blank line is one holding
        ``&nbsp;``), and a list nested in a list item continues that item.
        """
        if element.tag == "p" and "msonormal" in element.classes:
            return True
        return element.tag in ("ul", "ol") and bool(self._lists) and (
            element.parent is not None and element.parent.tag == "li"
        )

    def _bullet(self) -> str:
        """The marker of the next list item: "- ", or "N. " in an ordered list."""
        if not self._lists:
            return "- "
        state = self._lists[-1]
        state.count += 1
        level = min(len(self._lists), _MAX_LIST_DEPTH) - 1
        indent = "\xa0\xa0" * level  # non-breaking spaces survive the space collapsing
        return f"{indent}{state.count}. " if state.ordered else f"{indent}- "

    def _leave(self, element: _Element) -> None:
        """Close an element: link addresses, list and quote ends, signature routing."""
        tag = element.tag
        buffer = self._buffer
        if tag == "a" and self._links:
            link = self._links.pop()
            suffix = _link_suffix(link.href, "".join(link.text))
            if suffix:
                buffer.add(suffix, self._depth, preformatted=False)
        elif tag in ("ul", "ol") and self._lists:
            self._lists.pop()
        elif tag == "pre":
            self._pre -= 1
        if tag == "blockquote":
            buffer.close_quote(self._depth)
            self._nesting -= 1
            self._depth = min(self._nesting, _MAX_QUOTE_DEPTH)
            buffer.paragraph_break(self._depth)
        elif tag in _PARAGRAPHS and not self._is_line_block(element):
            buffer.paragraph_break(self._depth)
        elif tag in _LINES or tag in _PARAGRAPHS:
            buffer.ensure_line_break(self._depth)
        if element is self._signature:
            buffer.ensure_line_break(self._depth)
            self._signature = None
            self._target = _Target.TEXT




def _link_suffix(href: str, text: str) -> str:
    """`` <url>`` after a link's text, unless the text already is that address."""
    if not href or href.startswith(("#", "javascript:", "cid:")):
        return ""
    shown = _comparable_address(text)
    if not shown:
        return ""
    if shown == _comparable_address(href):
        return ""
    return f" <{href}>"


def _comparable_address(value: str) -> str:
    """An address without scheme, ``mailto:``, ``www.`` and trailing slash, for comparison."""
    value = value.strip(_ASCII_SPACE + "\xa0<>").lower()
    for prefix in ("mailto:", "https://", "http://", "www."):
        value = value.removeprefix(prefix)
    return value.rstrip("/")


# --- public functions ----------------------------------------------------------------------


def html_to_text(html: str) -> str:
    """Render HTML as readable plain text (see the module docstring for the layout rules)."""
    renderer = _Renderer(quote_start=None, split=False)
    renderer.render(_parse(html))
    return renderer.buffers[_Target.TEXT].result()


def split_html_reply(html: str) -> ReplyParts:
    """Split an HTML reply at its client's quote container, then split the rest as text."""
    root = _parse(html)
    renderer = _Renderer(quote_start=_find_quote_start(root), split=True)
    renderer.render(root)
    parts = split_reply(renderer.buffers[_Target.TEXT].result())
    return ReplyParts(
        text=parts.text,
        quoted=_join_parts(parts.quoted, renderer.buffers[_Target.QUOTED].result()),
        signature=_join_parts(parts.signature, renderer.buffers[_Target.SIGNATURE].result()),
    )


def _join_parts(first: str, second: str) -> str:
    """Two parts of the same kind, one blank line apart, skipping empty ones."""
    return "\n\n".join(part for part in (first, second) if part)

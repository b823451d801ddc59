"""HTML kept for the web view, sanitised with bleach (an allowlist).

No scripts, event handlers, forms, `javascript:` URLs or remote images (which would let a
sender track who reads the archive): images are kept only when they point to an inline
part (`cid:`), which the web view serves itself.
"""

from __future__ import annotations

import re

import bleach
from bleach.css_sanitizer import CSSSanitizer

TAGS = frozenset({
    "a", "abbr", "b", "blockquote", "br", "caption", "cite", "code", "dd", "del", "div", "dl",
    "dt", "em", "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "li",
    "ol", "p", "pre", "q", "s", "small", "span", "strike", "strong", "sub", "sup", "table",
    "tbody", "td", "tfoot", "th", "thead", "tr", "tt", "u", "ul",
})
ATTRIBUTES = {
    "*": ["class", "title", "dir", "lang", "style"],
    "a": ["href", "title"],
    "img": ["src", "alt", "width", "height"],
    "td": ["colspan", "rowspan", "align", "valign"],
    "th": ["colspan", "rowspan", "align", "valign"],
    "blockquote": ["type", "cite"],
    "font": ["color"],
}
PROTOCOLS = frozenset({"http", "https", "mailto", "cid"})
CSS = CSSSanitizer(allowed_css_properties=frozenset({
    "color", "background-color", "font-weight", "font-style", "text-decoration",
    "text-align", "margin-left", "padding-left", "border-left",
}))


def _attribute_allowed(tag: str, name: str, value: str) -> bool:
    if tag == "img" and name == "src":
        return value.lower().startswith("cid:")
    allowed = ATTRIBUTES.get(tag, []) + ATTRIBUTES["*"]
    return name in allowed


# Elements whose content is code or metadata, not text: removed with what they hold
# (bleach's strip=True would keep their text).
_DROP = re.compile(r"<(script|style|title|head|noscript|template)\b[^>]*>.*?</\1\s*>",
                   re.IGNORECASE | re.DOTALL)


def sanitise_html(html: str) -> str:
    """Safe HTML for the archive; never raises (an empty string for unusable input)."""
    if not html.strip():
        return ""
    html = _DROP.sub("", html)
    cleaner = bleach.Cleaner(tags=TAGS, attributes=_attribute_allowed, protocols=PROTOCOLS,
                             strip=True, strip_comments=True, css_sanitizer=CSS)
    return cleaner.clean(html)

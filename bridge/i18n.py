"""Translations and Jinja2 rendering for every email and page.

Catalogues are gettext `.po` files under `templates/locale/<lang>/LC_MESSAGES/<domain>.po`,
read with Babel when a `Catalogues` object is built: no compiled `.mo` files, nothing
downloaded. Each language gets its own Jinja2 environment (the `jinja2.ext.i18n` extension
installs one set of translations per environment), created on first use and kept by the
`Catalogues` object; no module-level mutable state.

Templates use the new-style gettext calls: `{{ _("Hello %(name)s", name=person) }}`.
Templates whose name ends in `.html` are autoescaped, `.txt` ones are not.

Domains are generic: `email` (this package's mail), `web` (the web view) and any other
catalogue a later part adds; one environment can hold several domains' messages, looked
up in the order given.
"""

from __future__ import annotations

import gettext
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from babel.messages.pofile import read_po
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from templates import TEMPLATES_DIR

LANGUAGES = ("en", "fr")
DEFAULT_LANGUAGE = "en"


class CatalogTranslations(gettext.NullTranslations):
    """gettext-compatible translations read from `.po` catalogues (fuzzy entries skipped)."""

    def __init__(self, messages: Mapping[Any, Any], plural: Any = None) -> None:
        super().__init__()
        self.messages = dict(messages)
        self.plural_func = plural or (lambda n: int(n != 1))

    def gettext(self, message: str) -> str:
        translated = self.messages.get(message)
        return translated if isinstance(translated, str) and translated else message

    def ngettext(self, singular: str, plural: str, n: int) -> str:  # type: ignore[override]
        forms = self.messages.get(singular)
        if isinstance(forms, tuple) and forms:
            index = min(self.plural_func(n), len(forms) - 1)
            if forms[index]:
                return str(forms[index])
        return singular if n == 1 else plural

    def pgettext(self, context: str, message: str) -> str:
        translated = self.messages.get((context, message))
        return translated if isinstance(translated, str) and translated else message

    def npgettext(self, context: str, singular: str, plural: str,  # type: ignore[override]
                  n: int) -> str:
        forms = self.messages.get((context, singular))
        if isinstance(forms, tuple) and forms:
            index = min(self.plural_func(n), len(forms) - 1)
            if forms[index]:
                return str(forms[index])
        return singular if n == 1 else plural


def load_catalogue(path: Path, language: str) -> CatalogTranslations:
    """Read one `.po` file into translations (an absent file translates nothing)."""
    if not path.is_file():
        return CatalogTranslations({})
    with path.open("rb") as handle:
        catalog = read_po(handle, locale=language)
    messages: dict[Any, Any] = {}
    for entry in catalog:
        if not entry.id or entry.fuzzy:
            continue
        key: Any
        if isinstance(entry.id, tuple | list):
            key = entry.id[0] if not entry.context else (entry.context, entry.id[0])
            value: Any = tuple(entry.string) if isinstance(entry.string, tuple | list) else ()
        else:
            key = entry.id if not entry.context else (entry.context, entry.id)
            value = entry.string
        messages[key] = value
    plural = None
    if catalog.plural_expr:
        # The catalogue's C plural expression, as gettext itself evaluates it.
        plural = gettext.c2py(catalog.plural_expr)  # type: ignore[attr-defined]
    return CatalogTranslations(messages, plural)


def normalise_language(language: str | None, default: str = DEFAULT_LANGUAGE) -> str:
    """A supported language code for `language` ("fr_CA" -> "fr"), else `default`."""
    if language:
        code = language.strip().replace("-", "_").split("_")[0].lower()
        if code in LANGUAGES:
            return code
    return default if default in LANGUAGES else DEFAULT_LANGUAGE


class Catalogues:
    """Translations and Jinja2 environments for one templates folder and a list of domains."""

    def __init__(self, folder: Path = TEMPLATES_DIR, domains: Iterable[str] = ("email",),
                 languages: Iterable[str] = LANGUAGES) -> None:
        self.folder = folder
        self.domains = tuple(domains)
        self.languages = tuple(languages)
        self._translations: dict[str, CatalogTranslations] = {}
        self._environments: dict[str, Environment] = {}
        for language in self.languages:
            merged: dict[Any, Any] = {}
            plural = None
            for domain in reversed(self.domains):  # the first domain wins
                path = folder / "locale" / language / "LC_MESSAGES" / f"{domain}.po"
                catalogue = load_catalogue(path, language)
                merged.update(catalogue.messages)
                plural = catalogue.plural_func
            self._translations[language] = CatalogTranslations(merged, plural)

    def translations(self, language: str) -> CatalogTranslations:
        return self._translations[normalise_language(language, self.languages[0])]

    def environment(self, language: str) -> Environment:
        language = normalise_language(language, self.languages[0])
        env = self._environments.get(language)
        if env is None:
            env = Environment(
                loader=FileSystemLoader(str(self.folder)),
                autoescape=select_autoescape(enabled_extensions=("html",),
                                             default_for_string=False),
                extensions=["jinja2.ext.i18n"],
                undefined=StrictUndefined,
                keep_trailing_newline=True,
                trim_blocks=True,
                lstrip_blocks=True,
            )
            env.install_gettext_translations(  # type: ignore[attr-defined]
                self.translations(language), newstyle=True)
            env.globals["language"] = language
            self._environments[language] = env
        return env

    def render(self, template: str, language: str, **context: Any) -> str:
        return self.environment(language).get_template(template).render(**context)

    def gettext(self, language: str, message: str, **values: Any) -> str:
        text = self.translations(language).gettext(message)
        return text % values if values else text


@lru_cache(maxsize=4)
def catalogues(domains: tuple[str, ...] = ("email",)) -> Catalogues:
    """The shared, read-only catalogues of the installed templates folder."""
    return Catalogues(TEMPLATES_DIR, domains)


def translations(language: str, domain: str = "email") -> CatalogTranslations:
    return catalogues((domain,)).translations(language)


def render(template: str, language: str, domain: str = "email", **context: Any) -> str:
    """Render `template` (a path under templates/, e.g. "email/footer.txt") in `language`."""
    return catalogues((domain,)).render(template, language, **context)

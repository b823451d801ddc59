"""search index, kept in step with the messages by triggers

SQLite: a contentless FTS5 table `message_search` (rowid = message.id; columns subject, body,
author, meta) and triggers on `message` that call `causerie_search_text` and
`causerie_search_author`, Python functions every writing connection must register
(`archive.search.sqlite_functions`). PostgreSQL: text search configurations `causerie_en`,
`causerie_fr` and `causerie_simple` (unaccent, then Snowball or nothing), a `search_vector`
tsvector column on `message` set by a BEFORE trigger, and a GIN index on it.

Only published messages are indexed; see archive/search/plan.py for the meta terms.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 00:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXED_COLUMNS = ("subject, text, language, from_name, from_address, community_id, "
                   "conversation_id, date, has_attachments, status")
FTS_COLUMNS = "rowid, subject, body, author, meta"


def _sqlite_values(row: str) -> str:
    """The rowid and columns of the index row of message `row` (must equal what
    archive.search.sqlite.INDEX_VALUES says: a test checks it)."""
    date = f"{row}.date"
    return (f"{row}.id, causerie_search_text({row}.subject, {row}.language), "
            f"causerie_search_text({row}.text, {row}.language), "
            f"causerie_search_author({row}.from_name, {row}.from_address), "
            f"'c' || {row}.community_id || ' v' || {row}.conversation_id || ' z'"
            f" || ' k' || substr({date}, 1, 2) || ' e' || substr({date}, 1, 3)"
            f" || ' y' || substr({date}, 1, 4)"
            f" || ' m' || substr({date}, 1, 4) || substr({date}, 6, 2)"
            f" || ' d' || substr({date}, 1, 4) || substr({date}, 6, 2) || substr({date}, 9, 2)"
            f" || CASE WHEN {row}.has_attachments THEN ' a' ELSE '' END")


def _upgrade_sqlite() -> None:
    from bridge.searchtext import sqlite_functions

    sqlite_functions(op.get_bind().connection.driver_connection)
    op.execute("CREATE VIRTUAL TABLE message_search USING fts5(subject, body, author, meta, "
               "content='', tokenize='unicode61 remove_diacritics 0')")
    new, old = _sqlite_values("new"), _sqlite_values("old")
    op.execute("CREATE TRIGGER message_search_insert AFTER INSERT ON message "
               "WHEN new.status = 'published' BEGIN "
               f"INSERT INTO message_search({FTS_COLUMNS}) VALUES ({new}); END")
    op.execute("CREATE TRIGGER message_search_delete AFTER DELETE ON message "
               "WHEN old.status = 'published' BEGIN "
               f"INSERT INTO message_search(message_search, {FTS_COLUMNS}) "
               f"VALUES ('delete', {old}); END")
    op.execute(f"CREATE TRIGGER message_search_update AFTER UPDATE OF {INDEXED_COLUMNS} "
               "ON message BEGIN "
               f"INSERT INTO message_search(message_search, {FTS_COLUMNS}) "
               f"SELECT 'delete', {old} WHERE old.status = 'published'; "
               f"INSERT INTO message_search({FTS_COLUMNS}) SELECT {new} "
               "WHERE new.status = 'published'; END")
    op.execute(f"INSERT INTO message_search({FTS_COLUMNS}) SELECT {_sqlite_values('m')} "
               "FROM message m WHERE m.status = 'published'")


# Punctuation becomes a blank before PostgreSQL's parser sees the text, so that it cuts words
# where bridge.searchtext does (ASCII punctuation, Latin-1 signs, general punctuation,
# arrows and symbols, CJK punctuation), whatever the database's locale.
_PUNCTUATION = (r"[[:space:][:punct:]\u00a0-\u00bf\u00d7\u00f7\u2000-\u206f\u2190-\u2bff"
                r"\u2e00-\u2e7f\u3000-\u303f\ufe30-\ufe4f\uff01-\uff0f\uff1a-\uff20]+")
_WORD_TYPES = "asciiword, word, asciihword, hword, hword_asciipart, hword_part"
_NUMBER_TYPES = "numword, numhword, hword_numpart, int, uint, float, sfloat, version"


def _upgrade_postgresql() -> None:
    bind = op.get_bind()
    try:
        with bind.begin_nested():
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS unaccent")
    except Exception as exc:
        raise RuntimeError(
            "search needs PostgreSQL's unaccent extension (package postgresql-contrib; "
            "'CREATE EXTENSION unaccent' as the database owner or a superuser)") from exc
    for name, copy, stem in (("causerie_en", "english", "english_stem"),
                             ("causerie_fr", "french", "french_stem"),
                             ("causerie_simple", "simple", "simple")):
        op.execute(f"CREATE TEXT SEARCH CONFIGURATION {name} (COPY = {copy})")
        op.execute(f"ALTER TEXT SEARCH CONFIGURATION {name} ALTER MAPPING FOR {_WORD_TYPES} "
                   f"WITH unaccent, {stem}")
        op.execute(f"ALTER TEXT SEARCH CONFIGURATION {name} ALTER MAPPING FOR {_NUMBER_TYPES} "
                   "WITH unaccent, simple")
    op.execute(f"""
CREATE FUNCTION causerie_search_clean(value text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT regexp_replace(coalesce(value, ''), '{_PUNCTUATION}', ' ', 'g')
$$""")
    op.execute("""
CREATE FUNCTION causerie_search_vector(subject text, body text, language text,
                                       from_name text, from_address text, community_id integer,
                                       conversation_id integer, day timestamptz,
                                       has_attachments boolean) RETURNS tsvector
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    config regconfig := CASE WHEN lower(coalesce(language, '')) LIKE 'fr%'
                             THEN 'causerie_fr'::regconfig ELSE 'causerie_en'::regconfig END;
    ymd text := to_char(day AT TIME ZONE 'UTC', 'YYYYMMDD');
    terms text[];
BEGIN
    terms := ARRAY['#c' || community_id, '#v' || conversation_id, '#z',
                   '#k' || substr(ymd, 1, 2), '#e' || substr(ymd, 1, 3),
                   '#y' || substr(ymd, 1, 4), '#m' || substr(ymd, 1, 6), '#d' || ymd];
    IF has_attachments THEN
        terms := terms || '#a'::text;
    END IF;
    terms := terms || ARRAY(SELECT '@' || lexeme FROM unnest(to_tsvector('causerie_simple',
        causerie_search_clean(coalesce(from_name, '') || ' ' || coalesce(from_address, '')))));
    IF btrim(coalesce(from_address, '')) <> '' THEN
        terms := terms || ('@f' || left(md5(lower(btrim(from_address))), 16));
    END IF;
    RETURN setweight(to_tsvector(config, causerie_search_clean(subject)), 'A')
        || setweight(to_tsvector(config, causerie_search_clean(body)), 'D')
        || array_to_tsvector(terms);
END
$$""")
    op.execute("""
CREATE FUNCTION causerie_message_search() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'published' THEN
        NEW.search_vector := causerie_search_vector(NEW.subject, NEW.text, NEW.language,
            NEW.from_name, NEW.from_address, NEW.community_id, NEW.conversation_id, NEW.date,
            NEW.has_attachments);
    ELSE
        NEW.search_vector := NULL;
    END IF;
    RETURN NEW;
END
$$""")
    op.execute("ALTER TABLE message ADD COLUMN search_vector tsvector")
    op.execute(f"CREATE TRIGGER message_search BEFORE INSERT OR UPDATE OF {INDEXED_COLUMNS} "
               "ON message FOR EACH ROW EXECUTE FUNCTION causerie_message_search()")
    op.execute("UPDATE message SET status = status")
    op.execute("CREATE INDEX ix_message_search ON message USING gin (search_vector)")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _upgrade_sqlite()
    else:
        _upgrade_postgresql()


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("message_search_insert", "message_search_delete",
                        "message_search_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS message_search")
        return
    op.execute("DROP TRIGGER IF EXISTS message_search ON message")
    op.execute("DROP INDEX IF EXISTS ix_message_search")
    op.execute("ALTER TABLE message DROP COLUMN IF EXISTS search_vector")
    op.execute("DROP FUNCTION IF EXISTS causerie_message_search()")
    op.execute("DROP FUNCTION IF EXISTS causerie_search_vector(text, text, text, text, text, "
               "integer, integer, timestamptz, boolean)")
    op.execute("DROP FUNCTION IF EXISTS causerie_search_clean(text)")
    for name in ("causerie_en", "causerie_fr", "causerie_simple"):
        op.execute(f"DROP TEXT SEARCH CONFIGURATION IF EXISTS {name}")

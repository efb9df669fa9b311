-- Full-text search over message bodies. `parlor_search` is English without stop words
-- (every word a user types counts, as in the embedded store), with accents folded first
-- (unaccent is a trusted extension: a database owner may create it). The vector is a
-- generated column of the event row, so it changes in the same transaction as the body: a
-- message is found once stored, an edit by its new body only, a delete (which erases the
-- body) not at all.
CREATE EXTENSION IF NOT EXISTS unaccent;
CREATE TEXT SEARCH DICTIONARY parlor_english_stem (TEMPLATE = snowball, Language = english);
CREATE TEXT SEARCH CONFIGURATION parlor_search (COPY = english);
ALTER TEXT SEARCH CONFIGURATION parlor_search
    ALTER MAPPING FOR asciiword, asciihword, hword_asciipart, word, hword, hword_part
    WITH unaccent, parlor_english_stem;

ALTER TABLE events ADD COLUMN search tsvector GENERATED ALWAYS AS (
    CASE WHEN kind = 'message' THEN to_tsvector('parlor_search'::regconfig, body) END
) STORED;
CREATE INDEX events_search ON events USING gin (search) WHERE kind = 'message';

-- The search vector becomes a plain column that Parlor fills: the persisters make each
-- body's terms (store/lexemes.rs), which takes PostgreSQL's parser and stemmer off the
-- primary's write path. Existing rows keep the vectors PostgreSQL made; a message's vector
-- changes in the same statement as its body, as before.
ALTER TABLE events ALTER COLUMN search DROP EXPRESSION;

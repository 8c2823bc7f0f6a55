-- The tags a key's host may have (a sorted JSON list), like its
-- hostname an operator's statement: set by `keys add --tags` or by the
-- first registration, changed only through the API. NULL: not yet.
ALTER TABLE api_keys ADD COLUMN tags TEXT;

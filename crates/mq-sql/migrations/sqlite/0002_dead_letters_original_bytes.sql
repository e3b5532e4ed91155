-- Dead letters on SQLite, version 2: `original_bytes`, the bytes a message was read from (a
-- Kinesis record's data), exactly as they were; NULL for entries stored before and for backends
-- that store messages rather than bytes.
ALTER TABLE {table} ADD COLUMN original_bytes BLOB;

ALTER TABLE documents DROP COLUMN content_ref;

-- Where a document's original bytes live when they are not in document_contents: the id of its
-- upload in the document store (MongoDB). NULL: the bytes are in document_contents.
ALTER TABLE documents ADD COLUMN content_ref TEXT;

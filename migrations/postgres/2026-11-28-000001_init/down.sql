DROP TABLE jobs;
DROP TABLE chunks;
DROP TABLE document_contents;
DROP TABLE documents;
DROP TABLE collections;

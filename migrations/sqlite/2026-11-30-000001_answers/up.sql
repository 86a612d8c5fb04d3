-- Answers (issue 11): every answer given is recorded, so feedback can name it by query_id and a
-- conversation can replay its earlier turns. Owners are principals: user:<id> or key:<id>.
CREATE TABLE conversations (
    id TEXT PRIMARY KEY NOT NULL,
    owner TEXT NOT NULL,
    title TEXT NOT NULL,
    -- The collection its questions search when they name none (NULL: all the owner may read).
    collection TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX conversations_owner ON conversations(owner, updated_at);

CREATE TABLE answers (
    id TEXT PRIMARY KEY NOT NULL,
    owner TEXT NOT NULL,
    collection TEXT,
    conversation_id TEXT,
    question TEXT NOT NULL,
    -- The standalone question retrieval used, when a follow-up was rewritten.
    rewritten TEXT,
    answer TEXT NOT NULL,
    generator TEXT NOT NULL,
    confidence REAL NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX answers_conversation ON answers(conversation_id, created_at);
CREATE INDEX answers_created ON answers(created_at);

-- One rating per answer and owner; a second one replaces the first.
CREATE TABLE feedback (
    query_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    rating TEXT NOT NULL,
    comment TEXT,
    -- Copied from the answer, so counts per collection survive the answer's pruning.
    collection TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (query_id, owner)
);
CREATE INDEX feedback_collection ON feedback(collection, created_at);

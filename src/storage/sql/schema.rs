//! Diesel table definitions; identical for SQLite and PostgreSQL (see `migrations/`).

diesel::table! {
    collections (name) {
        name -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    documents (id) {
        id -> Text,
        collection -> Text,
        external_id -> Nullable<Text>,
        title -> Text,
        content_type -> Text,
        metadata -> Text,
        status -> Text,
        version -> BigInt,
        chunk_count -> BigInt,
        size_bytes -> BigInt,
        sha256 -> Text,
        error -> Nullable<Text>,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    document_contents (document_id) {
        document_id -> Text,
        content -> Binary,
    }
}

diesel::table! {
    chunks (id) {
        id -> Text,
        document_id -> Text,
        chunk_index -> Integer,
        text -> Text,
        token_count -> Integer,
    }
}

diesel::table! {
    jobs (id) {
        id -> Text,
        document_id -> Text,
        document_version -> BigInt,
        status -> Text,
        attempts -> Integer,
        error -> Nullable<Text>,
        request_id -> Nullable<Text>,
        lease_owner -> Nullable<Text>,
        lease_until -> Nullable<BigInt>,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::joinable!(documents -> collections (collection));
diesel::joinable!(document_contents -> documents (document_id));
diesel::joinable!(chunks -> documents (document_id));
diesel::joinable!(jobs -> documents (document_id));
diesel::allow_tables_to_appear_in_same_query!(
    collections,
    documents,
    document_contents,
    chunks,
    jobs
);

//! Diesel table definitions; identical for SQLite and PostgreSQL (see `migrations/`).
//! `audit_log.id` is an SQLite `INTEGER PRIMARY KEY` (a 64-bit rowid) and a PostgreSQL `BIGSERIAL`.

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
        content_ref -> Nullable<Text>,
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
        not_before -> Nullable<BigInt>,
        batch_id -> Nullable<Text>,
    }
}

diesel::table! {
    batches (id) {
        id -> Text,
        collections -> Text,
        total -> BigInt,
        created_at -> BigInt,
    }
}

diesel::table! {
    deletions (document_id) {
        document_id -> Text,
        collection -> Text,
        deleted_at -> BigInt,
        attempts -> Integer,
        last_error -> Nullable<Text>,
    }
}

diesel::table! {
    users (id) {
        id -> Text,
        email -> Text,
        password_hash -> Text,
        role -> Text,
        disabled -> Bool,
        sessions_valid_after -> BigInt,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Text,
        name -> Text,
        secret_hash -> Text,
        role -> Text,
        collection -> Nullable<Text>,
        owner_id -> Nullable<Text>,
        expires_at -> Nullable<BigInt>,
        revoked_at -> Nullable<BigInt>,
        created_at -> BigInt,
    }
}

diesel::table! {
    refresh_tokens (id) {
        id -> Text,
        family -> Text,
        user_id -> Text,
        token_hash -> Text,
        expires_at -> BigInt,
        used_at -> Nullable<BigInt>,
        revoked_at -> Nullable<BigInt>,
        created_at -> BigInt,
    }
}

diesel::table! {
    signing_keys (kid) {
        kid -> Text,
        secret -> Text,
        created_at -> BigInt,
        retire_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    grants (collection, principal) {
        collection -> Text,
        principal -> Text,
        access -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    ip_blocks (id) {
        id -> Text,
        cidr -> Text,
        reason -> Text,
        expires_at -> Nullable<BigInt>,
        created_by -> Nullable<Text>,
        created_at -> BigInt,
    }
}

diesel::table! {
    security_state (id) {
        id -> Integer,
        generation -> BigInt,
        sessions_valid_after -> BigInt,
        rate_limits -> Nullable<Text>,
    }
}

diesel::table! {
    audit_log (id) {
        id -> BigInt,
        at -> BigInt,
        event -> Text,
        actor -> Nullable<Text>,
        ip -> Nullable<Text>,
        user_agent -> Nullable<Text>,
        target -> Nullable<Text>,
        outcome -> Text,
        request_id -> Nullable<Text>,
        detail -> Nullable<Text>,
    }
}

diesel::table! {
    conversations (id) {
        id -> Text,
        owner -> Text,
        title -> Text,
        collection -> Nullable<Text>,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    answers (id) {
        id -> Text,
        owner -> Text,
        collection -> Nullable<Text>,
        conversation_id -> Nullable<Text>,
        question -> Text,
        rewritten -> Nullable<Text>,
        answer -> Text,
        generator -> Text,
        confidence -> Double,
        created_at -> BigInt,
    }
}

diesel::table! {
    feedback (query_id, owner) {
        query_id -> Text,
        owner -> Text,
        rating -> Text,
        comment -> Nullable<Text>,
        collection -> Nullable<Text>,
        created_at -> BigInt,
    }
}

diesel::joinable!(documents -> collections (collection));
diesel::joinable!(document_contents -> documents (document_id));
diesel::joinable!(chunks -> documents (document_id));
diesel::joinable!(jobs -> documents (document_id));
diesel::joinable!(refresh_tokens -> users (user_id));
diesel::allow_tables_to_appear_in_same_query!(
    collections,
    documents,
    document_contents,
    chunks,
    jobs,
    batches,
    users,
    api_keys,
    refresh_tokens,
    signing_keys,
    grants,
    ip_blocks,
    security_state,
    audit_log,
    conversations,
    answers,
    feedback,
    webhook_subscriptions,
    webhook_deliveries
);

// Webhooks (migration 2026-11-30-000002_webhooks).
diesel::table! {
    webhook_subscriptions (id) {
        id -> Text,
        collection -> Text,
        url -> Text,
        secret -> Text,
        events -> Text,
        enabled -> Bool,
        disabled_reason -> Nullable<Text>,
        consecutive_failures -> Integer,
        created_at -> BigInt,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> Text,
        subscription_id -> Text,
        event -> Text,
        payload -> Text,
        status -> Text,
        attempts -> Integer,
        next_attempt_at -> BigInt,
        lease_owner -> Nullable<Text>,
        lease_until -> Nullable<BigInt>,
        last_status_code -> Nullable<Integer>,
        last_error -> Nullable<Text>,
        created_at -> BigInt,
        delivered_at -> Nullable<BigInt>,
    }
}

diesel::joinable!(webhook_deliveries -> webhook_subscriptions (subscription_id));

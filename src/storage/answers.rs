//! What the response module persists: every answer given (so feedback can name it by `query_id`
//! and a conversation can replay its turns), conversations, and feedback on answers. Owners are
//! principals (`user:<id>`, `key:<id>`); times are Unix milliseconds.
//!
//! Answers outside conversations are pruned after `response.answers_retention_days`; feedback keeps
//! its own copy of the collection, so counts survive the answer's pruning.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StorageError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerRecord {
    /// The answer's `query_id`.
    pub id: String,
    pub owner: String,
    pub collection: Option<String>,
    pub conversation_id: Option<String>,
    pub question: String,
    /// The standalone question retrieval used, when a follow-up was rewritten.
    pub rewritten: Option<String>,
    pub answer: String,
    pub generator: String,
    pub confidence: f64,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationRecord {
    pub id: String,
    pub owner: String,
    pub title: String,
    pub collection: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackRecord {
    pub query_id: String,
    pub owner: String,
    /// `up` or `down`.
    pub rating: String,
    pub comment: Option<String>,
    pub collection: Option<String>,
    pub created_at: i64,
}

/// Feedback counts for one collection (`None`: questions asked across collections).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackCounts {
    pub collection: Option<String>,
    pub up: i64,
    pub down: i64,
}

/// A piece of feedback with the question and answer it rates (when the answer is still kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackEntry {
    pub feedback: FeedbackRecord,
    pub question: Option<String>,
    pub answer: Option<String>,
}

/// Which feedback to list.
#[derive(Debug, Clone, Default)]
pub struct FeedbackQuery {
    /// `Some(None)`: feedback on questions asked across collections.
    pub collection: Option<Option<String>>,
    pub rating: Option<String>,
    pub since: Option<i64>,
    pub limit: i64,
    pub offset: i64,
}

#[async_trait]
pub trait AnswerStore: Send + Sync + 'static {
    async fn record_answer(&self, answer: AnswerRecord) -> Result<(), StorageError>;
    async fn get_answer(&self, id: &str) -> Result<Option<AnswerRecord>, StorageError>;
    /// Answers of no conversation created before `before`; returns how many were deleted.
    async fn prune_answers(&self, before: i64) -> Result<u64, StorageError>;

    async fn create_conversation(&self, c: ConversationRecord) -> Result<(), StorageError>;
    async fn get_conversation(&self, id: &str) -> Result<Option<ConversationRecord>, StorageError>;
    /// The owner's conversations, most recently active first.
    async fn list_conversations(
        &self,
        owner: &str,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<ConversationRecord>, StorageError>;
    /// Deletes the conversation and its turns; false when there was none.
    async fn delete_conversation(&self, id: &str) -> Result<bool, StorageError>;
    /// The conversation's last `limit` turns, oldest first.
    async fn turns(
        &self,
        conversation_id: &str,
        limit: i64,
    ) -> Result<Vec<AnswerRecord>, StorageError>;
    /// Records a turn and marks the conversation active, in one transaction.
    async fn add_turn(&self, answer: AnswerRecord) -> Result<(), StorageError>;

    /// Stores a rating; a second one by the same owner replaces the first.
    async fn put_feedback(&self, f: FeedbackRecord) -> Result<(), StorageError>;
    /// Up and down counts per collection, since `since` (ms) when given.
    async fn feedback_counts(
        &self,
        since: Option<i64>,
    ) -> Result<Vec<FeedbackCounts>, StorageError>;
    /// Feedback newest first, with the rated question and answer.
    async fn list_feedback(&self, q: FeedbackQuery) -> Result<Vec<FeedbackEntry>, StorageError>;

    /// Backups: records created up to `until` (ms), `limit` at a time, in key order after `after`.
    async fn export_conversations(
        &self,
        until: i64,
        after: Option<String>,
        limit: i64,
    ) -> Result<Vec<ConversationRecord>, StorageError>;
    async fn export_answers(
        &self,
        until: i64,
        after: Option<String>,
        limit: i64,
    ) -> Result<Vec<AnswerRecord>, StorageError>;
    /// After `(query_id, owner)`.
    async fn export_feedback(
        &self,
        until: i64,
        after: Option<(String, String)>,
        limit: i64,
    ) -> Result<Vec<FeedbackRecord>, StorageError>;
}

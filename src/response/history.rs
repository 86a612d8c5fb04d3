//! Answers remembered: conversations (per owner), the turns asked in them, every answer's record
//! (what `query_id` names), and feedback on answers. The API's conversation and feedback endpoints
//! and the response service's follow-ups all go through here, so ownership is checked in one place:
//! an owner sees only their own conversations and rates only their own answers; anything else looks
//! like it does not exist.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::grounding::Turn;
use crate::security::{Caller, Principal};
use crate::storage::StorageError;
use crate::storage::answers::{
    AnswerRecord, AnswerStore, ConversationRecord, FeedbackCounts, FeedbackEntry, FeedbackQuery,
    FeedbackRecord,
};

/// The most a feedback comment or a conversation title may hold.
pub const COMMENT_MAX_BYTES: usize = 2000;
pub const TITLE_MAX_BYTES: usize = 200;
/// The most rows one page lists.
pub const PAGE_MAX: i64 = 200;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Who owns answers and conversations: the user behind a session or a user's API key, else the
/// key itself.
pub fn owner_of(caller: &Caller) -> String {
    match &caller.principal {
        Principal::ApiKey {
            owner: Some(user), ..
        } => format!("user:{user}"),
        other => other.label(),
    }
}

fn millis_to_rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
        .to_rfc3339()
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConversationView {
    pub id: Uuid,
    pub title: String,
    /// The collection its questions search when they name none.
    pub collection: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TurnView {
    pub query_id: Uuid,
    pub question: String,
    /// The standalone question retrieval used, when the follow-up was rewritten.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewritten_query: Option<String>,
    pub answer: String,
    pub generator: String,
    pub confidence: f64,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConversationDetail {
    #[serde(flatten)]
    pub conversation: ConversationView,
    pub turns: Vec<TurnView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Rating {
    Up,
    Down,
}

impl Rating {
    pub fn as_str(self) -> &'static str {
        match self {
            Rating::Up => "up",
            Rating::Down => "down",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CollectionSatisfaction {
    /// `null`: questions asked across collections.
    pub collection: Option<String>,
    pub up: i64,
    pub down: i64,
    /// up / (up + down).
    pub satisfaction: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FeedbackView {
    pub query_id: Uuid,
    pub owner: String,
    pub rating: Rating,
    pub comment: Option<String>,
    pub collection: Option<String>,
    pub created_at: String,
    /// The rated question and answer, while the answer is kept.
    pub question: Option<String>,
    pub answer: Option<String>,
}

fn conversation_view(c: ConversationRecord) -> ConversationView {
    ConversationView {
        id: Uuid::parse_str(&c.id).unwrap_or_default(),
        title: c.title,
        collection: c.collection,
        created_at: millis_to_rfc3339(c.created_at),
        updated_at: millis_to_rfc3339(c.updated_at),
    }
}

pub struct History {
    store: Arc<dyn AnswerStore>,
    history_turns: i64,
}

impl History {
    pub fn new(store: Arc<dyn AnswerStore>, history_turns: usize) -> Self {
        // Exported from the start, so the satisfaction panel reads 0 ratings rather than nothing.
        for rating in [Rating::Up, Rating::Down] {
            metrics::counter!("feedback_total", "rating" => rating.as_str()).increment(0);
        }
        Self {
            store,
            history_turns: history_turns as i64,
        }
    }

    pub async fn create_conversation(
        &self,
        owner: String,
        title: Option<String>,
        collection: Option<String>,
    ) -> Result<ConversationView, HistoryError> {
        let title = title.unwrap_or_default().trim().to_string();
        if title.len() > TITLE_MAX_BYTES {
            return Err(HistoryError::Invalid(format!(
                "title must be at most {TITLE_MAX_BYTES} bytes"
            )));
        }
        let now = Utc::now().timestamp_millis();
        let record = ConversationRecord {
            id: Uuid::new_v4().to_string(),
            owner,
            title,
            collection,
            created_at: now,
            updated_at: now,
        };
        self.store.create_conversation(record.clone()).await?;
        Ok(conversation_view(record))
    }

    /// The owner's conversation; someone else's is not found.
    async fn owned(&self, owner: &str, id: Uuid) -> Result<ConversationRecord, HistoryError> {
        match self.store.get_conversation(&id.to_string()).await? {
            Some(c) if c.owner == owner => Ok(c),
            _ => Err(HistoryError::NotFound("conversation")),
        }
    }

    pub async fn conversation(
        &self,
        owner: &str,
        id: Uuid,
        max_turns: i64,
    ) -> Result<ConversationDetail, HistoryError> {
        let c = self.owned(owner, id).await?;
        let turns = self
            .store
            .turns(&c.id, max_turns)
            .await?
            .into_iter()
            .map(|t| TurnView {
                query_id: Uuid::parse_str(&t.id).unwrap_or_default(),
                question: t.question,
                rewritten_query: t.rewritten,
                answer: t.answer,
                generator: t.generator,
                confidence: t.confidence,
                created_at: millis_to_rfc3339(t.created_at),
            })
            .collect();
        Ok(ConversationDetail {
            conversation: conversation_view(c),
            turns,
        })
    }

    pub async fn list(
        &self,
        owner: &str,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<ConversationView>, HistoryError> {
        Ok(self
            .store
            .list_conversations(owner, limit.clamp(1, PAGE_MAX), offset.max(0))
            .await?
            .into_iter()
            .map(conversation_view)
            .collect())
    }

    pub async fn delete(&self, owner: &str, id: Uuid) -> Result<(), HistoryError> {
        let c = self.owned(owner, id).await?;
        self.store.delete_conversation(&c.id).await?;
        Ok(())
    }

    /// What a follow-up in conversation `id` needs: the conversation and its latest turns.
    pub async fn context(
        &self,
        owner: &str,
        id: Uuid,
    ) -> Result<(ConversationRecord, Vec<Turn>), HistoryError> {
        let c = self.owned(owner, id).await?;
        let turns = self
            .store
            .turns(&c.id, self.history_turns)
            .await?
            .into_iter()
            .map(|t| Turn {
                question: t.rewritten.unwrap_or(t.question),
                answer: t.answer,
            })
            .collect();
        Ok((c, turns))
    }

    /// Records an answer given (a turn, when it belongs to a conversation).
    pub async fn record(&self, answer: AnswerRecord) -> Result<(), StorageError> {
        if answer.conversation_id.is_some() {
            self.store.add_turn(answer).await
        } else {
            self.store.record_answer(answer).await
        }
    }

    /// Stores the owner's rating of their answer `query_id`.
    pub async fn rate(
        &self,
        owner: &str,
        query_id: Uuid,
        rating: Rating,
        comment: Option<String>,
    ) -> Result<(), HistoryError> {
        if let Some(c) = &comment
            && c.len() > COMMENT_MAX_BYTES
        {
            return Err(HistoryError::Invalid(format!(
                "comment must be at most {COMMENT_MAX_BYTES} bytes"
            )));
        }
        let answer = match self.store.get_answer(&query_id.to_string()).await? {
            Some(a) if a.owner == owner => a,
            _ => return Err(HistoryError::NotFound("answer")),
        };
        self.store
            .put_feedback(FeedbackRecord {
                query_id: answer.id,
                owner: owner.to_string(),
                rating: rating.as_str().to_string(),
                comment: comment.filter(|c| !c.trim().is_empty()),
                collection: answer.collection,
                created_at: Utc::now().timestamp_millis(),
            })
            .await?;
        metrics::counter!("feedback_total", "rating" => rating.as_str()).increment(1);
        Ok(())
    }

    /// Satisfaction per collection and the feedback itself, for admins.
    pub async fn feedback_report(
        &self,
        query: FeedbackQuery,
    ) -> Result<(Vec<CollectionSatisfaction>, Vec<FeedbackView>), HistoryError> {
        let counts: Vec<FeedbackCounts> = self.store.feedback_counts(query.since).await?;
        let summary = counts
            .into_iter()
            .filter(|c| match &query.collection {
                Some(wanted) => &c.collection == wanted,
                None => true,
            })
            .map(|c| CollectionSatisfaction {
                satisfaction: if c.up + c.down == 0 {
                    0.0
                } else {
                    c.up as f64 / (c.up + c.down) as f64
                },
                collection: c.collection,
                up: c.up,
                down: c.down,
            })
            .collect();
        let entries: Vec<FeedbackEntry> = self
            .store
            .list_feedback(FeedbackQuery {
                limit: query.limit.clamp(1, PAGE_MAX),
                offset: query.offset.max(0),
                ..query
            })
            .await?;
        let feedback = entries
            .into_iter()
            .map(|e| FeedbackView {
                query_id: Uuid::parse_str(&e.feedback.query_id).unwrap_or_default(),
                owner: e.feedback.owner,
                rating: if e.feedback.rating == "up" {
                    Rating::Up
                } else {
                    Rating::Down
                },
                comment: e.feedback.comment,
                collection: e.feedback.collection,
                created_at: millis_to_rfc3339(e.feedback.created_at),
                question: e.question,
                answer: e.answer,
            })
            .collect();
        Ok((summary, feedback))
    }

    /// Deletes, every hour, answers older than `retention` that belong to no conversation.
    pub fn spawn_pruning(self: &Arc<Self>, retention: Duration) {
        if retention.is_zero() {
            return;
        }
        let history = Arc::clone(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(3600));
            loop {
                every.tick().await;
                let before = Utc::now().timestamp_millis() - retention.as_millis() as i64;
                match history.store.prune_answers(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(module = "response", pruned = n, "old answers pruned"),
                    Err(e) => {
                        tracing::warn!(module = "response", error = %e, "pruning answers failed")
                    }
                }
            }
        });
    }
}

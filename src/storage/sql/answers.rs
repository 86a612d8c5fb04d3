//! [`AnswerStore`] on the SQL backends.

use std::collections::BTreeMap;

use async_trait::async_trait;
use diesel::prelude::*;

use super::schema::{answers, conversations, feedback};
use super::{Dialect, Pool, SqlStore};
use crate::storage::StorageError;
use crate::storage::answers::{
    AnswerRecord, AnswerStore, ConversationRecord, FeedbackCounts, FeedbackEntry, FeedbackQuery,
    FeedbackRecord,
};

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = answers)]
struct AnswerRow {
    id: String,
    owner: String,
    collection: Option<String>,
    conversation_id: Option<String>,
    question: String,
    rewritten: Option<String>,
    answer: String,
    generator: String,
    confidence: f64,
    created_at: i64,
}

impl From<AnswerRow> for AnswerRecord {
    fn from(r: AnswerRow) -> Self {
        AnswerRecord {
            id: r.id,
            owner: r.owner,
            collection: r.collection,
            conversation_id: r.conversation_id,
            question: r.question,
            rewritten: r.rewritten,
            answer: r.answer,
            generator: r.generator,
            confidence: r.confidence,
            created_at: r.created_at,
        }
    }
}

impl From<AnswerRecord> for AnswerRow {
    fn from(r: AnswerRecord) -> Self {
        AnswerRow {
            id: r.id,
            owner: r.owner,
            collection: r.collection,
            conversation_id: r.conversation_id,
            question: r.question,
            rewritten: r.rewritten,
            answer: r.answer,
            generator: r.generator,
            confidence: r.confidence,
            created_at: r.created_at,
        }
    }
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = conversations)]
struct ConversationRow {
    id: String,
    owner: String,
    title: String,
    collection: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl From<ConversationRow> for ConversationRecord {
    fn from(r: ConversationRow) -> Self {
        ConversationRecord {
            id: r.id,
            owner: r.owner,
            title: r.title,
            collection: r.collection,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = feedback)]
struct FeedbackRow {
    query_id: String,
    owner: String,
    rating: String,
    comment: Option<String>,
    collection: Option<String>,
    created_at: i64,
}

impl From<FeedbackRow> for FeedbackRecord {
    fn from(r: FeedbackRow) -> Self {
        FeedbackRecord {
            query_id: r.query_id,
            owner: r.owner,
            rating: r.rating,
            comment: r.comment,
            collection: r.collection,
            created_at: r.created_at,
        }
    }
}

/// Runs `$body` on a pooled connection, read-only.
macro_rules! reading {
    ($store:expr, $c:ident => $body:expr) => {
        $store
            .blocking(move |pool| with_conn!(pool, $c => $body))
            .await
    };
}

/// Runs `$body` in a write transaction.
macro_rules! writing {
    ($store:expr, $c:ident => $body:expr) => {
        $store
            .blocking(move |pool| with_conn!(pool, conn => conn.write_txn(|$c| $body)))
            .await
    };
}

#[async_trait]
impl AnswerStore for SqlStore {
    async fn record_answer(&self, answer: AnswerRecord) -> Result<(), StorageError> {
        let row = AnswerRow::from(answer);
        writing!(self, c => {
            diesel::insert_into(answers::table).values(&row).execute(c)?;
            Ok(())
        })
    }

    async fn get_answer(&self, id: &str) -> Result<Option<AnswerRecord>, StorageError> {
        let id = id.to_string();
        reading!(self, c => Ok(answers::table
            .find(id)
            .select(AnswerRow::as_select())
            .first(c)
            .optional()?
            .map(AnswerRecord::from)))
    }

    async fn prune_answers(&self, before: i64) -> Result<u64, StorageError> {
        writing!(self, c => {
            let n = diesel::delete(
                answers::table
                    .filter(answers::conversation_id.is_null())
                    .filter(answers::created_at.lt(before)),
            )
            .execute(c)?;
            Ok(n as u64)
        })
    }

    async fn create_conversation(&self, conv: ConversationRecord) -> Result<(), StorageError> {
        let row = ConversationRow {
            id: conv.id,
            owner: conv.owner,
            title: conv.title,
            collection: conv.collection,
            created_at: conv.created_at,
            updated_at: conv.updated_at,
        };
        writing!(self, c => {
            diesel::insert_into(conversations::table).values(&row).execute(c)?;
            Ok(())
        })
    }

    async fn get_conversation(&self, id: &str) -> Result<Option<ConversationRecord>, StorageError> {
        let id = id.to_string();
        reading!(self, c => Ok(conversations::table
            .find(id)
            .select(ConversationRow::as_select())
            .first(c)
            .optional()?
            .map(ConversationRecord::from)))
    }

    async fn list_conversations(
        &self,
        owner: &str,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<ConversationRecord>, StorageError> {
        let owner = owner.to_string();
        reading!(self, c => Ok(conversations::table
            .filter(conversations::owner.eq(owner))
            .order((conversations::updated_at.desc(), conversations::id))
            .limit(limit)
            .offset(offset)
            .select(ConversationRow::as_select())
            .load(c)?
            .into_iter()
            .map(ConversationRecord::from)
            .collect()))
    }

    async fn delete_conversation(&self, id: &str) -> Result<bool, StorageError> {
        let id = id.to_string();
        writing!(self, c => {
            diesel::delete(answers::table.filter(answers::conversation_id.eq(&id))).execute(c)?;
            let n = diesel::delete(conversations::table.find(&id)).execute(c)?;
            Ok(n > 0)
        })
    }

    async fn turns(
        &self,
        conversation_id: &str,
        limit: i64,
    ) -> Result<Vec<AnswerRecord>, StorageError> {
        let id = conversation_id.to_string();
        let mut turns: Vec<AnswerRecord> = reading!(self, c => Ok::<_, StorageError>(answers::table
            .filter(answers::conversation_id.eq(id))
            .order((answers::created_at.desc(), answers::id.desc()))
            .limit(limit)
            .select(AnswerRow::as_select())
            .load(c)?
            .into_iter()
            .map(AnswerRecord::from)
            .collect()))?;
        turns.reverse();
        Ok(turns)
    }

    async fn add_turn(&self, answer: AnswerRecord) -> Result<(), StorageError> {
        let Some(conversation) = answer.conversation_id.clone() else {
            return self.record_answer(answer).await;
        };
        let at = answer.created_at;
        let row = AnswerRow::from(answer);
        writing!(self, c => {
            let n = diesel::update(conversations::table.find(&conversation))
                .set(conversations::updated_at.eq(at))
                .execute(c)?;
            if n == 0 {
                // Deleted while the answer was being written: the turn has nowhere to go.
                return Err(StorageError::Conflict(format!(
                    "conversation {conversation} no longer exists"
                )));
            }
            diesel::insert_into(answers::table).values(&row).execute(c)?;
            Ok(())
        })
    }

    async fn put_feedback(&self, f: FeedbackRecord) -> Result<(), StorageError> {
        let row = FeedbackRow {
            query_id: f.query_id,
            owner: f.owner,
            rating: f.rating,
            comment: f.comment,
            collection: f.collection,
            created_at: f.created_at,
        };
        writing!(self, c => {
            diesel::insert_into(feedback::table)
                .values(&row)
                .on_conflict((feedback::query_id, feedback::owner))
                .do_update()
                .set((
                    feedback::rating.eq(&row.rating),
                    feedback::comment.eq(&row.comment),
                    feedback::created_at.eq(row.created_at),
                ))
                .execute(c)?;
            Ok(())
        })
    }

    async fn feedback_counts(
        &self,
        since: Option<i64>,
    ) -> Result<Vec<FeedbackCounts>, StorageError> {
        let since = since.unwrap_or(i64::MIN);
        let rows: Vec<(Option<String>, String, i64)> = reading!(self, c => Ok::<_, StorageError>(
            feedback::table
                .filter(feedback::created_at.ge(since))
                .group_by((feedback::collection, feedback::rating))
                .select((feedback::collection, feedback::rating, diesel::dsl::count_star()))
                .load(c)?
        ))?;
        let mut by_collection: BTreeMap<Option<String>, FeedbackCounts> = BTreeMap::new();
        for (collection, rating, n) in rows {
            let counts = by_collection
                .entry(collection.clone())
                .or_insert(FeedbackCounts {
                    collection,
                    up: 0,
                    down: 0,
                });
            match rating.as_str() {
                "up" => counts.up += n,
                _ => counts.down += n,
            }
        }
        Ok(by_collection.into_values().collect())
    }

    async fn export_conversations(
        &self,
        until: i64,
        after: Option<String>,
        limit: i64,
    ) -> Result<Vec<ConversationRecord>, StorageError> {
        let after = after.unwrap_or_default();
        reading!(self, c => Ok(conversations::table
            .filter(conversations::created_at.le(until))
            .filter(conversations::id.gt(after))
            .order(conversations::id)
            .limit(limit)
            .select(ConversationRow::as_select())
            .load(c)?
            .into_iter()
            .map(ConversationRecord::from)
            .collect()))
    }

    async fn export_answers(
        &self,
        until: i64,
        after: Option<String>,
        limit: i64,
    ) -> Result<Vec<AnswerRecord>, StorageError> {
        let after = after.unwrap_or_default();
        reading!(self, c => Ok(answers::table
            .filter(answers::created_at.le(until))
            .filter(answers::id.gt(after))
            .order(answers::id)
            .limit(limit)
            .select(AnswerRow::as_select())
            .load(c)?
            .into_iter()
            .map(AnswerRecord::from)
            .collect()))
    }

    async fn export_feedback(
        &self,
        until: i64,
        after: Option<(String, String)>,
        limit: i64,
    ) -> Result<Vec<FeedbackRecord>, StorageError> {
        let (query_id, owner) = after.unwrap_or_default();
        reading!(self, c => Ok(feedback::table
            .filter(feedback::created_at.le(until))
            .filter(
                feedback::query_id
                    .gt(query_id.clone())
                    .or(feedback::query_id.eq(query_id).and(feedback::owner.gt(owner))),
            )
            .order((feedback::query_id, feedback::owner))
            .limit(limit)
            .select(FeedbackRow::as_select())
            .load(c)?
            .into_iter()
            .map(FeedbackRecord::from)
            .collect()))
    }

    async fn list_feedback(&self, q: FeedbackQuery) -> Result<Vec<FeedbackEntry>, StorageError> {
        reading!(self, c => {
            let mut query = feedback::table
                .left_join(answers::table.on(answers::id.eq(feedback::query_id)))
                .select((
                    FeedbackRow::as_select(),
                    answers::question.nullable(),
                    answers::answer.nullable(),
                ))
                .order((feedback::created_at.desc(), feedback::query_id))
                .limit(q.limit)
                .offset(q.offset)
                .into_boxed();
            match &q.collection {
                Some(Some(name)) => query = query.filter(feedback::collection.eq(name.clone())),
                Some(None) => query = query.filter(feedback::collection.is_null()),
                None => {}
            }
            if let Some(rating) = &q.rating {
                query = query.filter(feedback::rating.eq(rating.clone()));
            }
            if let Some(since) = q.since {
                query = query.filter(feedback::created_at.ge(since));
            }
            let rows: Vec<(FeedbackRow, Option<String>, Option<String>)> = query.load(c)?;
            Ok(rows
                .into_iter()
                .map(|(f, question, answer)| FeedbackEntry {
                    feedback: f.into(),
                    question,
                    answer,
                })
                .collect())
        })
    }
}

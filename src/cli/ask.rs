//! `doc-rag ask`: a question answered with citations. By default the answer is streamed (Server-
//! Sent Events from `POST /v1/query`) and printed as the server writes it; the sources and the
//! footer follow once it is done.

use std::io::Write;

use anyhow::{Context, bail};
use uuid::Uuid;

use super::api::Api;
use super::client::{AskArgs, format_answer, format_answer_notes};
use super::output::emit;
use crate::api::model::{GeneratorChoice, QueryRequest, QueryResponse};

pub async fn ask(args: AskArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.server).await?;
    let conversation_id = match args.conversation.as_deref() {
        None => None,
        Some("new") => {
            let title: String = args.question.chars().take(80).collect();
            let created: serde_json::Value = api
                .json(api.post("/v1/conversations").json(&serde_json::json!({
                    "title": title,
                    "collection": args.collection,
                })))
                .await?;
            let id = created["id"].as_str().unwrap_or_default();
            Some(
                Uuid::parse_str(id)
                    .with_context(|| format!("the server gave no conversation id: {created}"))?,
            )
        }
        Some(id) => Some(
            Uuid::parse_str(id)
                .with_context(|| format!("--conversation {id:?} is neither an id nor `new`"))?,
        ),
    };
    let stream = !(args.json || args.no_stream);
    let body = QueryRequest {
        query: args.question,
        top_k: args.top_k,
        collection: args.collection,
        filter: None,
        stream,
        conversation_id,
        generator: if args.extractive {
            GeneratorChoice::Extractive
        } else {
            GeneratorChoice::Auto
        },
    };
    let request = api.post("/v1/query").json(&body);
    if args.json {
        // Decoded as a plain value so `--json` shows exactly what the server sent, including any
        // fields newer than this client.
        let value: serde_json::Value = api.json(request).await?;
        return emit(&format!("{}\n", serde_json::to_string_pretty(&value)?));
    }
    if !stream {
        let response: QueryResponse = api.json(request).await?;
        return emit(&format_answer(&response));
    }
    let mut response = api.open(request).await?;
    let mut events = EventReader::default();
    let mut printed = String::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| api.read_error(e))? {
        for (event, data) in events.push(&chunk) {
            match event.as_str() {
                "delta" => {
                    let delta: serde_json::Value =
                        serde_json::from_str(&data).context("a delta event is not JSON")?;
                    let text = delta["text"].as_str().unwrap_or_default();
                    printed.push_str(text);
                    emit(text)?;
                }
                "done" => {
                    let done: QueryResponse =
                        serde_json::from_str(&data).context("the done event is not an answer")?;
                    // A generation that failed part-way was replaced by the extractive answer:
                    // what was printed is not the answer, so print the answer.
                    if printed.trim() != done.answer.trim() && !printed.is_empty() {
                        emit("\n\n")?;
                        emit(done.answer.trim_end())?;
                    }
                    emit("\n\n")?;
                    return emit(&format_answer_notes(&done));
                }
                // `sources` comes first; the citations that matter arrive with `done`.
                _ => {}
            }
        }
    }
    let _ = std::io::stdout().flush();
    bail!("the server ended the answer's stream before it was done")
}

/// Splits a Server-Sent Events body into (event, data) pairs as bytes arrive.
#[derive(Default)]
struct EventReader {
    buffer: String,
    pending: Vec<u8>,
}

impl EventReader {
    fn push(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        // Keep an incomplete UTF-8 character for the next chunk.
        self.pending.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(s) => s.len(),
            Err(e) => e.valid_up_to(),
        };
        let text: Vec<u8> = self.pending.drain(..valid).collect();
        self.buffer.push_str(&String::from_utf8_lossy(&text));
        let mut out = Vec::new();
        while let Some(end) = self.buffer.find("\n\n") {
            let block: String = self.buffer.drain(..end + 2).collect();
            let mut event = String::from("message");
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                }
            }
            if !data.is_empty() {
                out.push((event, data.join("\n")));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_and_characters_are_put_back_together() {
        let body = "event: sources\ndata: {\"sources\":[]}\n\nevent: delta\ndata: {\"text\":\"Grüß\"}\n\n: ping\n\nevent: done\ndata: {}\n\n";
        let mut whole = EventReader::default();
        let expected = whole.push(body.as_bytes());
        assert_eq!(
            expected,
            vec![
                ("sources".to_string(), "{\"sources\":[]}".to_string()),
                ("delta".to_string(), "{\"text\":\"Grüß\"}".to_string()),
                ("done".to_string(), "{}".to_string()),
            ]
        );
        for split in 1..body.len() {
            let mut r = EventReader::default();
            let mut got = r.push(&body.as_bytes()[..split]);
            got.extend(r.push(&body.as_bytes()[split..]));
            assert_eq!(got, expected, "split at {split}");
        }
    }
}

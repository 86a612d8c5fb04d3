//! The JSON log line: `tracing-subscriber`'s JSON event (fields flattened, the current span as
//! `span`, every enclosing span in `spans`) with the fields operators filter on lifted to the top
//! level: `module` and `request_id` from the innermost span that has them, and, when traces are
//! exported, the OpenTelemetry `trace_id` and `span_id` of the span the line was logged in, so a
//! log line leads to its trace in Jaeger and back.

use std::fmt;

use serde_json::{Map, Value};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Fields taken from the enclosing spans when the event itself does not carry them.
const LIFTED: [&str; 2] = ["module", "request_id"];

pub struct JsonLine {
    inner: Format<Json>,
}

impl JsonLine {
    pub fn new() -> Self {
        Self {
            inner: tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(true),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let Ok(Value::Object(mut object)) = serde_json::from_str::<Value>(&line) else {
            return writer.write_str(&line);
        };
        lift_span_fields(&mut object);
        if let Some(span) = ctx.event_scope().and_then(|mut scope| scope.next()) {
            let extensions = span.extensions();
            if let Some(otel) = extensions.get::<tracing_opentelemetry::OtelData>() {
                let ids = otel.trace_id().zip(otel.span_id());
                if let Some((trace_id, span_id)) = ids.filter(|(t, s)| {
                    *t != opentelemetry::TraceId::INVALID && *s != opentelemetry::SpanId::INVALID
                }) {
                    object.insert("trace_id".into(), Value::String(trace_id.to_string()));
                    object.insert("span_id".into(), Value::String(span_id.to_string()));
                }
            }
        }
        writeln!(writer, "{}", Value::Object(object))
    }
}

/// Copies `module` and `request_id` to the top level from the innermost span in `spans` (listed
/// outermost first) that has them, unless the event set them itself.
fn lift_span_fields(object: &mut Map<String, Value>) {
    for field in LIFTED {
        if object.contains_key(field) {
            continue;
        }
        let found = object
            .get("spans")
            .and_then(Value::as_array)
            .and_then(|spans| spans.iter().rev().find_map(|s| s.get(field)))
            .cloned();
        if let Some(value) = found {
            object.insert(field.into(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_innermost_span_wins_and_event_fields_are_kept() {
        let mut line = serde_json::json!({
            "message": "embedded",
            "spans": [
                {"name": "request", "module": "api", "request_id": "outer"},
                {"name": "job", "request_id": "inner"},
                {"name": "embed"}
            ]
        });
        lift_span_fields(line.as_object_mut().unwrap());
        assert_eq!(line["module"], "api");
        assert_eq!(line["request_id"], "inner");

        let mut own = serde_json::json!({
            "module": "ingest",
            "spans": [{"name": "request", "module": "api", "request_id": "r"}]
        });
        lift_span_fields(own.as_object_mut().unwrap());
        assert_eq!(own["module"], "ingest");
        assert_eq!(own["request_id"], "r");

        let mut none = serde_json::json!({"message": "started"});
        lift_span_fields(none.as_object_mut().unwrap());
        assert!(none.get("request_id").is_none() && none.get("module").is_none());
    }
}

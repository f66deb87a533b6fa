//! Validation: a raw JSON value becomes an [`Event`] or a [`ValidationError`] naming the field.
//!
//! Rules: session_id 10..=128 chars, non-empty prompt, `model_version` matching
//! `^v\d+\.\d+\.\d+$`, latency > 0, tokens >= 0, plus bounds on every length, on the timestamp's
//! skew and on the size of `properties`, so one client cannot make the queue or the tables pay
//! for its mistakes. Unknown fields are refused: a typo such as `turn_idx` would otherwise
//! silently change what counts as a duplicate. OpenTelemetry GenAI attribute names are accepted
//! as aliases of the fields they mean.

use serde_json::{Map, Value};

use crate::event::{Event, StreamPart};

/// Bounds applied by [`validate`]; the ingest API exposes each as a flag.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_prompt_bytes: usize,
    pub max_id_chars: usize,
    pub max_latency_ms: f64,
    pub max_future_skew_ms: i64,
    pub max_age_ms: i64,
    pub max_properties_bytes: usize,
    pub max_properties_keys: usize,
    pub max_fallback_chain: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_prompt_bytes: 32 * 1024,
            max_id_chars: 128,
            max_latency_ms: 3_600_000.0,
            max_future_skew_ms: 5 * 60 * 1000,
            max_age_ms: 30 * 24 * 3600 * 1000,
            max_properties_bytes: 8 * 1024,
            max_properties_keys: 64,
            max_fallback_chain: 16,
        }
    }
}

/// Why an event was refused: the field (API name) and a sentence for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    pub field: String,
    pub reason: String,
}

impl ValidationError {
    fn new(field: &str, reason: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}

type Result<T> = std::result::Result<T, ValidationError>;

/// Field names of API v1 and the OpenTelemetry GenAI names accepted for them.
// The reference list (docs and the test of `canonical`).
#[cfg_attr(not(test), allow(dead_code))]
const FIELDS: &[(&str, &[&str])] = &[
    ("session_id", &["gen_ai.conversation.id"]),
    ("prompt_text", &[]),
    ("model_version", &["gen_ai.request.model"]),
    ("latency_ms", &[]),
    ("token_count", &["gen_ai.usage.total_tokens"]),
    ("success", &[]),
    ("timestamp", &[]),
    ("event_id", &[]),
    ("turn_index", &[]),
    ("stream_id", &[]),
    ("chunk_index", &[]),
    ("final", &[]),
    ("fallback_chain", &[]),
    ("input_tokens", &["gen_ai.usage.input_tokens"]),
    ("output_tokens", &["gen_ai.usage.output_tokens"]),
    ("provider", &["gen_ai.provider.name", "gen_ai.system"]),
    ("operation", &["gen_ai.operation.name"]),
    ("properties", &[]),
    ("user_id", &["user.id"]),
    ("model", &[]),
    (
        "cache_read_input_tokens",
        &["gen_ai.usage.cache_read.input_tokens"],
    ),
    (
        "cache_creation_input_tokens",
        &[
            "gen_ai.usage.cache_creation.input_tokens",
            "gen_ai.usage.cache_write.input_tokens",
        ],
    ),
    (
        "reasoning_output_tokens",
        &["gen_ai.usage.reasoning.output_tokens"],
    ),
];

/// The API v1 name of `name` (itself or the field it is an alias of), as [`FIELDS`] lists
/// them: one `match` rather than a scan of the table with a string comparison per name and
/// alias, since it runs for every field of every event (kept equal to the table by a test).
fn canonical(name: &str) -> Option<&'static str> {
    Some(match name {
        "session_id" | "gen_ai.conversation.id" => "session_id",
        "prompt_text" => "prompt_text",
        "model_version" | "gen_ai.request.model" => "model_version",
        "latency_ms" => "latency_ms",
        "token_count" | "gen_ai.usage.total_tokens" => "token_count",
        "success" => "success",
        "timestamp" => "timestamp",
        "event_id" => "event_id",
        "turn_index" => "turn_index",
        "stream_id" => "stream_id",
        "chunk_index" => "chunk_index",
        "final" => "final",
        "fallback_chain" => "fallback_chain",
        "input_tokens" | "gen_ai.usage.input_tokens" => "input_tokens",
        "output_tokens" | "gen_ai.usage.output_tokens" => "output_tokens",
        "provider" | "gen_ai.provider.name" | "gen_ai.system" => "provider",
        "operation" | "gen_ai.operation.name" => "operation",
        "properties" => "properties",
        "user_id" | "user.id" => "user_id",
        "model" => "model",
        "cache_read_input_tokens" | "gen_ai.usage.cache_read.input_tokens" => {
            "cache_read_input_tokens"
        }
        "cache_creation_input_tokens"
        | "gen_ai.usage.cache_creation.input_tokens"
        | "gen_ai.usage.cache_write.input_tokens" => "cache_creation_input_tokens",
        "reasoning_output_tokens" | "gen_ai.usage.reasoning.output_tokens" => {
            "reasoning_output_tokens"
        }
        _ => return None,
    })
}

/// Validates one event received at `now_ms` (milliseconds since the epoch).
pub fn validate(value: &Value, limits: &Limits, now_ms: i64) -> Result<Event> {
    let Value::Object(object) = value else {
        return Err(ValidationError::new("$", "an event must be a JSON object"));
    };
    let fields = Fields::resolve(object)?;

    let session_id = fields
        .id("session_id", 10, limits.max_id_chars)?
        .ok_or_else(|| missing("session_id"))?;
    let prompt_text = fields
        .string("prompt_text")?
        .ok_or_else(|| missing("prompt_text"))?;
    if prompt_text.trim().is_empty() {
        return Err(ValidationError::new("prompt_text", "must not be empty"));
    }
    if prompt_text.len() > limits.max_prompt_bytes {
        return Err(ValidationError::new(
            "prompt_text",
            format!("must be at most {} bytes", limits.max_prompt_bytes),
        ));
    }
    let model = fields.model("model")?;
    // An event that names its provider's model may leave the application's version out (an
    // OpenTelemetry span carries none): it is then empty.
    let model_version = match (fields.string("model_version")?, &model) {
        (Some(version), _) if !is_model_version(&version) => {
            return Err(ValidationError::new(
                "model_version",
                "must match ^v\\d+\\.\\d+\\.\\d+$ (e.g. v1.2.3)",
            ))
        }
        (Some(version), _) => version,
        (None, Some(_)) => String::new(),
        (None, None) => return Err(missing("model_version")),
    };
    let latency_ms = fields
        .number("latency_ms")?
        .ok_or_else(|| missing("latency_ms"))?;
    if !(latency_ms > 0.0 && latency_ms <= limits.max_latency_ms) {
        return Err(ValidationError::new(
            "latency_ms",
            format!(
                "must be greater than 0 and at most {}",
                limits.max_latency_ms
            ),
        ));
    }
    let input_tokens = fields.count("input_tokens")?;
    let cache_read_input_tokens = fields.count("cache_read_input_tokens")?;
    let cache_creation_input_tokens = fields.count("cache_creation_input_tokens")?;
    let reasoning_output_tokens = fields.count("reasoning_output_tokens")?;
    let output_tokens = fields.count("output_tokens")?;
    let token_count = match (fields.count("token_count")?, input_tokens, output_tokens) {
        (Some(total), _, _) => total,
        (None, Some(input), Some(output)) => input.checked_add(output).ok_or_else(|| {
            ValidationError::new("token_count", "input_tokens + output_tokens is too large")
        })?,
        (None, _, _) => return Err(missing("token_count")),
    };
    let success = fields.boolean("success")?.unwrap_or(true);
    let (timestamp_ms, timestamp_given) = match fields.get("timestamp") {
        None | Some(Value::Null) => (now_ms, false),
        Some(v) => (timestamp(v)?, true),
    };
    if timestamp_ms > now_ms + limits.max_future_skew_ms {
        return Err(ValidationError::new(
            "timestamp",
            format!(
                "is more than {} s in the future",
                limits.max_future_skew_ms / 1000
            ),
        ));
    }
    if timestamp_ms < now_ms - limits.max_age_ms {
        return Err(ValidationError::new(
            "timestamp",
            format!("is more than {} days old", limits.max_age_ms / 86_400_000),
        ));
    }

    let event_id = fields.id("event_id", 1, limits.max_id_chars)?;
    let user_id = fields.id("user_id", 1, limits.max_id_chars)?;
    let turn_index = fields.count("turn_index")?;
    let stream = match fields.id("stream_id", 1, limits.max_id_chars)? {
        Some(stream_id) => Some(StreamPart {
            stream_id,
            chunk_index: fields.count("chunk_index")?,
            is_final: fields.boolean("final")?.unwrap_or(false),
        }),
        None => {
            for field in ["chunk_index", "final"] {
                if fields.get(field).is_some() {
                    return Err(ValidationError::new(
                        field,
                        "is only allowed with stream_id",
                    ));
                }
            }
            None
        }
    };
    let fallback_chain = fallback_chain(fields.get("fallback_chain"), limits)?;
    let provider = fields.label("provider")?;
    let operation = fields.label("operation")?;
    let properties = properties(fields.get("properties"), limits)?;

    Ok(Event {
        session_id,
        prompt_text,
        model_version,
        latency_ms,
        token_count,
        success,
        timestamp_ms,
        timestamp_given,
        event_id,
        turn_index,
        stream,
        fallback_chain,
        input_tokens,
        output_tokens,
        provider,
        operation,
        properties,
        user_id,
        model,
        cache_read_input_tokens,
        cache_creation_input_tokens,
        reasoning_output_tokens,
    })
}

fn missing(field: &str) -> ValidationError {
    ValidationError::new(field, "is required")
}

/// The object's fields under their API v1 names, aliases resolved.
struct Fields<'a> {
    values: Vec<(&'static str, &'a Value)>,
}

impl<'a> Fields<'a> {
    fn resolve(object: &'a Map<String, Value>) -> Result<Self> {
        let mut values: Vec<(&'static str, &'a Value)> = Vec::with_capacity(object.len());
        for (name, value) in object {
            let canonical = match canonical(name) {
                // OpenTelemetry's request model is a provider's name (`gpt-4o`) far more
                // often than an application version: it names `model` unless it is one.
                Some("model_version") if name == "gen_ai.request.model" => match value {
                    Value::String(s) if !is_model_version(s) => "model",
                    _ => "model_version",
                },
                Some(canonical) => canonical,
                None => {
                    return Err(ValidationError::new(
                        name,
                        "is not a field of API v1 events",
                    ))
                }
            };
            if values.iter().any(|(seen, _)| *seen == canonical) {
                return Err(ValidationError::new(
                    canonical,
                    "is given twice (under its name and an alias)",
                ));
            }
            values.push((canonical, value));
        }
        Ok(Self { values })
    }

    fn get(&self, field: &str) -> Option<&'a Value> {
        self.values
            .iter()
            .find(|(name, _)| *name == field)
            .map(|(_, v)| *v)
    }

    fn string(&self, field: &str) -> Result<Option<String>> {
        match self.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ValidationError::new(field, "must be a string")),
        }
    }

    /// An identifier: a string of `min..=max` characters without control characters.
    fn id(&self, field: &str, min: usize, max: usize) -> Result<Option<String>> {
        let Some(s) = self.string(field)? else {
            return Ok(None);
        };
        // ASCII (the usual case) in one pass over bytes: a character per byte, and its control
        // characters are those below 0x20 and 0x7f.
        let (chars, control) = if s.is_ascii() {
            (s.len(), s.bytes().any(|b| b < 0x20 || b == 0x7f))
        } else {
            (s.chars().count(), s.chars().any(char::is_control))
        };
        if chars < min || chars > max {
            return Err(ValidationError::new(
                field,
                format!("must be {min} to {max} characters long"),
            ));
        }
        if control {
            return Err(ValidationError::new(
                field,
                "must not contain control characters",
            ));
        }
        Ok(Some(s))
    }

    /// A short name such as a provider: 1 to 64 characters.
    /// A model name ([`is_model_name`]).
    fn model(&self, field: &str) -> Result<Option<String>> {
        match self.string(field)? {
            Some(name) if !is_model_name(&name) => Err(ValidationError::new(
                field,
                "must be 1 to 128 letters, digits and . _ - : / @ + (e.g. gpt-4o-mini)",
            )),
            name => Ok(name),
        }
    }

    fn label(&self, field: &str) -> Result<Option<String>> {
        self.id(field, 1, 64)
    }

    fn number(&self, field: &str) -> Result<Option<f64>> {
        match self.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_f64()
                .filter(|f| f.is_finite())
                .map(Some)
                .ok_or_else(|| ValidationError::new(field, "must be a finite number")),
            Some(_) => Err(ValidationError::new(field, "must be a number")),
        }
    }

    /// A whole number from 0 to u32::MAX.
    fn count(&self, field: &str) -> Result<Option<u32>> {
        match self.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| {
                    ValidationError::new(field, "must be a whole number from 0 to 4294967295")
                }),
            Some(_) => Err(ValidationError::new(field, "must be a whole number")),
        }
    }

    fn boolean(&self, field: &str) -> Result<Option<bool>> {
        match self.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ValidationError::new(field, "must be true or false")),
        }
    }
}

/// The provider's model name (`gpt-4o-mini`, `claude-sonnet-4-5`,
/// `anthropic.claude-3-5-sonnet-20240620-v1:0`, `meta-llama/Llama-3.1-8B-Instruct`): 1 to 128
/// ASCII letters, digits and `.`, `_`, `-`, `:`, `/`, `@`, `+`.
pub fn is_model_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/@+".contains(&b))
}

/// `^v\d+\.\d+\.\d+$`, each number at most 9 digits.
pub fn is_model_version(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('v') else {
        return false;
    };
    // Exactly three parts, without collecting them (this runs for every event).
    let mut parts = rest.split('.');
    let part_ok = |p: Option<&str>| {
        p.is_some_and(|p| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    part_ok(parts.next())
        && part_ok(parts.next())
        && part_ok(parts.next())
        && parts.next().is_none()
}

/// Epoch seconds (integer or fractional) or an RFC 3339 string, as epoch milliseconds.
fn timestamp(value: &Value) -> Result<i64> {
    let bad = || {
        ValidationError::new(
            "timestamp",
            "must be epoch seconds or an RFC 3339 date-time",
        )
    };
    match value {
        Value::Number(n) => {
            let secs = n
                .as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && *f < 1e11)
                .ok_or_else(bad)?;
            Ok((secs * 1000.0).round() as i64)
        }
        Value::String(s) => crate::clock::parse_rfc3339_ms(s).ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn fallback_chain(value: Option<&Value>, limits: &Limits) -> Result<Vec<String>> {
    let field = "fallback_chain";
    let items = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(ValidationError::new(
                field,
                "must be an array of model names",
            ))
        }
    };
    if items.len() > limits.max_fallback_chain {
        return Err(ValidationError::new(
            field,
            format!("must list at most {} models", limits.max_fallback_chain),
        ));
    }
    items
        .iter()
        .map(|item| match item {
            Value::String(s)
                if !s.is_empty() && s.chars().count() <= 64 && !s.chars().any(char::is_control) =>
            {
                Ok(s.clone())
            }
            _ => Err(ValidationError::new(
                field,
                "must hold model names of 1 to 64 characters",
            )),
        })
        .collect()
}

/// A flat object (string, number, boolean or null values), kept as compact JSON.
fn properties(value: Option<&Value>, limits: &Limits) -> Result<Option<String>> {
    let field = "properties";
    let object = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(object)) => object,
        Some(_) => return Err(ValidationError::new(field, "must be a JSON object")),
    };
    if object.len() > limits.max_properties_keys {
        return Err(ValidationError::new(
            field,
            format!("must have at most {} keys", limits.max_properties_keys),
        ));
    }
    if let Some((key, _)) = object.iter().find(|(_, v)| v.is_object() || v.is_array()) {
        return Err(ValidationError::new(
            field,
            format!("must be flat: the value of {key:?} is nested"),
        ));
    }
    let text = Value::Object(object.clone()).to_string();
    if text.len() > limits.max_properties_bytes {
        return Err(ValidationError::new(
            field,
            format!(
                "must be at most {} bytes as JSON",
                limits.max_properties_bytes
            ),
        ));
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::{canonical, is_model_version, FIELDS};

    #[test]
    fn the_field_match_agrees_with_the_table() {
        for (field, aliases) in FIELDS {
            assert_eq!(canonical(field), Some(*field));
            for alias in *aliases {
                assert_eq!(canonical(alias), Some(*field), "{alias}");
            }
        }
        for other in ["", "turn_idx", "Session_id", "gen_ai.usage", "session_id "] {
            assert_eq!(canonical(other), None, "{other:?}");
        }
    }

    #[test]
    fn model_versions_have_three_numbers() {
        for ok in ["v1.2.3", "v0.0.0", "v123456789.1.1"] {
            assert!(is_model_version(ok), "{ok}");
        }
        for bad in [
            "1.2.3",
            "v1.2",
            "v1.2.3.4",
            "v1..3",
            "v1.2.",
            "v1234567890.1.1",
            "v1.2.x",
            "v",
            "v..",
        ] {
            assert!(!is_model_version(bad), "{bad}");
        }
    }
}

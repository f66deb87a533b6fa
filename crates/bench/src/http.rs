//! Talking to sift-ingest: one `reqwest::Client` for the whole run (keep-alive, a connection
//! per request in flight), one request at a time, and its answer read into one outcome per
//! event, or a failure that says whether the events' fate is unknown (5xx, timeouts, broken
//! connections: the server may have taken them) or known (4xx, no connection: it did not).

use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::{Client, Url};
use serde::Deserialize;

use crate::body::{self, Format};

/// What the server said about one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    DuplicateIntent,
    DuplicateEventId,
    StreamChunk,
    /// Collapsed for a reason this tool does not know (a newer server).
    OtherCollapsed,
    Rejected,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Accepted,
        Outcome::DuplicateIntent,
        Outcome::DuplicateEventId,
        Outcome::StreamChunk,
        Outcome::OtherCollapsed,
        Outcome::Rejected,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The server's word: `accepted`, the `reason` of a collapsed event, or `rejected`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::DuplicateIntent => "duplicate_intent",
            Self::DuplicateEventId => "duplicate_event_id",
            Self::StreamChunk => "stream_chunk",
            Self::OtherCollapsed => "other",
            Self::Rejected => "rejected",
        }
    }

    pub fn is_collapsed(self) -> bool {
        matches!(
            self,
            Self::DuplicateIntent
                | Self::DuplicateEventId
                | Self::StreamChunk
                | Self::OtherCollapsed
        )
    }
}

/// A request that got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// An error status, with the start of its body.
    Status {
        code: u16,
        body: String,
    },
    Timeout,
    /// No connection: nothing was sent.
    Connect(String),
    /// The connection broke during the request.
    Transport(String),
    /// A 2xx answer this tool cannot read, or with the wrong number of results.
    BadAnswer(String),
}

impl Failure {
    /// The failure's name in the counts: `http_429`, `timeout`, `connect`, ...
    pub fn key(&self) -> String {
        match self {
            Self::Status { code, .. } => format!("http_{code}"),
            Self::Timeout => "timeout".into(),
            Self::Connect(_) => "connect".into(),
            Self::Transport(_) => "transport".into(),
            Self::BadAnswer(_) => "bad_answer".into(),
        }
    }

    /// Whether the server may have taken the events anyway.
    pub fn unknown_outcome(&self) -> bool {
        match self {
            Self::Status { code, .. } => *code >= 500,
            Self::Connect(_) => false,
            Self::Timeout | Self::Transport(_) | Self::BadAnswer(_) => true,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::Status { code, body } => format!("HTTP {code}: {body}"),
            Self::Timeout => "no answer within --timeout".into(),
            Self::Connect(e) | Self::Transport(e) | Self::BadAnswer(e) => e.clone(),
        }
    }
}

/// A readable answer: one outcome per event, and the first rejection's field and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub outcomes: Vec<Outcome>,
    pub rejection: Option<String>,
}

pub struct Sender {
    client: Client,
    url: Url,
    /// `Bearer <key>`, one per tenant.
    auth: Vec<HeaderValue>,
    content_type: HeaderValue,
    format: Format,
    gzip: bool,
}

impl Sender {
    pub fn new(
        base: &Url,
        keys: &[String],
        format: Format,
        gzip: bool,
        concurrency: usize,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let client = Client::builder()
            .pool_max_idle_per_host(concurrency)
            .tcp_nodelay(true)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .no_proxy()
            .no_gzip()
            .http1_only()
            .user_agent(concat!("sift-bench/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let auth = keys
            .iter()
            .map(|key| {
                let mut value = HeaderValue::try_from(format!("Bearer {key}"))?;
                value.set_sensitive(true);
                Ok(value)
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            client,
            url: endpoint(base, format.path()),
            auth,
            content_type: HeaderValue::from_static(format.content_type()),
            format,
            gzip,
        })
    }

    /// The body as it goes on the wire (compressed with `--gzip`); done before the clock of a
    /// closed-loop request starts.
    pub fn encode(&self, body: Vec<u8>) -> Result<Vec<u8>, Failure> {
        if self.gzip {
            body::gzip(&body).map_err(|e| Failure::BadAnswer(format!("gzip failed: {e}")))
        } else {
            Ok(body)
        }
    }

    /// Sends one request of `events` events for tenant number `tenant`.
    pub async fn send(
        &self,
        tenant: usize,
        body: Vec<u8>,
        events: usize,
    ) -> Result<Answered, Failure> {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(AUTHORIZATION, self.auth[tenant].clone())
            .header(CONTENT_TYPE, self.content_type.clone());
        if self.gzip {
            request = request.header(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        let response = request.body(body).send().await.map_err(failure)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(failure)?;
        let single = self.format == Format::Single;
        match status {
            200..=299 if single => parse_one(&bytes),
            200..=299 => parse_batch(&bytes, events),
            // An event refused as invalid: a definite answer about it, not a failed request.
            422 if single => Ok(Answered {
                outcomes: vec![Outcome::Rejected],
                rejection: parse_one(&bytes)
                    .ok()
                    .and_then(|a| a.rejection)
                    .or_else(|| Some(snippet(&bytes))),
            }),
            code => Err(Failure::Status {
                code,
                body: snippet(&bytes),
            }),
        }
    }
}

/// `base` with `path` appended to its path (a base behind a proxy may have a prefix).
pub fn endpoint(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let joined = format!("{}{path}", base.path().trim_end_matches('/'));
    url.set_path(&joined);
    url
}

fn failure(error: reqwest::Error) -> Failure {
    if error.is_timeout() {
        Failure::Timeout
    } else if error.is_connect() {
        Failure::Connect(chain(&error))
    } else {
        Failure::Transport(chain(&error))
    }
}

/// An error and its causes, `: `-separated (reqwest's own message hides the cause).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]);
    text.trim().to_owned()
}

#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow)]
    status: &'a str,
    #[serde(borrow, default)]
    reason: Option<&'a str>,
    #[serde(borrow, default)]
    field: Option<&'a str>,
}

#[derive(Deserialize)]
struct BatchAnswer<'a> {
    #[serde(borrow)]
    results: Vec<Answer<'a>>,
}

fn outcome(answer: &Answer<'_>) -> Result<Outcome, Failure> {
    Ok(match (answer.status, answer.reason) {
        ("accepted", _) => Outcome::Accepted,
        ("collapsed", Some("duplicate_intent")) => Outcome::DuplicateIntent,
        ("collapsed", Some("duplicate_event_id")) => Outcome::DuplicateEventId,
        ("collapsed", Some("stream_chunk")) => Outcome::StreamChunk,
        ("collapsed", _) => Outcome::OtherCollapsed,
        ("rejected", _) => Outcome::Rejected,
        (other, _) => {
            return Err(Failure::BadAnswer(format!(
                "an event's status is {other:?}"
            )))
        }
    })
}

fn rejection(answer: &Answer<'_>) -> Option<String> {
    (answer.status == "rejected").then(|| {
        format!(
            "{}: {}",
            answer.field.unwrap_or("?"),
            answer.reason.unwrap_or("no reason given")
        )
    })
}

fn parse_one(bytes: &[u8]) -> Result<Answered, Failure> {
    let answer: Answer<'_> = serde_json::from_slice(bytes)
        .map_err(|e| Failure::BadAnswer(format!("unreadable answer ({e}): {}", snippet(bytes))))?;
    Ok(Answered {
        outcomes: vec![outcome(&answer)?],
        rejection: rejection(&answer),
    })
}

fn parse_batch(bytes: &[u8], events: usize) -> Result<Answered, Failure> {
    let answer: BatchAnswer<'_> = serde_json::from_slice(bytes).map_err(|e| {
        Failure::BadAnswer(format!("unreadable batch answer ({e}): {}", snippet(bytes)))
    })?;
    if answer.results.len() != events {
        return Err(Failure::BadAnswer(format!(
            "{} results for {events} events",
            answer.results.len()
        )));
    }
    Ok(Answered {
        outcomes: answer
            .results
            .iter()
            .map(outcome)
            .collect::<Result<_, _>>()?,
        rejection: answer.results.iter().find_map(rejection),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_become_outcomes() {
        assert_eq!(
            parse_one(br#"{"status":"accepted","semantic_key":"ab"}"#).map(|a| a.outcomes),
            Ok(vec![Outcome::Accepted])
        );
        let batch = br#"{"accepted":1,"collapsed":3,"rejected":1,"results":[
            {"status":"accepted","semantic_key":"a"},
            {"status":"collapsed","semantic_key":"a","reason":"duplicate_intent"},
            {"status":"collapsed","semantic_key":"a","reason":"duplicate_event_id"},
            {"status":"collapsed","semantic_key":"a","reason":"stream_chunk"},
            {"status":"rejected","error":"invalid_event","field":"latency_ms","reason":"must be > 0"}]}"#;
        let answered = parse_batch(batch, 5).unwrap();
        assert_eq!(
            answered.outcomes,
            vec![
                Outcome::Accepted,
                Outcome::DuplicateIntent,
                Outcome::DuplicateEventId,
                Outcome::StreamChunk,
                Outcome::Rejected
            ]
        );
        assert_eq!(
            answered.rejection.as_deref(),
            Some("latency_ms: must be > 0")
        );
        assert!(matches!(parse_batch(batch, 4), Err(Failure::BadAnswer(_))));
        assert!(matches!(parse_one(b"<html>"), Err(Failure::BadAnswer(_))));
    }

    #[test]
    fn failures_know_whether_the_outcome_is_unknown() {
        let status = |code| Failure::Status {
            code,
            body: String::new(),
        };
        assert!(!status(429).unknown_outcome());
        assert!(status(503).unknown_outcome());
        assert!(Failure::Timeout.unknown_outcome());
        assert!(!Failure::Connect("refused".into()).unknown_outcome());
        assert_eq!(status(429).key(), "http_429");
    }

    #[test]
    fn endpoints_keep_a_base_path() {
        let base = Url::parse("http://h:8080/sift/").unwrap();
        assert_eq!(
            endpoint(&base, "/v1/ai/events").as_str(),
            "http://h:8080/sift/v1/ai/events"
        );
        let base = Url::parse("http://h:8080").unwrap();
        assert_eq!(
            endpoint(&base, "/v1/ai/events/batch").as_str(),
            "http://h:8080/v1/ai/events/batch"
        );
    }
}

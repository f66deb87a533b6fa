//! Talking to sift-ingest: a kept-alive HTTP/1.1 connection per request slot (wrk's model),
//! one request at a time on each, and its answer read into one outcome per event, or a
//! failure that says whether the events' fate is unknown (5xx, timeouts, broken connections:
//! the server may have taken them) or known (4xx, no connection: it did not).
//!
//! hyper's connection API directly, not reqwest's pooled client: on this 2-core machine
//! reqwest spent about 28 µs of CPU per request against a server that answers at once
//! (re-parsing the URL of every response, tower layers, the pool), which caps a core at some
//! 26,000 single requests/s; a connection per slot costs a fraction of that. reqwest stays
//! for the few ClickHouse queries.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use reqwest::Url;
use serde::Deserialize;
use tokio::net::TcpStream;

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

/// How long a request slot waits after its connection was refused.
const CONNECT_BACKOFF: Duration = Duration::from_millis(100);

const USER_AGENT_VALUE: &str = concat!("sift-bench/", env!("CARGO_PKG_VERSION"));

/// A readable answer: one outcome per event, and the first rejection's field and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub outcomes: Vec<Outcome>,
    pub rejection: Option<String>,
}

/// One connection of the run (a request slot): opened on first use, kept alive, opened
/// again after an error.
#[derive(Default)]
pub struct Connection(Option<SendRequest<Full<Bytes>>>);

/// Sends the run's requests to one sift-ingest.
pub struct Sender {
    /// The host's addresses, tried in turn (`localhost` may list `::1` before 127.0.0.1).
    addrs: Vec<SocketAddr>,
    host: HeaderValue,
    path: Uri,
    /// `Bearer <key>`, one per tenant.
    auth: Vec<HeaderValue>,
    content_type: HeaderValue,
    format: Format,
    gzip: bool,
    timeout: Duration,
}

impl Sender {
    /// Resolves the URL's host once.
    pub async fn new(
        base: &Url,
        keys: &[String],
        format: Format,
        gzip: bool,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let host = base.host_str().context("the URL has no host")?;
        let port = base.port_or_known_default().unwrap_or(80);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .collect();
        anyhow::ensure!(!addrs.is_empty(), "{host} has no address");
        let authority = match base.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let auth = keys
            .iter()
            .map(|key| {
                let mut value = HeaderValue::try_from(format!("Bearer {key}"))?;
                value.set_sensitive(true);
                Ok(value)
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            addrs,
            host: HeaderValue::try_from(authority)?,
            path: Uri::try_from(endpoint(base, format.path()).path())?,
            auth,
            content_type: HeaderValue::from_static(format.content_type()),
            format,
            gzip,
            timeout,
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

    fn request(&self, tenant: usize, body: Bytes) -> Result<Request<Full<Bytes>>, Failure> {
        let mut builder = Request::post(self.path.clone())
            .header(HOST, self.host.clone())
            .header(AUTHORIZATION, self.auth[tenant].clone())
            .header(CONTENT_TYPE, self.content_type.clone())
            .header(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        if self.gzip {
            builder = builder.header(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        builder
            .body(Full::new(body))
            .map_err(|e| Failure::BadAnswer(format!("building the request: {e}")))
    }

    /// Sends one request of `events` events for tenant number `tenant` on `connection`,
    /// all of it (connecting included) within `--timeout`.
    pub async fn send(
        &self,
        connection: &mut Connection,
        tenant: usize,
        body: Vec<u8>,
        events: usize,
    ) -> Result<Answered, Failure> {
        let request = self.request(tenant, Bytes::from(body))?;
        match tokio::time::timeout(self.timeout, self.exchange(connection, request, events)).await {
            Ok(result) => result,
            Err(_) => {
                // The request was cut mid-way: its connection cannot be used again.
                connection.0 = None;
                Err(Failure::Timeout)
            }
        }
    }

    async fn exchange(
        &self,
        connection: &mut Connection,
        mut request: Request<Full<Bytes>>,
        events: usize,
    ) -> Result<Answered, Failure> {
        // A kept-alive connection the server closed meanwhile gives the request back unsent:
        // it is sent once more, on a new connection.
        for attempt in 0..2 {
            let sender = match connection.0.as_mut() {
                Some(sender) if !sender.is_closed() => sender,
                _ => connection.0.insert(self.connect().await?),
            };
            if sender.ready().await.is_err() {
                connection.0 = None;
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let result = self.read(response, events).await;
                    // An answer read whole leaves the connection usable, whatever it said.
                    if matches!(result, Err(Failure::Transport(_))) {
                        connection.0 = None;
                    }
                    return result;
                }
                Err(mut error) => {
                    connection.0 = None;
                    match error.take_message() {
                        Some(unsent) if attempt == 0 => request = unsent,
                        _ => return Err(Failure::Transport(chain(error.error()))),
                    }
                }
            }
        }
        Err(Failure::Connect(format!(
            "the connection to {} closed before the request could be sent",
            self.addrs[0]
        )))
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Failure> {
        let stream = match TcpStream::connect(&self.addrs[..]).await {
            Ok(stream) => stream,
            Err(error) => {
                // A refused connection holds its slot a while: a server that is down is
                // not hammered by a busy loop of failures (nor the counts flooded).
                tokio::time::sleep(CONNECT_BACKOFF).await;
                return Err(Failure::Connect(format!(
                    "connecting to {}: {error}",
                    self.addrs[0]
                )));
            }
        };
        // Small requests must leave at once, not wait for the previous one's ACK.
        stream
            .set_nodelay(true)
            .map_err(|e| Failure::Connect(format!("TCP_NODELAY: {e}")))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::Connect(chain(&e)))?;
        // The connection's I/O runs on its own task, until the sender is dropped.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(sender)
    }

    async fn read(&self, response: Response<Incoming>, events: usize) -> Result<Answered, Failure> {
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Failure::Transport(chain(&e)))?
            .to_bytes();
        let single = self.format == Format::Single;
        match status {
            200..=299 if self.format == Format::Otlp => parse_otlp(&bytes, events),
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

/// An `ExportTraceServiceResponse`: no partial success means every span was taken; else its
/// `rejected_spans` are counted as the request's last spans (OTLP does not say which), with
/// its message as the rejection. A taken span is `Accepted`: OTLP does not tell a collapsed
/// one apart.
fn parse_otlp(bytes: &[u8], events: usize) -> Result<Answered, Failure> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    use prost::Message;
    let answer = ExportTraceServiceResponse::decode(bytes).map_err(|e| {
        Failure::BadAnswer(format!("unreadable OTLP answer ({e}): {}", snippet(bytes)))
    })?;
    let (rejected, message) = answer
        .partial_success
        .map_or((0, String::new()), |p| (p.rejected_spans, p.error_message));
    let rejected = usize::try_from(rejected)
        .ok()
        .filter(|r| *r <= events)
        .ok_or_else(|| Failure::BadAnswer(format!("{rejected} spans rejected of {events}")))?;
    let mut outcomes = vec![Outcome::Accepted; events - rejected];
    outcomes.resize(events, Outcome::Rejected);
    Ok(Answered {
        outcomes,
        rejection: (rejected > 0).then_some(message),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_answers_count_the_rejected_spans() {
        use opentelemetry_proto::tonic::collector::trace::v1::{
            ExportTracePartialSuccess, ExportTraceServiceResponse,
        };
        use prost::Message;
        // Every span taken: an empty message, no bytes.
        assert_eq!(
            parse_otlp(b"", 3),
            Ok(Answered {
                outcomes: vec![Outcome::Accepted; 3],
                rejection: None
            })
        );
        let partial = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 2,
                error_message: "2 of 3 spans rejected: 2 not a GenAI span".into(),
            }),
        }
        .encode_to_vec();
        assert_eq!(
            parse_otlp(&partial, 3),
            Ok(Answered {
                outcomes: vec![Outcome::Accepted, Outcome::Rejected, Outcome::Rejected],
                rejection: Some("2 of 3 spans rejected: 2 not a GenAI span".into())
            })
        );
        assert!(matches!(
            parse_otlp(&partial, 1),
            Err(Failure::BadAnswer(_))
        ));
        assert!(matches!(
            parse_otlp(b"\xff\xff", 1),
            Err(Failure::BadAnswer(_))
        ));
    }

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

//! The answers of `/healthz`, `/readyz` and `/metrics`, the same for every sift binary, so that
//! probes and scrapers see one format: `/readyz` is 200 `{"status":"ready", <dependency>:"ok"}`
//! or 503 `{"status":"not_ready", <dependency>:<why>}`.

use actix_web::HttpResponse;
use serde_json::{json, Map, Value};

/// `/healthz`: the process answers.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// `/metrics`: Prometheus text, as rendered by the binary's recorder.
pub fn metrics(text: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text)
}

/// A `/readyz` answer, built from each dependency's probe.
#[derive(Debug, Default)]
pub struct Readiness {
    body: Map<String, Value>,
    failed: bool,
}

impl Readiness {
    /// Records `dependency` as `"ok"`, or as its error (and the answer as not ready).
    pub fn check<T, E: std::fmt::Display>(
        mut self,
        dependency: &str,
        probe: &Result<T, E>,
    ) -> Self {
        let shown = match probe {
            Ok(_) => "ok".to_owned(),
            Err(error) => {
                self.failed = true;
                error.to_string()
            }
        };
        self.body.insert(dependency.to_owned(), shown.into());
        self
    }

    /// Adds a field for people (a queue depth, say) that does not decide readiness.
    pub fn detail(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.body.insert(name.to_owned(), value.into());
        self
    }

    pub fn is_ready(&self) -> bool {
        !self.failed
    }

    pub fn response(mut self) -> HttpResponse {
        let ready = self.is_ready();
        let status = if ready { "ready" } else { "not_ready" };
        self.body.insert("status".to_owned(), status.into());
        let body = Value::Object(self.body);
        if ready {
            HttpResponse::Ok().json(body)
        } else {
            HttpResponse::ServiceUnavailable().json(body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failed_probe_makes_the_answer_not_ready_and_says_why() {
        let ok: Result<(), String> = Ok(());
        let down: Result<(), String> = Err("connection refused".into());
        let ready = Readiness::default().check("redis", &ok).detail("depth", 3);
        assert!(ready.is_ready());
        assert_eq!(ready.body["redis"], "ok");
        assert_eq!(ready.body["depth"], 3);
        let not = Readiness::default()
            .check("redis", &ok)
            .check("postgres", &down);
        assert!(!not.is_ready());
        assert_eq!(not.body["postgres"], "connection refused");
        assert_eq!(not.response().status(), 503);
    }
}

//! A thin HTTP client for the command-line commands.

use std::time::Duration;

use anyhow::{Result, anyhow};
use reqwest::{Method, Response};
use serde_json::Value;

/// Attempts of one produce request before [`Client::produce`] gives up.
pub const PRODUCE_ATTEMPTS: u32 = 5;

/// A fresh idempotency key prefix for one run of a command: keys of
/// different runs never collide.
pub fn idempotency_prefix(command: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{command}-{}-{nanos:x}", std::process::id())
}

/// Talks to one Strata server.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// `STRATA_TOKEN`, sent as a bearer token (an environment variable,
    /// not a flag: flags show in `ps` and shell history).
    token: Option<String>,
}

impl Client {
    /// A client of `server` (`http://` or `https://`). `STRATA_CA_CERT`
    /// names a PEM file of extra certificate authorities to trust (a
    /// self-signed server certificate, a private CA).
    pub fn new(server: &str) -> Result<Self> {
        let mut builder = reqwest::Client::builder().pool_max_idle_per_host(64);
        if let Some(path) = std::env::var_os("STRATA_CA_CERT").filter(|p| !p.is_empty()) {
            let pem = std::fs::read(&path)
                .map_err(|e| anyhow!("cannot read STRATA_CA_CERT {}: {e}", path.display()))?;
            for certificate in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| anyhow!("STRATA_CA_CERT {}: {e}", path.display()))?
            {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder.build()?;
        Ok(Self {
            http,
            base: server.trim_end_matches('/').to_string(),
            token: std::env::var("STRATA_TOKEN").ok().filter(|t| !t.is_empty()),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, self.url(path));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends and turns a non-2xx answer into an error carrying the API's message.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<Response> {
        self.check(request.send().await).await
    }

    /// A sent request's outcome as [`Self::send`] reports it.
    async fn check(&self, outcome: reqwest::Result<Response>) -> Result<Response> {
        let response = outcome.map_err(|e| anyhow!("cannot reach {}: {e}", self.base))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let detail = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| {
                let e = v.get("error")?;
                Some(format!(
                    "{} ({})",
                    e.get("message")?.as_str()?,
                    e.get("code")?.as_str()?
                ))
            })
            .unwrap_or(body);
        Err(anyhow!("{status}: {detail}"))
    }

    /// POSTs a produce body with `Idempotency-Key: key`, retrying what may
    /// have failed part-way (no answer, `5xx`, `429`) with the same key and
    /// body, so that a retry never writes a record twice (API.md,
    /// "Idempotent produce"). Waits `Retry-After` when given, else backs
    /// off from 100 ms; gives up after [`PRODUCE_ATTEMPTS`] attempts.
    pub async fn produce(
        &self,
        path: &str,
        content_type: &str,
        body: bytes::Bytes,
        key: &str,
    ) -> Result<Response> {
        let mut backoff = Duration::from_millis(100);
        for attempt in 1.. {
            let last = attempt >= PRODUCE_ATTEMPTS;
            let request = self
                .request(Method::POST, path)
                .header("content-type", content_type)
                .header("idempotency-key", key)
                .body(body.clone());
            let wait = match request.send().await {
                Ok(r) if !last && (r.status().is_server_error() || r.status().as_u16() == 429) => r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .map(Duration::from_secs),
                Err(_) if !last => None,
                outcome => return self.check(outcome).await,
            };
            tokio::time::sleep(wait.unwrap_or(backoff).min(Duration::from_secs(10))).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        unreachable!("the last attempt returns")
    }

    /// GET returning JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value> {
        Ok(self
            .send(self.request(Method::GET, path))
            .await?
            .json()
            .await?)
    }

    /// The sum of the samples in the server's `/metrics` whose line starts
    /// with `name` and contains `label`; `None` when there is none.
    pub async fn metric(&self, name: &str, label: &str) -> Result<Option<f64>> {
        let text = self
            .send(self.request(Method::GET, "/metrics"))
            .await?
            .text()
            .await?;
        let values: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(name) && l.contains(label))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .collect();
        Ok((!values.is_empty()).then(|| values.iter().sum()))
    }
}

//! A thin HTTP client for the command-line commands.

use anyhow::{Result, anyhow};
use reqwest::{Method, Response};
use serde_json::Value;

/// Talks to one Strata server.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    pub fn new(server: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Self {
            http,
            base: server.trim_end_matches('/').to_string(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }

    /// Sends and turns a non-2xx answer into an error carrying the API's message.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<Response> {
        let response = request
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach {}: {e}", self.base))?;
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

    /// GET returning JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value> {
        Ok(self
            .send(self.request(Method::GET, path))
            .await?
            .json()
            .await?)
    }
}

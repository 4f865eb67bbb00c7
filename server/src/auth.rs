//! Who may do what (API.md "Security"): bearer tokens checked on every
//! request but `GET /health` and `GET /openapi.json`, and the one table of the permission each
//! route needs ([`route_need`]).
//!
//! With authentication off (the default) every request is allowed, as
//! before. With it on, a request without a known token is `401
//! unauthorized` (with `WWW-Authenticate: Bearer`) and one whose token
//! lacks the permission `403 forbidden`, both before the handler runs, so
//! a refused request reads and writes nothing. Handlers check what the
//! route alone cannot say: the topics a SQL query or view reads, the topics
//! of a group commit, which topics a listing shows.
//!
//! Permissions are per topic name, checked before the topic is looked up,
//! so a forbidden topic and an unknown one get the same `403`: no name
//! leaks. Tokens live cluster-wide in the control store
//! (`strata_cluster::tokens`); each node keeps a copy, refreshed every
//! [`REFRESH_EVERY`](crate::periodic::REFRESH_EVERY) and at once after its own changes. No token appears
//! in a log line, a metric or an error message.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::RwLock;
use strata_cluster::tokens::{Permission, Quota, Token, TokenHash, TokenList, TokenRecord};
use strata_cluster::{ClusterError, ControlStore};
use tokio::sync::watch;

use crate::api_error::ApiError;
use crate::membership::Membership;
use crate::periodic::{Messages, refresh_every};

/// Whether and how requests are authenticated.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// `[auth] enabled` / `--auth`.
    pub enabled: bool,
    /// `STRATA_BOOTSTRAP_TOKEN`: an admin token that needs no store.
    pub bootstrap: Option<Token>,
}

/// Who sent a request.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Authentication is off: everything is allowed.
    Open,
    /// A token, by name, with its permissions.
    Token {
        name: String,
        permissions: Vec<Permission>,
        quota: Quota,
    },
    /// Another node of the cluster (heartbeats).
    Node,
}

/// What a route needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need<'a> {
    /// Any known token.
    Authenticated,
    Admin,
    Produce(&'a str),
    Consume(&'a str),
    /// Produce or consume (describing a topic).
    ProduceOrConsume(&'a str),
    Query,
    /// Another node (or an admin).
    Node,
}

impl Principal {
    fn permissions(&self) -> &[Permission] {
        match self {
            Self::Token { permissions, .. } => permissions,
            Self::Open | Self::Node => &[],
        }
    }

    fn is_admin(&self) -> bool {
        matches!(self, Self::Open) || self.permissions().contains(&Permission::Admin)
    }

    /// Whether the caller may consume `topic`.
    pub fn may_consume(&self, topic: &str) -> bool {
        self.is_admin()
            || self
                .permissions()
                .iter()
                .any(|p| matches!(p, Permission::Consume(glob) if glob.matches(topic)))
    }

    /// Whether the caller may produce to `topic`.
    pub fn may_produce(&self, topic: &str) -> bool {
        self.is_admin()
            || self
                .permissions()
                .iter()
                .any(|p| matches!(p, Permission::Produce(glob) if glob.matches(topic)))
    }

    /// Whether the caller has `need`.
    pub fn may(&self, need: Need<'_>) -> bool {
        match need {
            Need::Authenticated => true,
            Need::Admin => self.is_admin(),
            Need::Produce(topic) => self.may_produce(topic),
            Need::Consume(topic) => self.may_consume(topic),
            Need::ProduceOrConsume(topic) => self.may_produce(topic) || self.may_consume(topic),
            Need::Query => self.is_admin() || self.permissions().contains(&Permission::Query),
            Need::Node => matches!(self, Self::Node) || self.is_admin(),
        }
    }

    /// `403 forbidden` unless the caller has `need`.
    pub fn require(&self, need: Need<'_>) -> Result<(), ApiError> {
        if self.may(need) {
            return Ok(());
        }
        Err(ApiError::forbidden(match need {
            Need::Produce(topic) => format!("this token may not produce to topic {topic:?}"),
            Need::Consume(topic) => format!("this token may not consume topic {topic:?}"),
            Need::ProduceOrConsume(topic) => format!("this token may not use topic {topic:?}"),
            Need::Query => "this token may not run SQL or use views".into(),
            Need::Admin | Need::Node | Need::Authenticated => "this needs an admin token".into(),
        }))
    }

    /// `403 forbidden` unless the caller may consume every topic named.
    pub fn require_consume_all<'a>(
        &self,
        topics: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), ApiError> {
        for topic in topics {
            self.require(Need::Consume(topic))?;
        }
        Ok(())
    }
}

/// The permission each route needs, by method and route template, with
/// the route's path parameters: the one table of the API's permissions.
/// `None` for the public routes: `GET /health` and `GET /openapi.json`
/// (the API's description, the same for everyone, naming no topic).
pub fn route_need<'a>(method: &Method, route: &str, topic: Option<&'a str>) -> Option<Need<'a>> {
    let topic = topic.unwrap_or_default();
    // HEAD runs the GET handler: it needs what GET needs.
    let method = if method == Method::HEAD {
        "GET"
    } else {
        method.as_str()
    };
    let need = match (method, route) {
        ("GET", "/health" | "/openapi.json") => return None,
        ("POST", "/v1/topics") => Need::Admin,
        ("DELETE", "/v1/topics/{topic}") => Need::Admin,
        ("GET", "/v1/topics/{topic}") => Need::ProduceOrConsume(topic),
        ("POST", "/v1/topics/{topic}/records") => Need::Produce(topic),
        ("GET", "/v1/topics/{topic}/partitions/{partition}/records")
        | ("GET", "/v1/topics/{topic}/partitions/{partition}/offset")
        | ("GET", "/v1/topics/{topic}/range")
        | ("GET", "/v1/topics/{topic}/snapshot") => Need::Consume(topic),
        ("POST", "/v1/topics/{topic}/tiering/run") => Need::Admin,
        ("POST", "/v1/query")
        | ("GET" | "POST", "/v1/views")
        | ("GET" | "DELETE", "/v1/views/{name}") => Need::Query,
        ("POST", "/v1/cluster/heartbeat")
        | ("GET", "/v1/cluster/partitions/{topic}/{partition}/fetch")
        | ("GET", "/v1/cluster/partitions/{topic}/{partition}/epoch-end") => Need::Node,
        // Listings are filtered and group offsets checked per topic.
        ("GET", "/health/ready")
        | ("GET", "/v1/cluster")
        | ("GET", "/v1/topics")
        | ("GET" | "POST", "/v1/groups/{group}/offsets")
        | (_, "unmatched") => Need::Authenticated,
        // Tokens, `/metrics` (its labels name every topic), and any route
        // missing from this table: closed unless listed above.
        _ => Need::Admin,
    };
    Some(need)
}

/// The tokens this node accepts.
pub struct Auth {
    enabled: bool,
    bootstrap: Option<TokenHash>,
    control: ControlStore,
    membership: Arc<Membership>,
    tokens: RwLock<(u64, TokenList)>,
    /// Whether the tokens were read from the store at least once.
    loaded: AtomicBool,
}

impl Auth {
    /// Authentication as `config` says, with tokens from `control` (loaded
    /// by [`Auth::run`]).
    pub fn new(config: &AuthConfig, control: ControlStore, membership: Arc<Membership>) -> Self {
        Self {
            enabled: config.enabled,
            bootstrap: config.bootstrap.as_ref().map(Token::hash),
            control,
            membership,
            tokens: RwLock::new((0, TokenList::default())),
            loaded: AtomicBool::new(false),
        }
    }

    /// Whether requests need a token.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Who sent a request with these headers: `401 unauthorized` without a
    /// known bearer token (when authentication is on).
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        if !self.enabled {
            return Ok(Principal::Open);
        }
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("this request needs a bearer token"))?;
        // The scheme is case-insensitive (RFC 7235).
        let secret = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unauthorized("the Authorization header is not \"Bearer <token>\"")
            })?;
        let token = Token::from_secret(secret);
        let hash = token.hash();
        if self.bootstrap.as_ref().is_some_and(|b| b.matches(&hash)) {
            return Ok(Principal::Token {
                name: "bootstrap".into(),
                permissions: vec![Permission::Admin],
                quota: Quota::default(),
            });
        }
        if self.membership.is_node_secret(&token) {
            return Ok(Principal::Node);
        }
        match self.tokens.read().1.find(&token) {
            Some(record) => Ok(Principal::Token {
                name: record.name.clone(),
                permissions: record.permissions.clone(),
                quota: record.quota,
            }),
            // Not "unknown" before the tokens were ever read: a client
            // must not throw away a good token because the store was down.
            None if !self.loaded.load(Ordering::Acquire) => Err(ApiError::unavailable(
                "the tokens have not been read from the object store yet",
                1,
            )),
            None => Err(ApiError::unauthorized("unknown or revoked token")),
        }
    }

    /// Rereads the cluster's tokens.
    pub async fn refresh(&self) -> Result<(), ClusterError> {
        let newest = self.control.tokens().await?;
        self.keep(newest);
        Ok(())
    }

    fn keep(&self, (version, list): (u64, TokenList)) {
        let mut tokens = self.tokens.write();
        if version >= tokens.0 {
            *tokens = (version, list);
        }
        self.loaded.store(true, Ordering::Release);
    }

    /// Keeps the tokens fresh until `stopping` turns true (nothing to do
    /// with authentication off).
    pub async fn run(self: Arc<Self>, stopping: watch::Receiver<bool>) {
        if !self.enabled {
            return;
        }
        let messages = Messages {
            failing: "cannot reread the tokens; the last ones read stay in force",
            recovered: "tokens are read from the object store again",
        };
        refresh_every(stopping, messages, || self.refresh()).await;
    }

    /// Makes a token; returns it in clear, once.
    pub async fn create(
        &self,
        name: &str,
        permissions: Vec<Permission>,
        quota: Quota,
    ) -> Result<(Token, TokenRecord), ApiError> {
        let created_at =
            strata_broker::timestamp::format_timestamp(strata_broker::timestamp::now_ms());
        let (token, version, list) = self
            .control
            .add_token(name, permissions, quota, created_at)
            .await?;
        let record = list
            .tokens
            .iter()
            .find(|t| t.name == name)
            .cloned()
            .ok_or_else(|| ApiError::internal("a token just made is not in the list"))?;
        self.keep((version, list));
        tracing::info!(token = %name, "token created");
        Ok((token, record))
    }

    /// Revokes a token.
    pub async fn revoke(&self, name: &str) -> Result<(), ApiError> {
        let newest = self.control.revoke_token(name).await?;
        self.keep(newest);
        tracing::info!(token = %name, "token revoked");
        Ok(())
    }

    /// Every token this node knows, by name (after a reread, if the store
    /// answers).
    pub async fn list(&self) -> Vec<TokenRecord> {
        if let Err(error) = self.refresh().await {
            tracing::debug!(%error, "listing the tokens last read");
        }
        let mut tokens = self.tokens.read().1.tokens.clone();
        tokens.sort_by(|a, b| a.name.cmp(&b.name));
        tokens
    }
}

/// The middleware: authenticates, checks the route's permission, and hands
/// the [`Principal`] to the handler.
pub async fn authorize(State(auth): State<Arc<Auth>>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    if !auth.enabled() {
        // Off (the default): every request is allowed, and produce pays
        // nothing for the check.
        parts.extensions.insert(Principal::Open);
        return next.run(Request::from_parts(parts, body)).await;
    }
    // `MatchedPath` is a shared string: cloning it copies nothing.
    let matched = parts.extensions.get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let params = <RawPathParams as FromRequestParts<()>>::from_request_parts(&mut parts, &())
        .await
        .ok();
    let topic = params.and_then(|params| {
        params
            .iter()
            .find(|(key, _)| *key == "topic")
            .map(|(_, value)| value.to_string())
    });
    let Some(need) = route_need(&parts.method, route, topic.as_deref()) else {
        return next.run(Request::from_parts(parts, body)).await;
    };
    let principal = match auth.authenticate(&parts.headers) {
        Ok(principal) => principal,
        Err(error) => return refused(error),
    };
    if let Err(error) = principal.require(need) {
        return refused(error);
    }
    parts.extensions.insert(principal);
    next.run(Request::from_parts(parts, body)).await
}

/// A refused request, counted by its error code (never by token).
fn refused(error: ApiError) -> Response {
    metrics::counter!("strata_auth_refused_total", "code" => error.code).increment(1);
    error.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(permissions: &[&str]) -> Principal {
        Principal::Token {
            name: "t".into(),
            permissions: permissions
                .iter()
                .map(|p| Permission::parse(p).expect("permission"))
                .collect(),
            quota: Quota::default(),
        }
    }

    #[test]
    fn each_permission_grants_what_the_contract_says() {
        let producer = token(&["produce:clicks"]);
        assert!(producer.may(Need::Produce("clicks")));
        assert!(!producer.may(Need::Produce("clicks2")));
        assert!(!producer.may(Need::Consume("clicks")));
        assert!(producer.may(Need::ProduceOrConsume("clicks")));
        assert!(!producer.may(Need::Query));
        assert!(!producer.may(Need::Admin));

        let reader = token(&["consume:clicks*", "query"]);
        assert!(reader.may(Need::Consume("clicks-eu")));
        assert!(!reader.may(Need::Consume("orders")));
        assert!(reader.may(Need::Query));
        assert!(!reader.may(Need::Node));

        let admin = token(&["admin"]);
        for need in [
            Need::Admin,
            Need::Produce("x"),
            Need::Consume("y"),
            Need::Query,
            Need::Node,
        ] {
            assert!(admin.may(need), "{need:?}");
        }
        assert!(Principal::Node.may(Need::Node));
        assert!(!Principal::Node.may(Need::Consume("x")));
        assert!(Principal::Open.may(Need::Admin));
    }

    #[test]
    fn every_route_but_health_needs_a_token() {
        let get = Method::GET;
        assert_eq!(route_need(&get, "/health", None), None);
        assert_eq!(route_need(&get, "/openapi.json", None), None);
        for route in ["/health/ready", "/v1/cluster", "/v1/topics", "unmatched"] {
            assert_eq!(
                route_need(&get, route, None),
                Some(Need::Authenticated),
                "{route}"
            );
        }
        assert_eq!(
            route_need(&get, "/metrics", None),
            Some(Need::Admin),
            "its labels name every topic"
        );
        assert_eq!(
            route_need(&get, "/v1/some-route-added-later", None),
            Some(Need::Admin),
            "a route missing from the table is closed"
        );
        assert_eq!(
            route_need(&Method::POST, "/v1/topics/{topic}/records", Some("t")),
            Some(Need::Produce("t"))
        );
        assert_eq!(
            route_need(&Method::DELETE, "/v1/topics/{topic}", Some("t")),
            Some(Need::Admin)
        );
        assert_eq!(
            route_need(&Method::GET, "/v1/topics/{topic}/range", Some("t")),
            Some(Need::Consume("t"))
        );
        assert_eq!(
            route_need(&Method::POST, "/v1/tokens", None),
            Some(Need::Admin)
        );
        assert_eq!(
            route_need(&Method::HEAD, "/v1/topics/{topic}/range", Some("t")),
            Some(Need::Consume("t")),
            "HEAD needs what GET needs"
        );
    }
}

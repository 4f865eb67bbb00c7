//! Bearer tokens and their permissions, kept cluster-wide as one
//! create-only versioned object (`<root>/_cluster/tokens/<version:020>.json`).
//!
//! A token is `st_` and 64 hex digits from the operating system's CSPRNG
//! (ring's `SystemRandom`): 256 bits, never guessed. Only its SHA-256 is
//! stored; the token itself is shown once, when it is made. A presented
//! token is hashed and compared with every stored hash in constant time
//! (`subtle`), so the time an answer takes says nothing about how close a
//! guess was. Nothing here logs or formats a token: [`Token`]'s `Debug`
//! prints a placeholder.

use std::fmt;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::error::{ClusterError, Result};

/// The prefix of every token, so that leaked ones can be found by scanners.
pub const TOKEN_PREFIX: &str = "st_";

/// Most tokens a cluster keeps (each request compares against all).
pub const MAX_TOKENS: usize = 1000;

/// A token in clear: made once, returned to whoever created it, then gone.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A new random token.
    pub fn generate() -> Result<Self> {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| ClusterError::Random)?;
        Ok(Self(format!("{TOKEN_PREFIX}{}", hex::encode(bytes))))
    }

    /// A token given by a client or an operator (e.g. in
    /// `STRATA_BOOTSTRAP_TOKEN`).
    pub fn from_secret(secret: &str) -> Self {
        Self(secret.to_string())
    }

    /// The token's text, to hand to its owner once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The SHA-256 of the token, as stored.
    pub fn hash(&self) -> TokenHash {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.0.as_bytes());
        TokenHash(hex::encode(digest.as_ref()))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<secret>)")
    }
}

/// The hex SHA-256 of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenHash(String);

impl TokenHash {
    /// Whether two hashes are equal, in time that does not depend on where
    /// they differ.
    pub fn matches(&self, other: &TokenHash) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

/// What a token may do (API.md "Security").
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Permission {
    /// Everything, token management included.
    Admin,
    /// Produce to topics matching the glob.
    Produce(TopicGlob),
    /// Consume, range reads, snapshots and group offsets of matching topics.
    Consume(TopicGlob),
    /// SQL and views, over the topics the token may consume.
    Query,
}

impl Permission {
    /// Parses `admin`, `produce:<glob>`, `consume:<glob>` or `query`.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        match text.split_once(':') {
            None if text == "admin" => Ok(Self::Admin),
            None if text == "query" => Ok(Self::Query),
            Some(("produce", glob)) => Ok(Self::Produce(TopicGlob::parse(glob)?)),
            Some(("consume", glob)) => Ok(Self::Consume(TopicGlob::parse(glob)?)),
            _ => Err(format!(
                "unknown permission {:?}: expected admin, produce:<topic glob>, consume:<topic glob> or query",
                text.chars().take(100).collect::<String>()
            )),
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Admin => f.write_str("admin"),
            Self::Produce(glob) => write!(f, "produce:{}", glob.0),
            Self::Consume(glob) => write!(f, "consume:{}", glob.0),
            Self::Query => f.write_str("query"),
        }
    }
}

impl Serialize for Permission {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Permission {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A topic name pattern: topic-name characters and `*` (any run of them).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TopicGlob(String);

impl TopicGlob {
    /// Checks a pattern: 1 to 249 characters of `[A-Za-z0-9._*-]`.
    pub fn parse(pattern: &str) -> std::result::Result<Self, String> {
        let valid = !pattern.is_empty()
            && pattern.len() <= 249
            && pattern
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'*'));
        if valid {
            Ok(Self(pattern.to_string()))
        } else {
            Err(format!(
                "invalid topic pattern {:?}: 1 to 249 of A-Z a-z 0-9 . _ - and *",
                pattern.chars().take(100).collect::<String>()
            ))
        }
    }

    /// Whether `topic` matches. Linear in the lengths (no backtracking
    /// blow-up): the classic wildcard match with one remembered star.
    pub fn matches(&self, topic: &str) -> bool {
        let (p, t) = (self.0.as_bytes(), topic.as_bytes());
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, ti));
                pi += 1;
            } else if pi < p.len() && p[pi] == t[ti] {
                pi += 1;
                ti += 1;
            } else if let Some((sp, st)) = star {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&b| b == b'*')
    }
}

/// A token's byte rates (Kafka's client quotas); `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub produce_bytes_per_sec: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consume_bytes_per_sec: Option<u64>,
}

/// One stored token: its name, hash, permissions and quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    pub name: String,
    pub hash: TokenHash,
    pub permissions: Vec<Permission>,
    #[serde(default)]
    pub quota: Quota,
    /// When it was made (RFC 3339), for people.
    pub created_at: String,
}

/// Checks a token name: 1 to 64 of `[A-Za-z0-9._-]`.
pub fn check_token_name(name: &str) -> std::result::Result<(), String> {
    match strata_broker::config::name_problem(name, 64) {
        None => Ok(()),
        Some(problem) => Err(format!(
            "invalid token name {:?}: {}",
            name.chars().take(100).collect::<String>(),
            problem.reason(64)
        )),
    }
}

/// Every token of the cluster: one version of `_cluster/tokens/`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenList {
    pub tokens: Vec<TokenRecord>,
}

impl TokenList {
    /// The record whose hash is `token`'s, compared with every stored
    /// hash in constant time.
    pub fn find(&self, token: &Token) -> Option<&TokenRecord> {
        let hash = token.hash();
        let mut found = None;
        for record in &self.tokens {
            if record.hash.matches(&hash) {
                found = Some(record);
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_never_printed() {
        let a = Token::generate().expect("random");
        let b = Token::generate().expect("random");
        assert_ne!(a, b);
        assert!(a.expose().starts_with(TOKEN_PREFIX));
        assert_eq!(a.expose().len(), TOKEN_PREFIX.len() + 64);
        assert!(!format!("{a:?}").contains(&a.expose()[3..]));
        assert_eq!(a.hash(), Token::from_secret(a.expose()).hash());
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn a_token_is_found_by_its_hash_only() {
        let token = Token::generate().expect("random");
        let list = TokenList {
            tokens: vec![TokenRecord {
                name: "ci".into(),
                hash: token.hash(),
                permissions: vec![Permission::Query],
                quota: Quota::default(),
                created_at: String::new(),
            }],
        };
        assert_eq!(list.find(&token).map(|r| r.name.as_str()), Some("ci"));
        assert!(list.find(&Token::from_secret("st_00")).is_none());
        let json = serde_json::to_string(&list).expect("json");
        assert!(!json.contains(token.expose()), "only the hash is stored");
    }

    #[test]
    fn permissions_parse_print_and_refuse_nonsense() {
        for text in [
            "admin",
            "query",
            "produce:clicks",
            "consume:clicks*",
            "consume:*",
        ] {
            let p = Permission::parse(text).expect(text);
            assert_eq!(p.to_string(), text);
        }
        for bad in [
            "",
            "root",
            "produce",
            "produce:",
            "consume:a/b",
            "query:x",
            "admin:x",
        ] {
            assert!(Permission::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn globs_match_like_shell_patterns() {
        let cases = [
            ("clicks", "clicks", true),
            ("clicks", "clicks2", false),
            ("clicks*", "clicks", true),
            ("clicks*", "clicks-eu", true),
            ("clicks*", "click", false),
            ("*", "anything", true),
            ("*-eu", "clicks-eu", true),
            ("*-eu", "clicks-us", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("**", "x", true),
        ];
        for (pattern, topic, want) in cases {
            let glob = TopicGlob::parse(pattern).expect(pattern);
            assert_eq!(glob.matches(topic), want, "{pattern} vs {topic}");
        }
        let long = TopicGlob::parse(&format!("{}b", "*a".repeat(100))).expect("valid");
        assert!(
            !long.matches(&"a".repeat(249)),
            "no blow-up on a hostile pattern"
        );
    }
}

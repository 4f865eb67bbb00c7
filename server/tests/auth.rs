//! Bearer tokens and permissions (API.md "Security"), on a real server:
//! every refused request is `401`/`403`, changes nothing and leaks no topic
//! name; SQL and views are checked against the topics they read; tokens
//! survive a restart and are never shown again after they are made.

use reqwest::StatusCode;
use serde_json::{Value, json};
use strata_server::AuthConfig;
use strata_server::cluster::tokens::Token;
use strata_test_support::{Api, TestServer};

const BOOTSTRAP: &str = "bootstrap-token-for-tests-0123456789abcdef";

async fn server() -> (TestServer, Api) {
    let server = TestServer::start_with_auth(AuthConfig {
        enabled: true,
        bootstrap: Some(Token::from_secret(BOOTSTRAP)),
    })
    .await;
    let admin = server.api.with_token(BOOTSTRAP);
    (server, admin)
}

async fn make_token(admin: &Api, name: &str, permissions: &[&str]) -> String {
    let (status, body) = admin
        .post(
            "/v1/tokens",
            &json!({"name": name, "permissions": permissions}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["name"], name);
    assert_eq!(body["permissions"], json!(permissions));
    let token = body["token"].as_str().expect("token").to_string();
    assert!(token.starts_with("st_") && token.len() == 67, "{token}");
    token
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

async fn end_offsets(admin: &Api, topic: &str) -> Vec<u64> {
    admin.end_offsets(topic).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_no_entry_and_the_reason_is_not_a_leak() {
    let (server, admin) = server().await;
    let (status, _) = server.api.get("/health").await;
    assert_eq!(status, StatusCode::OK, "the one public route");
    for path in [
        "/v1/topics",
        "/metrics",
        "/health/ready",
        "/v1/cluster",
        "/v1/nope",
    ] {
        let (status, body) = server.api.get(path).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert_eq!(code(&body), "unauthorized");
    }
    let response = reqwest::Client::new()
        .get(format!("{}/v1/topics", server.api.base))
        .bearer_auth("st_not-a-real-token")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    let body = response.text().await.expect("body");
    assert!(
        !body.contains("not-a-real-token"),
        "the token is not echoed: {body}"
    );

    // An unauthenticated write changes nothing.
    admin.create_topic("clicks", 1, json!({})).await;
    let (status, _) = server
        .api
        .post(
            "/v1/topics/clicks/records",
            &json!({"records": [{"value": 1}]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server.api.delete("/v1/topics/clicks").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(end_offsets(&admin, "clicks").await, [0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_permission_allows_what_it_says_and_nothing_else() {
    let (server, admin) = server().await;
    admin.create_topic("clicks", 1, json!({})).await;
    admin.create_topic("orders", 1, json!({})).await;
    admin.produce("orders", &[json!({"value": {"n": 1}})]).await;
    let producer = server
        .api
        .with_token(&make_token(&admin, "producer", &["produce:clicks"]).await);
    let reader = server
        .api
        .with_token(&make_token(&admin, "reader", &["consume:click*", "query"]).await);

    // Produce: its topic only; a forbidden topic and an unknown one look alike.
    let records = json!({"records": [{"key": "k", "value": {"n": 1}}]});
    let (status, body) = producer.post("/v1/topics/clicks/records", &records).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut answers = Vec::new();
    for topic in ["orders", "no-such-topic"] {
        let (status, body) = producer
            .post(&format!("/v1/topics/{topic}/records"), &records)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{topic}: {body}");
        assert_eq!(code(&body), "forbidden");
        answers.push(body.to_string().replace(topic, "<topic>"));
    }
    assert_eq!(
        answers[0], answers[1],
        "a forbidden and an unknown topic answer alike"
    );
    let (status, _) = producer.get("/v1/topics/no-such-topic").await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "describe does not tell either"
    );
    assert_eq!(end_offsets(&admin, "orders").await, [1], "nothing written");
    let (status, _) = producer.get("/v1/topics/clicks/partitions/0/records").await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "produce does not grant consume"
    );
    let (status, _) = producer.get("/v1/topics/clicks").await;
    assert_eq!(status, StatusCode::OK, "a producer may describe its topic");

    // Consume, range, listing: matching topics only.
    let (status, body) = reader.get("/v1/topics/clicks/partitions/0/records").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["records"].as_array().map(Vec::len), Some(1));
    let (status, _) = reader.get("/v1/topics/orders/partitions/0/records").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = reader.get("/v1/topics/clicks/range?format=json").await;
    assert_eq!(status, StatusCode::OK);
    let (_, listed) = reader.get("/v1/topics").await;
    let names: Vec<&str> = listed["topics"]
        .as_array()
        .expect("topics")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["clicks"], "a listing shows only permitted topics");

    // SQL: every topic read, through CTEs and views, is checked first.
    let sql = |q: &str| json!({"sql": q});
    let (status, body) = reader
        .post("/v1/query", &sql("SELECT count(*) AS n FROM clicks"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = reader
        .post(
            "/v1/query",
            &sql("WITH c AS (SELECT * FROM clicks) SELECT count(*) FROM c"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "a CTE is not a topic: {body}");
    let (status, body) = reader
        .post(
            "/v1/query",
            &sql("SELECT count(*) FROM generate_series(1, 3)"),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a table function is not a topic: {body}"
    );
    let (status, body) = reader
        .post(
            "/v1/query",
            &sql("WITH orders AS (SELECT * FROM clicks) SELECT count(*) AS n FROM orders"),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a CTE may shadow a topic's name: {body}"
    );
    for forbidden in [
        "SELECT * FROM orders",
        "SELECT * FROM clicks JOIN orders ON true",
        "SELECT * FROM clicks WHERE key IN (SELECT key FROM orders)",
        "SELECT * FROM ghost",
    ] {
        let (status, body) = reader.post("/v1/query", &sql(forbidden)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{forbidden}: {body}");
    }
    let (status, body) = admin
        .post(
            "/v1/views",
            &json!({"name": "all_orders", "sql": "SELECT * FROM orders"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, forbidden) = reader.get("/v1/views/all_orders").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a view reads what it names");
    // An unknown view gets the same answer, and neither names the topic
    // behind the view: no view or topic name leaks.
    let (status, unknown) = reader.get("/v1/views/no_such_view").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{unknown}");
    assert_eq!(forbidden["error"]["code"], unknown["error"]["code"]);
    let message = forbidden["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.contains("topic"), "{forbidden}");
    // Regression: a topic created with a view's name made the check look at
    // that topic while the read ran the view's SQL. Now a topic may not
    // take a view's name, and the check reads the view's own SQL.
    let (status, body) = admin
        .post("/v1/topics", &json!({"name": "all_orders"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"]["code"], "view_exists", "{body}");
    let (status, _) = reader
        .post("/v1/query", &sql("SELECT * FROM all_orders"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a view named in SQL too");
    let (status, _) = reader
        .post(
            "/v1/views",
            &json!({"name": "mine", "sql": "SELECT * FROM orders"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, views) = admin.get("/v1/views").await;
    assert_eq!(
        views["views"].as_array().map(Vec::len),
        Some(1),
        "no view was made"
    );
    let (status, body) = reader
        .post(
            "/v1/views",
            &json!({"name": "clicks_v", "sql": "SELECT * FROM clicks"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = reader
        .post(
            "/v1/views",
            &json!({"name": "orders", "sql": "SELECT * FROM clicks"}),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a name it may not consume, not 409 topic_exists"
    );
    let (_, listed) = reader.get("/v1/views").await;
    let names: Vec<Value> = listed["views"]
        .as_array()
        .expect("views")
        .iter()
        .map(|v| v["name"].clone())
        .collect();
    assert_eq!(
        names,
        [json!("clicks_v")],
        "a view over a forbidden topic is not listed"
    );
    let (status, _) = reader.delete("/v1/views/all_orders").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = reader.delete("/v1/views/clicks_v").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = reader.get("/metrics").await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "metric labels name every topic"
    );
    let (status, _) = producer.post("/v1/query", &sql("SELECT 1")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "SQL needs query");

    // Group offsets: per topic.
    let commit = |topic: &str| json!({"offsets": [{"topic": topic, "partition": 0, "offset": 1}]});
    let (status, _) = reader.post("/v1/groups/g/offsets", &commit("clicks")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = reader.post("/v1/groups/g/offsets", &commit("orders")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // An unknown group looks like one with nothing it may see: no names leak.
    let (status, body) = reader.get("/v1/groups/no_such_group/offsets").await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"offsets": []})));
    let (status, _) = admin.get("/v1/groups/no_such_group/offsets").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "an admin is told");

    // Admin only: topics, tokens, offload.
    for (method, path) in [
        (reqwest::Method::POST, "/v1/topics"),
        (reqwest::Method::DELETE, "/v1/topics/clicks"),
        (reqwest::Method::GET, "/v1/tokens"),
        (reqwest::Method::POST, "/v1/topics/clicks/tiering/run"),
    ] {
        let (status, _) = reader
            .call(
                method.clone(),
                path,
                Some("application/json"),
                Some(b"{}".to_vec()),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
    }
    assert_eq!(end_offsets(&admin, "clicks").await, [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_listed_without_secrets_revoked_at_once_and_survive_restarts() {
    let (server, admin) = server().await;
    admin.create_topic("clicks", 1, json!({})).await;
    let secret = make_token(&admin, "ci", &["produce:clicks", "consume:clicks"]).await;
    let (status, body) = admin
        .post(
            "/v1/tokens",
            &json!({"name": "ci", "permissions": ["query"]}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "token_exists")
    );
    for bad in [
        json!({"name": "x", "permissions": ["root"]}),
        json!({"name": "x", "permissions": []}),
        json!({"name": "bad name", "permissions": ["query"]}),
    ] {
        let (status, body) = admin.post("/v1/tokens", &bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, listed) = admin.get("/v1/tokens").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["tokens"][0]["name"], "ci");
    let text = listed.to_string();
    assert!(!text.contains(&secret) && !text.contains("hash"), "{text}");

    let server = server.restart().await;
    let ci = server.api.with_token(&secret);
    let (status, body) = ci
        .post(
            "/v1/topics/clicks/records",
            &json!({"records": [{"value": 1}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "a token survives a restart: {body}");

    let admin = server.api.with_token(BOOTSTRAP);
    let (status, _) = admin.delete("/v1/tokens/ci").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = ci.get("/v1/topics/clicks/partitions/0/records").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "revoked at once on this node"
    );
    let (status, body) = admin.delete("/v1/tokens/ci").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "token_not_found")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_authentication_off_nothing_changes() {
    let server = TestServer::start().await;
    server.api.create_topic("open", 1, json!({})).await;
    let (status, _) = server.api.get("/v1/topics/open/partitions/0/records").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .api
        .post("/v1/query", &json!({"sql": "SELECT 1"}))
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_over_its_quota_waits_and_others_are_not_starved() {
    let (server, admin) = server().await;
    admin.create_topic("q", 1, json!({})).await;
    let (status, body) = admin
        .post(
            "/v1/tokens",
            &json!({"name": "slow", "permissions": ["produce:q", "consume:q"],
                    "produce_bytes_per_sec": 2000, "consume_bytes_per_sec": 2000}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["produce_bytes_per_sec"], 2000);
    let slow_token = body["token"].as_str().expect("token").to_string();
    let slow = server.api.with_token(&slow_token);
    let fast = server
        .api
        .with_token(&make_token(&admin, "fast", &["produce:q"]).await);
    let big = json!({"records": [{"value": {"s": "x".repeat(5000)}}]});
    let path = "/v1/topics/q/records";

    let (status, _) = slow.post(path, &big).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a full bucket takes one large request"
    );
    let refused = reqwest::Client::new()
        .post(format!("{}{path}", server.api.base))
        .bearer_auth(&slow_token)
        .json(&big)
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=3).contains(&retry_after), "{retry_after}");
    let body: Value = refused.json().await.expect("json");
    assert_eq!(code(&body), "quota_exceeded");
    assert_eq!(
        end_offsets(&admin, "q").await,
        [1],
        "a throttled produce writes nothing"
    );

    let (status, _) = fast.post(path, &big).await;
    assert_eq!(status, StatusCode::OK, "another token is not held back");
    let (_, metrics) = admin.get_text("/metrics").await;
    assert!(
        metrics.contains("strata_quota_throttled_total{direction=\"produce\"}"),
        "{metrics}"
    );
    strata_test_support::eventually(
        std::time::Duration::from_secs(10),
        "the slow token's debt to be paid",
        || async { (slow.post(path, &big).await.0 == StatusCode::OK).then_some(()) },
    )
    .await;
    assert_eq!(end_offsets(&admin, "q").await, [3]);

    // Consume: the answer is charged, and the next one waits for it.
    let (status, page) = slow.get("/v1/topics/q/partitions/0/records").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["records"].as_array().map(Vec::len), Some(3));
    let (status, body) = slow.get("/v1/topics/q/partitions/0/records").await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded")
    );
    let (status, body) = slow.get("/v1/topics/q/range?format=json").await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "range reads share the consume quota: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_changed_elsewhere_take_effect_within_the_refresh_interval() {
    use strata_server::cluster::ControlStore;
    use strata_server::cluster::tokens::{Permission, Quota};
    use strata_server::tiering::ColdStore;
    let (server, admin) = server().await;
    admin.create_topic("t", 1, json!({})).await;
    // Another node (or `strata token create --data-dir`) writes the store.
    let url = strata_server::server::default_cold_url(server.data_dir()).expect("url");
    let control = ControlStore::new(&ColdStore::open(&url).expect("store"));
    let (token, _, _) = control
        .add_token(
            "elsewhere",
            vec![Permission::parse("consume:t").expect("permission")],
            Quota::default(),
            String::new(),
        )
        .await
        .expect("add");
    let api = server.api.with_token(token.expose());
    strata_test_support::eventually(
        std::time::Duration::from_secs(6),
        "a token made elsewhere to be accepted",
        || async { (api.get("/v1/topics/t").await.0 == StatusCode::OK).then_some(()) },
    )
    .await;
    // The scheme is case-insensitive.
    let response = reqwest::Client::new()
        .get(format!("{}/v1/topics/t", server.api.base))
        .header("authorization", format!("bearer {}", token.expose()))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    control.revoke_token("elsewhere").await.expect("revoke");
    strata_test_support::eventually(
        std::time::Duration::from_secs(6),
        "a token revoked elsewhere to be refused",
        || async { (api.get("/v1/topics/t").await.0 == StatusCode::UNAUTHORIZED).then_some(()) },
    )
    .await;
}

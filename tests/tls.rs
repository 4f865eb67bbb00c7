//! HTTPS with the `strata` binary: certificates made with `openssl`, the
//! server reached only over TLS, and a rotated certificate picked up
//! without a restart.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use strata_test_support::tls::{client_trusting, make_cert};
use strata_test_support::{ChildServer, eventually, serve_refused};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_strata"))
}

async fn health(client: &reqwest::Client, url: &str) -> Option<reqwest::StatusCode> {
    client
        .get(format!("{url}/health"))
        .send()
        .await
        .ok()
        .map(|r| r.status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_only_and_a_rotated_certificate_needs_no_restart() {
    let certs = tempfile::tempdir().unwrap();
    let (cert_a, key_a) = make_cert(certs.path(), "a");
    let (cert_b, key_b) = make_cert(certs.path(), "b");
    let live_cert = certs.path().join("live.crt");
    let live_key = certs.path().join("live.key");
    std::fs::copy(&cert_a, &live_cert).unwrap();
    std::fs::copy(&key_a, &live_key).unwrap();

    let data = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(
        binary(),
        data.path(),
        &[
            "--tls-cert",
            live_cert.to_str().unwrap(),
            "--tls-key",
            live_key.to_str().unwrap(),
        ],
    );
    assert!(
        server.log().contains("listening on https://"),
        "{}",
        server.log()
    );
    let https = server.api.base.replacen("http://", "https://", 1);
    let trusts_a = client_trusting(&cert_a);
    let trusts_b = client_trusting(&cert_b);
    assert_eq!(
        health(&trusts_a, &https).await,
        Some(reqwest::StatusCode::OK)
    );
    assert_eq!(health(&trusts_b, &https).await, None, "B is not served yet");
    let plain = reqwest::Client::new()
        .get(format!("{}/health", server.api.base))
        .send()
        .await;
    assert!(plain.is_err(), "no plain HTTP on the TLS port: {plain:?}");

    // Rotate: each file replaced atomically, the key first.
    for (from, to) in [(&key_b, &live_key), (&cert_b, &live_cert)] {
        let tmp = to.with_extension("tmp");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }
    eventually(
        Duration::from_secs(15),
        "the new certificate to be served",
        || async {
            (health(&trusts_b, &https).await == Some(reqwest::StatusCode::OK)).then_some(())
        },
    )
    .await;
    assert_eq!(
        health(&trusts_a, &https).await,
        None,
        "A is no longer served"
    );
    assert!(
        server.log().contains("TLS certificate reloaded"),
        "{}",
        server.log()
    );
    // The CLI over HTTPS: it trusts the certificate in STRATA_CA_CERT.
    let cli = |ca: Option<&Path>| {
        let mut command = Command::new(binary());
        command.args(["--server", &https, "topic", "list"]);
        command.env_remove("STRATA_CA_CERT");
        if let Some(ca) = ca {
            command.env("STRATA_CA_CERT", ca);
        }
        strata_test_support::output_within(&mut command, Duration::from_secs(30))
    };
    let trusted = cli(Some(&cert_b));
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    let untrusted = cli(None);
    assert!(
        !untrusted.status.success(),
        "a self-signed certificate is refused"
    );
    assert!(server.terminate().success(), "a clean stop over TLS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_tls_files_stop_the_start_with_a_clear_error() {
    let certs = tempfile::tempdir().unwrap();
    let (cert_a, _) = make_cert(certs.path(), "a");
    let (_, key_b) = make_cert(certs.path(), "b");
    let data = tempfile::tempdir().unwrap();
    for (cert, key, says) in [
        (
            certs.path().join("missing.crt"),
            key_b.clone(),
            "reading the certificate",
        ),
        (
            cert_a.clone(),
            key_b.clone(),
            "using the certificate and key",
        ),
        (cert_a.clone(), cert_a.clone(), "parsing the key"),
    ] {
        let stderr = serve_refused(
            binary(),
            data.path(),
            &[
                "--tls-cert".as_ref(),
                cert.as_os_str(),
                "--tls-key".as_ref(),
                key.as_os_str(),
            ],
        );
        assert!(stderr.contains(says), "{says}: {stderr}");
    }
    // A certificate without a key is refused.
    serve_refused(
        binary(),
        data.path(),
        &["--tls-cert".as_ref(), "x.crt".as_ref()],
    );
}

/// Runs openssl with `args`, panicking with its error output on failure.
fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_client_ca_only_clients_with_its_certificates_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (server_cert, server_key) = make_cert(dir.path(), "server");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    // A CA, and a client certificate it signs.
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    let (ca_key, ca_cert) = (at("ca.key"), at("ca.crt"));
    ca.extend([
        "-days",
        "2",
        "-subj",
        "/CN=strata-test-ca",
        "-keyout",
        &ca_key,
        "-out",
        &ca_cert,
    ]);
    openssl(&ca);
    let (client_key, client_csr, client_cert, ext) = (
        at("client.key"),
        at("client.csr"),
        at("client.crt"),
        at("client.ext"),
    );
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-subj",
        "/CN=client",
        "-keyout",
        &client_key,
        "-out",
        &client_csr,
    ]);
    openssl(&csr);
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &client_csr,
        "-CA",
        &ca_cert,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &client_cert,
    ]);

    let data = tempfile::tempdir().unwrap();
    let server = ChildServer::spawn(
        binary(),
        data.path(),
        &[
            "--tls-cert",
            server_cert.to_str().unwrap(),
            "--tls-key",
            server_key.to_str().unwrap(),
            "--tls-client-ca",
            &ca_cert,
        ],
    );
    let https = server.api.base.replacen("http://", "https://", 1);
    assert_eq!(
        health(&client_trusting(&server_cert), &https).await,
        None,
        "no client certificate, no connection"
    );
    let mut identity = std::fs::read(&client_key).unwrap();
    identity.extend(std::fs::read(&client_cert).unwrap());
    let pem = std::fs::read(&server_cert).unwrap();
    let with_certificate = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .tls_built_in_root_certs(false)
        .identity(reqwest::Identity::from_pem(&identity).unwrap())
        .build()
        .unwrap();
    assert_eq!(
        health(&with_certificate, &https).await,
        Some(reqwest::StatusCode::OK)
    );
}

/// Nodes of a cluster talk TLS to each other, with tokens on (API.md
/// "Security" and "Cluster"): three `strata serve` processes on HTTPS with
/// `--auth` replicate a topic (followers fetch over HTTPS), pass produce
/// on to leaders, and fail over after kill -9 of a leader, losing and
/// doubling nothing; no node logs a token or the node secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_over_tls_with_tokens_replicates_and_fails_over() {
    use serde_json::{Value, json};
    use std::collections::BTreeMap;
    use strata_test_support::Api;

    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(certs.path(), "cluster");
    let root = tempfile::tempdir().unwrap();
    let store = format!("file://{}", root.path().display());
    let config = certs.path().join("strata.toml");
    std::fs::write(
        &config,
        "[cluster]\nheartbeat_interval_ms = 200\nfailure_timeout_ms = 1500\n",
    )
    .unwrap();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let made = Command::new(binary())
        .args(["token", "create", "admin", "--allow", "admin", "--data-dir"])
        .arg(dirs[0].path())
        .args(["--object-store", &store])
        .env_remove("STRATA_TOKEN")
        .output()
        .expect("strata token create");
    assert!(made.status.success(), "{made:?}");
    let admin = String::from_utf8(made.stdout).unwrap().trim().to_string();
    let mut nodes = BTreeMap::new();
    for (i, dir) in dirs.iter().enumerate() {
        let name = format!("n{}", i + 1);
        let args = [
            "--node-id",
            &name,
            "--object-store",
            &store,
            "--config",
            config.to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--auth",
        ];
        let node = ChildServer::spawn(binary(), dir.path(), &args);
        nodes.insert(name.clone(), node);
    }
    let api = |node: &ChildServer| -> Api {
        let mut api =
            Api::new(&node.api.base.replacen("http://", "https://", 1)).with_token(&admin);
        api.http = client_trusting(&cert);
        api
    };
    let apis: BTreeMap<String, Api> = nodes.iter().map(|(n, s)| (n.clone(), api(s))).collect();
    for (name, api) in &apis {
        eventually(
            Duration::from_secs(20),
            &format!("{name} to see 3 nodes"),
            || async {
                let (_, view) = api.get("/v1/cluster").await;
                let nodes = view["nodes"].as_array()?;
                (nodes.iter().filter(|n| n["alive"] == true).count() == 3
                    && nodes
                        .iter()
                        .all(|n| n["url"].as_str().is_some_and(|u| u.starts_with("https://"))))
                .then_some(())
            },
        )
        .await;
    }
    apis["n1"]
        .create_topic("secure", 3, json!({"replication_factor": 3}))
        .await;
    let in_sync = |api: Api| async move {
        eventually(
            Duration::from_secs(20),
            "three in-sync replicas everywhere",
            || async {
                let (status, described) = api.get("/v1/topics/secure").await;
                (status == reqwest::StatusCode::OK
                    && described["partitions"]
                        .as_array()?
                        .iter()
                        .all(|p| p["isr"].as_array().is_some_and(|isr| isr.len() == 3)))
                .then_some(described)
            },
        )
        .await
    };
    let described = in_sync(apis["n1"].clone()).await;

    // Produce through n2 (parts passed on to the leaders over HTTPS), retried
    // with its idempotency key until acknowledged.
    let produce = |api: Api, key: &'static str| async move {
        let records: Vec<Value> = (0..9)
            .map(|i| json!({"key": format!("k{i}"), "value": {"batch": key, "i": i}}))
            .collect();
        eventually(
            Duration::from_secs(10),
            "an acknowledged produce",
            || async {
                let answer = api
                    .http
                    .post(format!("{}/v1/topics/secure/records", api.base))
                    .bearer_auth(api.token.as_deref().unwrap())
                    .header("Idempotency-Key", key)
                    .json(&json!({ "records": records }))
                    .send()
                    .await
                    .ok()?;
                (answer.status() == reqwest::StatusCode::OK).then_some(())
            },
        )
        .await;
    };
    produce(apis["n2"].clone(), "first").await;
    let read_all = |api: Api| async move {
        let mut values = Vec::new();
        for p in 0..3 {
            for record in api.consume_all("secure", p, 0).await {
                values.push(record["value"].clone());
            }
        }
        values.len()
    };
    // Every node holds every record: followers fetched them over HTTPS.
    for api in apis.values() {
        eventually(
            Duration::from_secs(10),
            "nine records everywhere",
            || async { (read_all(api.clone()).await == 9).then_some(()) },
        )
        .await;
    }

    // Kill -9 the leader of partition 0; a survivor takes over.
    let victim = described["partitions"][0]["leader"]
        .as_str()
        .unwrap()
        .to_string();
    let survivor = apis.keys().find(|n| **n != victim).unwrap().clone();
    nodes.remove(&victim).unwrap().kill9();
    let killed = std::time::Instant::now();
    produce(apis[&survivor].clone(), "second").await;
    println!(
        "over TLS: produce acknowledged {:?} after kill -9 of {victim}",
        killed.elapsed()
    );
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "{:?}",
        killed.elapsed()
    );
    for name in nodes.keys() {
        eventually(
            Duration::from_secs(10),
            "eighteen records on the survivors",
            || async { (read_all(apis[name].clone()).await == 18).then_some(()) },
        )
        .await;
    }

    // Nothing secret in any log.
    let secret = std::fs::read_dir(root.path().join("_cluster/node_secret"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect::<String>();
    let secret: Value = serde_json::from_str(&secret).unwrap();
    let secret = secret["node_secret"].as_str().unwrap().to_string();
    for (name, node) in &nodes {
        let log = node.log();
        assert!(!log.contains(&admin), "{name} logged the admin token");
        assert!(!log.contains(&secret), "{name} logged the node secret");
    }
}

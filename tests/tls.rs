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

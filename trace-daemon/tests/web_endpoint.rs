//! The metrics endpoint behind its web config (exporter-toolkit's format),
//! checked with curl and certificates made by openssl: basic auth (none
//! 401, wrong 401, right 200), TLS with a test CA, a client certificate
//! required and refused without one, each change taken by a reload
//! (`WebState::replace`, what SIGHUP does) without restarting the server.
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
};

use kvscope::service::{
    metrics::Metrics,
    web::{WebState, serve},
    web_config::WebConfig,
};

mod common;

/// curl's HTTP status for `url` with `args` (0 when no HTTP answer came).
fn status(url: &str, args: &[&str], dir: &Path) -> u32 {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .args(args)
        .arg(url)
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn load(dir: &Path, yaml: &str) -> WebConfig {
    let p = dir.join("web.yml");
    std::fs::write(&p, yaml).unwrap();
    WebConfig::load(&p).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The endpoint on a free port, served by a runtime of its own.
fn start(web: Arc<WebState>) -> u16 {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = std_listener.local_addr().unwrap().port();
    std_listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(std_listener).unwrap();
            serve(l, Arc::new(Metrics::new()), web).await;
        });
    });
    port
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kvscope-web-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn basic_auth_tls_and_client_certificates_with_reloads() {
    if !common::tool("curl") || !common::tool("openssl") {
        return;
    }
    let dir = tmpdir("tls");
    common::certificates(&dir);
    let web = WebState::new(WebConfig::open());
    let port = start(web.clone());
    let http = format!("http://127.0.0.1:{port}/metrics");
    let https = format!("https://127.0.0.1:{port}/metrics");

    // Open by default.
    assert_eq!(status(&http, &[], &dir), 200);

    // Basic auth (bcrypt, as htpasswd -B makes it).
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    web.replace(load(
        &dir,
        &format!("basic_auth_users:\n  prometheus: '{hash}'\n"),
    ));
    assert_eq!(status(&http, &[], &dir), 401, "no credentials");
    assert_eq!(
        status(&http, &["-u", "prometheus:wrong"], &dir),
        401,
        "wrong password"
    );
    assert_eq!(
        status(&http, &["-u", "nobody:s3cret"], &dir),
        401,
        "unknown user"
    );
    assert_eq!(status(&http, &["-u", "prometheus:s3cret"], &dir), 200);

    // TLS with the test CA, and basic auth over it.
    web.replace(load(
        &dir,
        &format!(
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  min_version: TLS12\nbasic_auth_users:\n  prometheus: '{hash}'\n"
        ),
    ));
    let ca = ["--cacert", "ca.pem"];
    assert_eq!(
        status(&http, &[], &dir),
        0,
        "plain HTTP to a TLS endpoint gets no answer"
    );
    assert_eq!(
        status(&https, &[], &dir),
        0,
        "an unknown CA is refused by the client"
    );
    assert_eq!(status(&https, &ca, &dir), 401);
    assert_eq!(
        status(
            &https,
            &[&ca[..], &["-u", "prometheus:s3cret"]].concat(),
            &dir
        ),
        200
    );

    // A client certificate required: none is refused at the handshake.
    web.replace(load(
        &dir,
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n  client_ca_file: ca.pem\n  client_auth_type: RequireAndVerifyClientCert\n",
    ));
    assert_eq!(status(&https, &ca, &dir), 0, "no client certificate");
    let with_cert = [&ca[..], &["--cert", "client.pem", "--key", "client.key"]].concat();
    assert_eq!(status(&https, &with_cert, &dir), 200);
    // A certificate of another CA is refused too.
    common::sh(
        &dir,
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout other.key -out other.pem -days 2 -subj /CN=other >/dev/null 2>&1",
    );
    let other = [&ca[..], &["--cert", "other.pem", "--key", "other.key"]].concat();
    assert_eq!(
        status(&https, &other, &dir),
        0,
        "a client certificate of another CA"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A bad web config is a config error naming the key, the file and the
/// problem: the daemon starts with it never, and a reload keeps the old.
#[test]
fn a_bad_web_config_is_an_error_naming_the_key() {
    let dir = tmpdir("bad");
    let web = dir.join("web.yml");
    std::fs::write(&web, "basic_auth_users:\n  alice: plaintext\n").unwrap();
    let toml = dir.join("kvscope.toml");
    std::fs::write(&toml, format!("web_config = \"{}\"\n", web.display())).unwrap();
    let e = format!(
        "{:#}",
        kvscope::service::config::DaemonConfig::load(&toml).unwrap_err()
    );
    assert!(
        e.contains("basic_auth_users.alice: not a bcrypt hash"),
        "{e}"
    );
    assert!(e.contains("web.yml"), "{e}");
    std::fs::write(
        &web,
        "tls_server_config:\n  cert_file: missing.pem\n  key_file: k\n",
    )
    .unwrap();
    let e = format!(
        "{:#}",
        kvscope::service::config::DaemonConfig::load(&toml).unwrap_err()
    );
    assert!(
        e.contains("tls_server_config") && e.contains("cert_file missing.pem"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

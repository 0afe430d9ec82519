//! The support console (`--console`).
//!
//! - Over plain HTTP, against the real binary: `/console` exists only with
//!   `--console`, its files come with the right types and a strict CSP,
//!   the page runs no inline script, and it is not part of the API (not in
//!   the OpenAPI document).
//! - In a real browser, on SQLite and on a real redis-server: the real
//!   binary with an admin and a service API key; the user holds three
//!   streams of a plan of 3, one of them through a WebSocket that this test
//!   holds open. tests/console/browser_test.py then drives headless
//!   Chromium through selenium as a support agent would (a bad key, the
//!   admin key, an override of 5 that lets a fourth stream in, stopping the
//!   socket's stream, a service key refused on change, stop all; its
//!   docstring has the details), and this test checks that the socket was
//!   told `revoked` and closed with 4410. A user whose rate-limit bucket
//!   is empty gets the page's 429 message, and on Redis, once this test
//!   has killed redis-server, a look-up gets its 503 message.
//!
//! The SQLite run writes a screenshot to `target/tmp/console-sqlite.png`,
//! and, when `UPDATE_DOCS_SCREENSHOTS=1`, to docs/console.png as well.
//! Chromium, chromedriver and selenium must be installed; ./scripts/test
//! installs them. When one is missing, the browser test fails and says how
//! to install it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::redis::RedisServer;
use common::ws;
use common::{Process, browser};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;

const ADMIN_KEY: &str = "console-test-admin-key-0123456789";
const SERVICE_KEY: &str = "console-test-service-key-0123456789";
const USER: &str = "viewer-42";
const SOCKET_STREAM: &str = "phone-1";

#[tokio::test]
async fn the_console_is_served_only_with_the_flag_and_outside_the_api() {
    let client = browser::client();

    let off = Process::start(&["--store", "memory"]);
    for path in ["/console", "/console/console.js"] {
        let r = client.get(off.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(r.headers()["content-type"], "application/problem+json", "{path}");
    }

    let on = Process::start(&["--store", "memory", "--console"]);
    for (path, content_type, needle) in [
        ("/console", "text/html; charset=utf-8", "<dialog id=\"confirm\""),
        ("/console/console.js", "text/javascript; charset=utf-8", "sessionStorage"),
        ("/console/console.css", "text/css; charset=utf-8", "#message"),
    ] {
        let (headers, body) = browser::page_file(&client, &on, path, content_type, needle).await;
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{path}");
        assert!(!headers.contains_key("set-cookie"), "{path}");
        let csp = headers["content-security-policy"].to_str().unwrap();
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "object-src 'none'",
            "frame-ancestors 'none'",
            "form-action 'none'",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp} lacks {directive}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        if path == "/console" {
            // Every script is a file of this origin; no inline code or handler.
            assert_eq!(body.matches("<script").count(), body.matches("<script type=\"module\" src=\"console/").count());
            let handler = body.split(" on").skip(1).find(|rest| {
                let name = rest.trim_start_matches(|c: char| c.is_ascii_lowercase());
                name.len() < rest.len() && name.starts_with('=')
            });
            assert!(handler.is_none(), "{path} has an inline event handler: on{}", handler.unwrap_or_default());
            assert!(!body.contains("style="), "{path} has an inline style");
        }
    }
    browser::assert_outside_the_api(&client, &off, &on, "/console").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_headless_chromium_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(&dir, &["--store", "sqlite", "--data-dir", data.to_str().unwrap()]);
    in_the_browser(&server, "sqlite", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_headless_chromium_on_redis() {
    let mut redis = RedisServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let server = start(&dir, &["--store", "redis", "--redis-url", &redis.url()]);
    // At the end, the browser test has the store stopped: a look-up then
    // gets the page's 503 message.
    in_the_browser(&server, "redis", Some(&mut redis)).await;
}

/// The real binary with the console, an admin and a service key, a
/// default limit of 1 and a plan "standard" of 3, and leases that outlive
/// the test (so that no heartbeat is needed).
fn start(dir: &tempfile::TempDir, store: &[&str]) -> Process {
    let digest = |key: &str| -> String { Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect() };
    let config = dir.path().join("streamcap.toml");
    let text = format!(
        "[limits]\nplans = {{ standard = 3 }}\n\
         [[auth.api_keys]]\nname = \"support\"\nsha256 = \"{}\"\nscope = \"admin\"\n\
         [[auth.api_keys]]\nname = \"backend\"\nsha256 = \"{}\"\nscope = \"service\"\n",
        digest(ADMIN_KEY),
        digest(SERVICE_KEY)
    );
    std::fs::write(&config, text).unwrap();
    let mut args =
        vec!["--config", config.to_str().unwrap(), "--console", "--default-limit", "1", "--lease-ttl", "600"];
    // A user's bucket refills once a second, so that the browser test can
    // empty one for the 429 message; the session's own requests fit in
    // the burst.
    args.extend(["--user-rate-limit", "1", "--user-rate-burst", "200"]);
    args.extend(store);
    Process::start(&args)
}

async fn in_the_browser(server: &Process, store: &str, mut stop: Option<&mut RedisServer>) {
    // Two streams by heartbeats and one held by a WebSocket, oldest first.
    let client = reqwest::Client::new();
    for (stream, device, class) in [("tv-1", "living-room", "tv"), ("laptop-1", "work-laptop", "desktop")] {
        let r = client
            .put(server.url(&format!("/v1/users/{USER}/streams/{stream}")))
            .bearer_auth(ADMIN_KEY)
            .json(&serde_json::json!({
                "device_id": device, "device_class": class, "content_id": "match-9",
                "content_kind": "live", "plan": "standard",
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{stream}: {}", r.text().await.unwrap());
    }
    let url = format!(
        "{}?device_id=pocket&device_class=mobile&content_id=film-7&content_kind=vod&plan=standard",
        ws::socket(USER, SOCKET_STREAM)
    );
    let ws_url = server.url(&url).replacen("http://", "ws://", 1);
    let (mut socket, _) = ws::open_with(&ws_url, &[("authorization", &format!("Bearer {ADMIN_KEY}"))]).await;
    ws::expect(&mut socket, "granted").await;
    // The socket is read all along, as a player reads it, and what it is
    // told before it closes is kept.
    let told = tokio::spawn(async move {
        let mut messages = Vec::new();
        while let Some(Ok(m)) = socket.next().await {
            match m {
                Message::Text(text) => messages.push(serde_json::from_str::<serde_json::Value>(&text).unwrap()),
                Message::Close(frame) => return (messages, frame.map(|f| u16::from(f.code))),
                _ => {}
            }
        }
        (messages, None)
    });

    let target = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let screenshot = target.join(format!("console-{store}.png"));
    let _ = std::fs::remove_file(&screenshot);
    let mut cmd = browser::script("tests/console/browser_test.py");
    cmd.args(["--base", &server.base, "--admin-key", ADMIN_KEY, "--service-key", SERVICE_KEY])
        .args(["--user", USER, "--socket-stream", SOCKET_STREAM])
        .arg("--screenshot")
        .arg(&screenshot)
        .arg("--failure-dir")
        .arg(target);
    if stop.is_some() {
        cmd.arg("--stop-store");
    }
    // The script runs on this thread while the socket is read on the
    // runtime's other one. It prints `stop the store` when it wants the
    // store gone, and waits for an answer on stdin.
    let out = tokio::task::block_in_place(|| {
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = String::new();
        for line in BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok) {
            if line == "stop the store"
                && let Some(redis) = stop.as_deref_mut()
            {
                redis.kill9();
                writeln!(stdin, "stopped").unwrap();
            }
            stdout.push_str(&line);
            stdout.push('\n');
        }
        let mut stderr = String::new();
        child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        (child.wait().unwrap(), stdout, stderr)
    });
    let (status, stdout, stderr) = out;
    assert!(
        status.success(),
        "the browser test on {store} failed ({}):\n{stdout}\n{stderr}\n--- server log:\n{}",
        status,
        server.log()
    );
    println!("{store}: {stdout}");

    // The socket was told, then closed as a revoked stream.
    let (messages, code) = tokio::time::timeout(Duration::from_secs(10), told)
        .await
        .expect("the socket did not close after its stream was stopped")
        .unwrap();
    let revoked: Vec<_> = messages.iter().filter(|m| m["type"] == "revoked").collect();
    assert_eq!(revoked.len(), 1, "what the socket was told: {messages:?}");
    assert_eq!(revoked[0]["reason"], "revoked", "{messages:?}");
    assert_eq!(code, Some(4410), "{messages:?}");

    let png = browser::screenshot(&screenshot);
    if store == "sqlite" && std::env::var_os("UPDATE_DOCS_SCREENSHOTS").is_some_and(|v| v == "1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console.png");
        std::fs::write(&docs, &png).unwrap();
        println!("wrote {}", docs.display());
    }
}

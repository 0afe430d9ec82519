//! The demo page (`--demo`).
//!
//! - Over plain HTTP, against the real binary: `/demo` exists only with
//!   `--demo`, its files come with the right types and headers, and it is
//!   not part of the API (not in the OpenAPI document).
//! - In a real browser: tests/demo/browser_test.py drives headless Chromium
//!   through selenium against the real binary, in WebSocket and in
//!   heartbeat mode: four tabs with limit 3 leave the fourth refused,
//!   listing three streams; "watch here instead" stops the oldest tab (in
//!   WebSocket mode within 1 s, measured in the browser); closing a tab
//!   frees its seat. On a server with JWT auth, the page plays once given
//!   a token, which stays out of its address and of the server's log. It
//!   writes a screenshot of the refused tab to `target/tmp/demo.png` (the
//!   one in docs/ is a copy of one).
//!
//! Chromium, chromedriver and selenium must be installed; ./scripts/test
//! installs them. When one is missing, the browser test fails and says how
//! to install it.

mod common;

use std::path::Path;

use common::{Process, browser};

#[tokio::test]
async fn the_demo_is_served_only_with_the_flag_and_outside_the_api() {
    let client = browser::client();

    let off = Process::start(&["--store", "memory"]);
    let r = client.get(off.url("/demo")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(client.get(off.url("/demo/streamcap.js")).send().await.unwrap().status(), 404);

    let on = Process::start(&["--store", "memory", "--demo"]);
    for (path, content_type, needle) in [
        ("/demo", "text/html; charset=utf-8", "<canvas id=\"screen\""),
        ("/demo/demo.js", "text/javascript; charset=utf-8", "from './streamcap.js'"),
        ("/demo/demo.css", "text/css; charset=utf-8", "#state"),
        ("/demo/streamcap.js", "text/javascript; charset=utf-8", "export class StreamcapClient"),
    ] {
        let (headers, _) = browser::page_file(&client, &on, path, content_type, needle).await;
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{path}: {csp}");
    }
    browser::assert_outside_the_api(&client, &off, &on, "/demo").await;
}

#[test]
fn the_demo_in_headless_chromium() {
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo.png");
    let _ = std::fs::remove_file(&screenshot);
    let mut cmd = browser::script("tests/demo/browser_test.py");
    cmd.arg("--binary").arg(env!("CARGO_BIN_EXE_streamcap")).arg("--screenshot").arg(&screenshot);
    browser::run(&mut cmd);
    browser::screenshot(&screenshot);
}

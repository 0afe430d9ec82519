//! What the browser tests share. Each drives headless Chromium through
//! selenium from a Python script (tests/demo/, tests/console/ and
//! tests/cors/ `browser_test.py`, which share tests/browser/common.py);
//! [`script`] and [`run`] run one. Chromium, chromedriver and selenium
//! must be installed; ./scripts/test installs them. When one is missing,
//! the test fails and says how to install it.
//!
//! The pages the binary serves (`/demo`, `/console`) are also checked over
//! plain HTTP: [`page_file`] and [`assert_outside_the_api`].

use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::header::HeaderMap;

use super::Process;

const INSTALL: &str = "run ./scripts/test once (it installs what the tests need), or install them by hand:\n    \
     apt-get install chromium chromium-driver\n    \
     python3 -m venv target/tools/venv && target/tools/venv/bin/pip install selenium==4.51.0";

/// `python3 SCRIPT`, for a script given by its path in the repository,
/// once the tools it needs are there. The caller adds the arguments.
pub fn script(script: &str) -> Command {
    let python = python();
    require_tools(&python);
    let mut cmd = Command::new(&python);
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(script))
        // Selenium must not look for a browser or a driver online.
        .env("SE_OFFLINE", "true");
    cmd
}

/// Runs a browser test to its end and fails, with its output, unless it
/// passed. Returns its stdout, which it also prints: what it measured.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the browser test failed ({}):\n{stdout}\n{stderr}", out.status);
    println!("{stdout}");
    stdout
}

/// The screenshot a browser test wrote at `path`, which must be a PNG of
/// some size (a blank page makes a tiny one).
pub fn screenshot(path: &Path) -> Vec<u8> {
    let png = std::fs::read(path).expect("the browser test wrote no screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "not a screenshot: {} bytes", png.len());
    println!("screenshot: {}", path.display());
    png
}

/// A client that follows no redirect, to see the pages' own.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// GETs a file of a page that `server` serves, and checks what every such
/// file comes with (200, `content_type`, nosniff, no-cache) and that it
/// contains `needle`. Returns its headers and body.
pub async fn page_file(
    client: &reqwest::Client,
    server: &Process,
    path: &str,
    content_type: &str,
    needle: &str,
) -> (HeaderMap, String) {
    let r = client.get(server.url(path)).send().await.unwrap();
    assert_eq!(r.status(), 200, "{path}");
    let headers = r.headers().clone();
    assert_eq!(headers["content-type"], content_type, "{path}");
    assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
    assert_eq!(headers["cache-control"], "no-cache", "{path}");
    let body = r.text().await.unwrap();
    assert!(body.contains(needle), "{path} lacks {needle:?}");
    (headers, body)
}

/// What the page at `page` (`/demo`, `/console`) on `on` promises besides
/// its files: `PAGE/` redirects to it, nothing else is under it, it takes
/// only GET (and HEAD), and it is not part of the API: the OpenAPI
/// document is the same as `off`'s, which serves no page, and names no
/// `page`.
pub async fn assert_outside_the_api(client: &reqwest::Client, off: &Process, on: &Process, page: &str) {
    let get = |url: String| async move { client.get(url).send().await.unwrap() };
    // The same page wherever its relative links resolve the same way.
    let r = get(on.url(&format!("{page}/"))).await;
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!((r.status().as_u16(), location), (308, format!("..{page}")));
    let r = get(on.url(&format!("{page}/index.html"))).await;
    assert_eq!(r.status(), 404);
    let r = client.post(on.url(page)).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let doc = get(on.url("/openapi.json")).await.text().await.unwrap();
    assert_eq!(doc, get(off.url("/openapi.json")).await.text().await.unwrap());
    assert!(!doc.contains(page));
}

/// The Python that has selenium: the virtualenv ./scripts/test makes, or
/// else the one on PATH.
fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/venv/bin/python3");
    if venv.exists() { venv } else { PathBuf::from("python3") }
}

/// Fails, saying how to install it, when a tool the browser tests need is
/// missing.
fn require_tools(python: &Path) {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(Path::new(tool).exists(), "the browser test needs {tool}; {INSTALL}");
    }
    let selenium = Command::new(python).args(["-c", "import selenium"]).output();
    let found = selenium.as_ref().is_ok_and(|o| o.status.success());
    assert!(found, "the browser test needs selenium for {}: {selenium:?}; {INSTALL}", python.display());
}

//! The browser tests' runner: each drives headless Chromium through
//! selenium from a Python script (tests/demo/, tests/console/ and
//! tests/cors/ `browser_test.py`, which share tests/browser/common.py).
//! Chromium, chromedriver and selenium must be installed; ./scripts/test
//! installs them. When one is missing, the test fails and says how to
//! install it.

use std::path::{Path, PathBuf};
use std::process::Command;

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

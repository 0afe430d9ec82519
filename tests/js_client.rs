//! The JavaScript client's own tests (`clients/js/test/*.test.js`, Node's
//! built-in test runner) against the real binary: node starts and stops its
//! streamcap servers (and redis-server, for the store-down test) itself,
//! from the binary this build made (`STREAMCAP_BIN`).

use std::path::Path;
use std::process::Command;

/// The major version of the `node` on PATH; panics, saying how to install
/// it, when there is none.
fn node_major() -> u32 {
    let out = Command::new("node").arg("--version").output();
    let version = match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        _ => panic!("node is not installed; ./scripts/test installs it (apt-get install -y nodejs)"),
    };
    let major = version.trim_start_matches('v').split('.').next().and_then(|m| m.parse().ok());
    let major = major.unwrap_or_else(|| panic!("cannot read the version of node: {version:?}"));
    assert!(major >= 20, "node {version} is too old: the JS client needs Node 20 or later");
    major
}

#[test]
fn the_js_client_passes_its_tests_against_the_real_server() {
    let major = node_major();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The test files, named one by one: node 20 takes directories and
    // node 22 takes globs, but both take file names.
    let mut files: Vec<String> = std::fs::read_dir(root.join("clients/js/test"))
        .expect("clients/js/test")
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".test.js"))
        .map(|name| format!("clients/js/test/{name}"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no clients/js/test/*.test.js");

    let mut node = Command::new("node");
    if major < 22 {
        // The global WebSocket of node 20 and 21 is behind a flag.
        node.arg("--experimental-websocket");
    }
    // A test that hangs fails after two minutes instead of holding up the suite.
    node.args(["--test", "--test-reporter=tap", "--test-timeout=120000"]).args(&files);
    node.current_dir(root).env("STREAMCAP_BIN", env!("CARGO_BIN_EXE_streamcap"));
    let out = node.output().expect("run node");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the JS client's tests failed ({}); their TAP output is above", out.status);
}

//! Schemathesis fuzzes the real binary through its own OpenAPI document.
//!
//! `st run` reads `/openapi.json` from a running `streamcap serve`, then
//! sends the documented examples, requests built to cover each parameter's
//! edges, random valid and invalid requests, and chains of them. Any
//! answer that breaks one of these checks fails the test:
//!
//! - `not_a_server_error`: no 5xx;
//! - `status_code_conformance`: every status is documented for its route;
//! - `content_type_conformance`, `response_schema_conformance` and
//!   `response_headers_conformance`: the body's type, the body and the
//!   headers are the documented ones;
//! - `negative_data_rejection`: a request that breaks the document is
//!   refused with a 4xx;
//! - `unsupported_method`: a method a route lacks gets 405 with `Allow`.
//!
//! Two servers are fuzzed: one with an admin API key, whose requests
//! reach every route, and CORS on (so that the CORS layers are in place);
//! and one without authentication, where the `/v1/me` routes refuse every
//! request with 401. The seed is fixed, so a run is repeatable; the number
//! of examples per route is bounded, so that the test takes some 20 s on
//! two idle cores (and well under two minutes on busy ones). Against the
//! binary from before the checks were put in order, this same run reports
//! four failures (a 412 before a 400 or a 401, a 426 before a 400).
//!
//! Schemathesis must be installed (`./scripts/test` installs it into
//! target/tools/venv); when it is missing, the test fails and says how.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Process;
use sha2::{Digest, Sha256};

const INSTALL: &str = "run ./scripts/test once (it installs what the tests need), or install it by hand:\n    \
     python3 -m venv target/tools/venv && target/tools/venv/bin/pip install schemathesis==4.32.5";

const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
response_schema_conformance,response_headers_conformance,negative_data_rejection,unsupported_method";

/// The admin key of the first server (its digest is in the config file).
const ADMIN_KEY: &str = "schemathesis-admin-key-0123456789";

/// `st` from the virtualenv ./scripts/test makes, failing when missing.
fn schemathesis() -> PathBuf {
    let st = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/venv/bin/st");
    let version = Command::new(&st).arg("--version").output();
    let found = version.as_ref().is_ok_and(|o| o.status.success());
    assert!(found, "this test needs schemathesis at {}: {version:?}; {INSTALL}", st.display());
    st
}

/// Runs `st run` against `server` with `headers`, `examples` test cases
/// per route at most; fails with st's report when it reports anything.
fn fuzz(server: &Process, headers: &[String], examples: u32, label: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut st = Command::new(schemathesis());
    st.arg("run")
        .arg(server.url("/openapi.json"))
        .args(["--checks", CHECKS])
        .args(["--max-examples", &examples.to_string()])
        .args(["--seed", "20261207"])
        // One worker: with more, Hypothesis parses Python source in several
        // threads at once, which CPython 3.11's `ast` does not survive
        // ("AST constructor recursion depth mismatch").
        .args(["--workers", "1"])
        .args(["--request-timeout", "10"])
        // Keep Hypothesis' example database out of the work tree.
        .args(["--generation-database", "none"])
        .args(["--no-color", "--report-dir"])
        .arg(dir.path())
        .current_dir(dir.path());
    for h in headers {
        st.args(["--header", h]);
    }
    let started = std::time::Instant::now();
    let out = st.output().expect("run st");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{label}: st run took {:.1} s\n{stdout}", started.elapsed().as_secs_f64());
    assert!(
        out.status.success(),
        "schemathesis reported failures against the {label} server ({}):\n{stdout}\n{stderr}\nserver log:\n{}",
        out.status,
        server.log()
    );
    // A run that tested nothing would pass as well: every route must have
    // been tested ("Selected: 15/15" and "Tested: 15" in st's summary).
    let number_after = |label: &str| {
        let rest = stdout.lines().find_map(|l| l.trim().strip_prefix(label))?;
        rest.trim().split('/').next_back()?.parse::<usize>().ok()
    };
    let (routes, tested) = (number_after("Selected:"), number_after("Tested:"));
    assert!(routes.is_some_and(|n| n >= 15) && tested == routes, "{label}: not every route was tested:\n{stdout}");
}

#[test]
fn schemathesis_finds_nothing_with_an_admin_key_and_cors() {
    let dir = tempfile::tempdir().unwrap();
    let digest: String = Sha256::digest(ADMIN_KEY.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let config = dir.path().join("streamcap.toml");
    let keys = format!("[[auth.api_keys]]\nname = \"fuzzer\"\nsha256 = \"{digest}\"\nscope = \"admin\"\n");
    std::fs::write(&config, keys).unwrap();
    let server = Process::start(&[
        "--store",
        "memory",
        "--config",
        config.to_str().unwrap(),
        "--cors-allowed-origins",
        "http://player.localhost:8000",
    ]);
    fuzz(&server, &[format!("Authorization: Bearer {ADMIN_KEY}")], 60, "admin-key");
}

#[test]
fn schemathesis_finds_nothing_without_authentication() {
    let server = Process::start(&["--store", "memory"]);
    fuzz(&server, &[], 30, "open");
}

//! The Kubernetes manifests, deploy/kubernetes/, checked three ways.
//!
//! - `kubernetes-validate` (PyPI) validates every manifest, and what
//!   the kustomization builds from them, against the schemas of
//!   Kubernetes 1.30 (the oldest the manifests support: the preStop `sleep`
//!   action) and of the newest version it bundles, strictly (an unknown
//!   field is an error). It must say nothing: for a kind or an apiVersion it
//!   has no schema for, it only warns and exits 0.
//! - The facts a schema cannot know: the kustomization lists every
//!   manifest; the probes ask `/livez` and `/readyz` on the port streamcap
//!   listens on; the preStop sleep ends well before the grace period; every
//!   `STREAMCAP_*` variable is a setting of the binary; the pods run as a
//!   non-root user on a read-only root filesystem; secrets reach the pod only
//!   through the Secret; the selectors, ports and the autoscaler's target
//!   fit together.
//! - The real binary, with the Deployment's arguments and environment and
//!   the example Secret's files where the pod would mount them: it refuses
//!   to start on the placeholder key, and with a real key it serves on a
//!   real Redis, `/readyz` following Redis while `/livez` does not.
//!
//! The YAML is read by PyYAML, which comes with kubernetes-validate.
//! ./scripts/test installs both into target/tools/venv; when they are
//! missing, the tests fail and say how to install them.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use common::redis::RedisServer;
use common::{Process, binary, run_to_exit};
use serde_json::Value;

const DIR: &str = "deploy/kubernetes";

/// The oldest Kubernetes the manifests are for, and the newest schema the
/// pinned kubernetes-validate bundles.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

const INSTALL: &str = "run ./scripts/test once (it installs what the tests need), or install it by hand:\n    \
     python3 -m venv target/tools/venv && target/tools/venv/bin/pip install kubernetes-validate==1.37.0";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn dir() -> PathBuf {
    root().join(DIR)
}

/// A program of the virtualenv that ./scripts/test makes.
fn venv(program: &str) -> PathBuf {
    let path = root().join("target/tools/venv/bin").join(program);
    assert!(path.exists(), "{} is missing; {INSTALL}", path.display());
    path
}

/// The documents of a YAML file, as JSON values, read by PyYAML.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let out = Command::new(venv("python3"))
        .args([
            "-c",
            "import json, sys, yaml\n\
             docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
             json.dump(docs, sys.stdout)",
        ])
        .arg(path)
        .output()
        .expect("run the virtualenv's python3");
    assert!(
        out.status.success(),
        "cannot read {} as YAML (PyYAML: {INSTALL}):\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from PyYAML")
}

/// The one document of a file.
fn yaml(path: &Path) -> Value {
    let mut docs = yaml_docs(path);
    assert_eq!(docs.len(), 1, "{} should hold one document", path.display());
    docs.remove(0)
}

fn kustomization() -> Value {
    yaml(&dir().join("kustomization.yaml"))
}

/// What `kubectl apply -k deploy/kubernetes` applies, rendered here: the
/// listed manifests and the Secrets of the `secretGenerator`. (The test
/// renders it rather than run kustomize, which neither Debian nor PyPI
/// ships in a version new enough; the kustomization uses nothing but
/// `resources` and `secretGenerator`, which the test checks.) Returns the
/// files written, one document each, and the documents.
fn built() -> (Vec<PathBuf>, Vec<Value>) {
    let kustomization = kustomization();
    let known: BTreeSet<&str> = kustomization.as_object().expect("a mapping").keys().map(String::as_str).collect();
    let handled = BTreeSet::from(["apiVersion", "kind", "resources", "secretGenerator"]);
    assert!(known.is_subset(&handled), "the kustomization uses {known:?}; this test renders only {handled:?}");
    let mut docs = manifests();
    for generator in kustomization["secretGenerator"].as_array().expect("a secretGenerator") {
        let mut data = serde_json::Map::new();
        for file in strings(&generator["files"]) {
            let (key, path) = file.split_once('=').unwrap_or((file, file));
            let bytes = std::fs::read(dir().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
            data.insert(key.to_owned(), Value::from(base64::engine::general_purpose::STANDARD.encode(bytes)));
        }
        let labels = generator["options"]["labels"].clone();
        docs.push(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": { "name": generator["name"], "labels": labels },
            "type": "Opaque",
            "data": data,
        }));
    }
    // One file per document and per call: the tests run in parallel. JSON
    // is YAML.
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let files = docs
        .iter()
        .enumerate()
        .map(|(i, doc)| {
            let name = format!("kustomize-{}-{call}-{i}.yaml", std::process::id());
            let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
            std::fs::write(&file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
            file
        })
        .collect();
    (files, docs)
}

/// The manifests the kustomization lists, as paths.
fn resources(kustomization: &Value, base: &Path) -> Vec<PathBuf> {
    strings(&kustomization["resources"]).into_iter().map(|r| base.join(r)).collect()
}

fn strings(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap_or_else(|| panic!("expected a list, found {list}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_else(|| panic!("expected a string, found {v}")))
        .collect()
}

/// The one document of `kind` among `docs`.
fn only<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "there should be exactly one {kind}, there are {}", found.len());
    found[0]
}

/// Every document of every manifest the kustomization lists.
fn manifests() -> Vec<Value> {
    resources(&kustomization(), &dir()).iter().flat_map(|p| yaml_docs(p)).collect()
}

fn deployment(docs: &[Value]) -> &Value {
    only(docs, "Deployment")
}

fn container(deployment: &Value) -> &Value {
    let containers = deployment["spec"]["template"]["spec"]["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container: streamcap");
    &containers[0]
}

/// The container's environment, name → value. Every variable has a plain
/// value: none comes from a ConfigMap or a Secret key.
fn environment(container: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for var in container["env"].as_array().expect("env") {
        let name = var["name"].as_str().expect("name").to_owned();
        let value = var["value"].as_str().unwrap_or_else(|| panic!("{name} should have a plain value: {var}"));
        assert!(env.insert(name.clone(), value.to_owned()).is_none(), "{name} is set twice");
    }
    env
}

/// The container port called `name`.
fn container_port(container: &Value, name: &str) -> u64 {
    let ports = container["ports"].as_array().expect("ports");
    let port = ports.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no container port {name}"));
    port["containerPort"].as_u64().expect("containerPort")
}

/// The port of a `HOST:PORT` setting.
fn port_of(addr: &str) -> u64 {
    addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or_else(|| panic!("no port in {addr}"))
}

#[test]
fn the_manifests_and_the_kustomize_build_pass_kubernetes_validate_with_no_findings() {
    let (built, docs) = built();
    let mut files = resources(&kustomization(), &dir());
    files.extend(built);
    let mut cmd = Command::new(venv("kubernetes-validate"));
    cmd.args(["--strict", "--quiet"]);
    for version in KUBERNETES_VERSIONS {
        cmd.args(["--kubernetes-version", version]);
    }
    let out = cmd.args(&files).output().expect("run kubernetes-validate");
    let findings = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && findings.trim().is_empty() && stderr.trim().is_empty(),
        "kubernetes-validate exited with {} and reported:\n{findings}{stderr}",
        out.status
    );
    // It checked something: every kind the build holds has a schema.
    let kinds: BTreeSet<&str> = docs.iter().map(|d| d["kind"].as_str().expect("kind")).collect();
    let expected = ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret", "Service"];
    assert_eq!(kinds, BTreeSet::from(expected), "what the kustomization builds");
}

#[test]
fn the_kustomization_lists_every_manifest_and_its_generators_files_exist() {
    // Every YAML file beside the kustomization is one of its resources, and
    // the optional component's every file is one of the component's.
    for (base, kustomization_kind) in [(dir(), "Kustomization"), (dir().join("optional/servicemonitor"), "Component")] {
        let kustomization = yaml(&base.join("kustomization.yaml"));
        assert_eq!(kustomization["kind"], kustomization_kind, "{}", base.display());
        let listed: BTreeSet<PathBuf> = resources(&kustomization, &base).into_iter().collect();
        let present: BTreeSet<PathBuf> = std::fs::read_dir(&base)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .filter(|p| !p.ends_with("kustomization.yaml"))
            .collect();
        assert_eq!(listed, present, "the resources of {}/kustomization.yaml", base.display());
    }
    for generator in kustomization()["secretGenerator"].as_array().expect("a secretGenerator") {
        for file in strings(&generator["files"]) {
            let path = file.split_once('=').map_or(file, |(_, path)| path);
            assert!(dir().join(path).is_file(), "the secretGenerator's {path} is missing");
        }
    }
}

#[test]
fn the_deployment_runs_streamcap_on_redis_with_its_probes_on_livez_and_readyz_at_its_port() {
    let docs = manifests();
    let container = container(deployment(&docs));
    let env = environment(container);
    assert_eq!(env["STREAMCAP_STORE"], "redis");
    let http = container_port(container, "http");
    assert_eq!(port_of(&env["STREAMCAP_LISTEN"]), http, "STREAMCAP_LISTEN and the container port `http`");
    assert!(env["STREAMCAP_LISTEN"].starts_with("0.0.0.0:"), "a pod is reached on its own address, not loopback");
    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        let port = match &get["port"] {
            Value::String(name) => container_port(container, name),
            number => number.as_u64().expect("a port"),
        };
        assert_eq!(port, http, "{probe} must ask the API port");
        assert!(get.get("scheme").is_none_or(|s| s == "HTTP"), "{probe}: streamcap serves plain HTTP");
    }
    // /readyz bounds its store ping at 2 s; a shorter timeout would fail
    // the probe while the ping still waits.
    assert!(container["readinessProbe"]["timeoutSeconds"].as_u64().unwrap_or(1) > 2, "readinessProbe.timeoutSeconds");
}

#[test]
fn the_prestop_sleep_ends_long_enough_before_the_grace_period_for_streamcap_to_drain() {
    let docs = manifests();
    let deployment = deployment(&docs);
    let container = container(deployment);
    let sleep = container["lifecycle"]["preStop"]["sleep"]["seconds"].as_u64().expect("a preStop sleep action");
    assert!(sleep > 0, "a preStop sleep of 0 drains nothing");
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"].as_u64().expect("grace");
    // After SIGTERM, requests in flight may run until --request-timeout.
    let timeout: u64 = default_of("STREAMCAP_REQUEST_TIMEOUT").parse().unwrap();
    assert!(
        sleep + timeout < grace,
        "preStop sleep {sleep} s + request timeout {timeout} s must end before the {grace} s grace period"
    );
}

#[test]
fn the_pods_run_as_non_root_with_a_read_only_root_filesystem_and_no_privileges() {
    let docs = manifests();
    let deployment = deployment(&docs);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = container(deployment);
    let (pod_sc, sc) = (&pod["securityContext"], &container["securityContext"]);
    // A container setting wins over the pod's.
    let setting = |key: &str| if sc.get(key).is_some() { &sc[key] } else { &pod_sc[key] };
    assert_eq!(setting("runAsNonRoot"), true);
    // The image names its user; runAsNonRoot needs a number to check.
    assert!(setting("runAsUser").as_u64().is_some_and(|uid| uid > 0), "runAsUser must be a non-root UID");
    assert_eq!(setting("seccompProfile")["type"], "RuntimeDefault");
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(sc["capabilities"].get("add").is_none(), "no capability is added");
    assert!(sc.get("privileged").is_none_or(|p| p == false));
    assert_eq!(pod["automountServiceAccountToken"], false, "streamcap never calls the Kubernetes API");
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        assert_eq!(mount["readOnly"], true, "{mount}: streamcap on Redis writes no file");
    }
    let resources = &container["resources"];
    for key in ["requests", "limits"] {
        for what in ["cpu", "memory"] {
            assert!(resources[key][what].is_string(), "resources.{key}.{what}");
        }
    }
}

#[test]
fn secrets_reach_the_pod_only_from_the_secret_and_the_example_key_cannot_start() {
    let (_, built) = built();
    assert!(!built.iter().any(|d| d["kind"] == "ConfigMap"), "a ConfigMap is no place for the config file");
    let secret = only(&built, "Secret");
    let keys: BTreeSet<&str> = secret["data"].as_object().expect("data").keys().map(String::as_str).collect();
    assert_eq!(keys, BTreeSet::from(["jwt.secret", "streamcap.toml"]));
    // The config file and the key are read from the Secret's volume.
    let deployment = deployment(&built);
    let volumes = deployment["spec"]["template"]["spec"]["volumes"].as_array().expect("volumes");
    let volume = volumes.iter().find(|v| v["secret"]["secretName"] == secret["metadata"]["name"]).expect("its volume");
    let container = container(deployment);
    let mount = container["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == volume["name"]).unwrap();
    let mount = mount["mountPath"].as_str().unwrap();
    let env = environment(container);
    assert_eq!(env["STREAMCAP_CONFIG"], format!("{mount}/streamcap.toml"));
    let config = std::fs::read_to_string(dir().join("example-secret/streamcap.toml")).unwrap();
    assert!(config.contains(&format!("jwt_secret_file = \"{mount}/jwt.secret\"")), "the config names the mounted key");
    // No secret in the environment: the HS256 key only ever as a file.
    assert!(!env.contains_key("STREAMCAP_JWT_SECRET"));
    // The example key is a placeholder that HS256 refuses (under 32 bytes),
    // never a key someone could mint tokens with.
    let key = std::fs::read_to_string(dir().join("example-secret/jwt.secret")).unwrap();
    assert!(key.trim_end().len() < 32, "the example key must be too short to use: {key:?}");
}

#[test]
fn the_service_the_budget_the_autoscaler_and_the_scrape_settings_fit_the_deployment() {
    let docs = manifests();
    let deployment = deployment(&docs);
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let selects = |selector: &Value| {
        let selector = selector.as_object().expect("a selector");
        !selector.is_empty() && selector.iter().all(|(k, v)| &labels[k] == v)
    };
    assert!(selects(&deployment["spec"]["selector"]["matchLabels"]));
    let container = container(deployment);
    let env = environment(container);

    let service = only(&docs, "Service");
    assert!(selects(&service["spec"]["selector"]), "the Service selects the pods");
    for port in service["spec"]["ports"].as_array().expect("ports") {
        container_port(container, port["targetPort"].as_str().expect("a named targetPort"));
    }

    let budget = only(&docs, "PodDisruptionBudget");
    assert!(selects(&budget["spec"]["selector"]["matchLabels"]), "the budget selects the pods");
    assert_eq!(budget["spec"]["maxUnavailable"], 1);

    let hpa = only(&docs, "HorizontalPodAutoscaler");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!((&target["kind"], &target["name"]), (&deployment["kind"], &deployment["metadata"]["name"]));
    assert!(hpa["spec"]["minReplicas"].as_u64().is_some_and(|n| n >= 2), "one instance is no high availability");
    let metrics = hpa["spec"]["metrics"].as_array().expect("metrics");
    assert!(metrics.iter().any(|m| m["resource"]["name"] == "cpu"), "the autoscaler follows CPU");
    assert!(container["resources"]["requests"]["cpu"].is_string(), "CPU utilization is relative to the request");
    // The autoscaler owns the count: a count in the Deployment would be
    // reset to on every apply.
    assert!(deployment["spec"].get("replicas").is_none(), "the Deployment must leave replicas to the autoscaler");

    // Prometheus scrapes the separate metrics listener.
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    let metrics_port = container_port(container, "metrics");
    assert_eq!(port_of(&env["STREAMCAP_METRICS_LISTEN"]), metrics_port);
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], metrics_port.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    let monitor = yaml(&dir().join("optional/servicemonitor/servicemonitor.yaml"));
    assert_eq!(monitor["kind"], "ServiceMonitor");
    assert!(selects(&monitor["spec"]["selector"]["matchLabels"]));
    assert!(service["metadata"]["labels"].as_object().unwrap().iter().all(|(k, v)| &labels[k] == v));
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    let scraped = service["spec"]["ports"].as_array().unwrap().iter().find(|p| p["name"] == endpoint["port"]);
    assert_eq!(scraped.expect("the ServiceMonitor's port is the Service's")["targetPort"], "metrics");
}

#[test]
fn every_streamcap_variable_is_a_setting_of_the_binary() {
    let help = common::serve_help_variables();
    for (name, _) in environment(container(deployment(&manifests()))) {
        assert!(name.starts_with("STREAMCAP_"), "{name}: the pod sets only STREAMCAP_* settings");
        assert!(help.contains_key(&name), "{name} is not a variable that `streamcap serve --help` names");
    }
}

/// The default of a variable, as `streamcap serve --help` gives it.
fn default_of(var: &str) -> String {
    common::serve_help_variables()
        .remove(var)
        .flatten()
        .unwrap_or_else(|| panic!("`serve --help` gives no default for {var}"))
}

/// The pod's `streamcap` command line and environment, with the example
/// Secret's files copied to where `secret_dir` stands in for the mount.
fn pod_command(secret_dir: &Path) -> Command {
    let docs = manifests();
    let deployment = deployment(&docs);
    let container = container(deployment);
    let mount = container["volumeMounts"][0]["mountPath"].as_str().expect("the Secret's mount");
    let here = secret_dir.to_str().unwrap();
    for generator in kustomization()["secretGenerator"].as_array().unwrap() {
        for file in strings(&generator["files"]) {
            let (key, path) = file.split_once('=').expect("KEY=PATH");
            let text = std::fs::read_to_string(dir().join(path)).unwrap();
            std::fs::write(secret_dir.join(key), text.replace(mount, here)).unwrap();
        }
    }
    let mut cmd = binary();
    cmd.args(strings(&container["args"]));
    for (name, value) in environment(container) {
        cmd.env(name, value.replace(mount, here));
    }
    // Loopback here, where the pod listens on its own address.
    cmd.env("STREAMCAP_LISTEN", "127.0.0.1:0").env("STREAMCAP_METRICS_LISTEN", "127.0.0.1:0");
    cmd
}

#[tokio::test]
async fn the_pods_configuration_starts_the_real_binary_on_redis_once_given_a_real_key() {
    let secret = tempfile::tempdir().unwrap();

    // As shipped, the example Secret cannot serve: the placeholder key is
    // refused before anything starts.
    let (status, stderr) = run_to_exit(&mut pod_command(secret.path()));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("the HS256 secret must be at least 32 bytes"), "{stderr}");

    // With a real key and a reachable Redis (the example's redis_url names
    // a host of the cluster; the environment wins over the file), it serves.
    let mut redis = RedisServer::start(&[]);
    let mut cmd = pod_command(secret.path());
    std::fs::write(secret.path().join("jwt.secret"), "0123456789abcdef0123456789abcdef\n").unwrap();
    cmd.env("STREAMCAP_REDIS_URL", redis.url());
    let server = Process::start_cmd(&mut cmd);
    assert!(server.log().contains(r#""store":"redis""#), "{}", server.log());
    // The metrics listener starts right after the API's.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let log = server.log();
        let addr = log
            .lines()
            .filter(|l| l.contains("serving /metrics"))
            .find_map(|l| serde_json::from_str::<Value>(l).ok()?["fields"]["addr"].as_str().map(str::to_owned));
        match addr {
            Some(addr) => break addr,
            None if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            None => panic!("no metrics listener in the log:\n{log}"),
        }
    };

    let client = reqwest::Client::new();
    let status = |url: String| {
        let client = client.clone();
        async move { client.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(server.url("/livez")).await, 200);
    assert_eq!(status(server.url("/readyz")).await, 200);
    assert_eq!(status(format!("http://{metrics}/metrics")).await, 200);
    assert_eq!(status(server.url("/metrics")).await, 404, "metrics stay off the API port");
    assert_eq!(status(server.url("/v1/me/streams")).await, 401, "the API needs a credential");

    // Redis gone: not ready, so the Service stops sending traffic, but
    // alive, so the kubelet does not restart a pod that a restart cannot fix.
    redis.kill9();
    let r = client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(status(server.url("/livez")).await, 200);

    let (status, log) = server.terminate();
    assert!(status.success() && log.contains("stopped cleanly"), "{status}\n{log}");
}

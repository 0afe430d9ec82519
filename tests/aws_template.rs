//! The AWS SAM template, deploy/aws/template.yaml, checked two ways.
//!
//! - `cfn-lint` (PyPI), which runs the SAM transform and validates the
//!   result against the CloudFormation schemas, must report nothing, not
//!   even an informational finding. `./scripts/test` installs it.
//! - The facts a careless edit would break, which cfn-lint cannot know:
//!   the table's key and TTL attribute, the function's runtime, architecture
//!   and package path, IAM limited to the five item operations on the table,
//!   every `STREAMCAP_*` variable a real setting of the binary with the
//!   binary's defaults, `STREAMCAP_INSECURE_NO_AUTH` unset unless asked
//!   for; and the WebSocket API: its three routes and authorizer on the
//!   function, its stage, the permission to invoke, `ManageConnections` on
//!   this API's stage alone, the endpoint the function posts to, and the
//!   `wss://` URL.
//!
//! SAM templates use CloudFormation's short-form tags (`!Ref`, `!If`), which
//! general YAML crates either reject or drop. `yaml` below reads the subset
//! of YAML the template is written in and keeps the tags; anything outside
//! that subset panics with its line, so a restyled template fails here
//! instead of being misread.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use yaml::Yaml;

const TEMPLATE: &str = "deploy/aws/template.yaml";

/// The only DynamoDB actions the function may have: streamcap's item
/// operations. It checks the table with a GetItem, so not DescribeTable.
const TABLE_ACTIONS: [&str; 5] =
    ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:Query"];

/// What the function may do besides: write its own logs.
const LOG_ACTIONS: [&str; 2] = ["logs:CreateLogStream", "logs:PutLogEvents"];

/// And post to and close the WebSocket API's connections.
const CONNECTION_ACTIONS: [&str; 1] = ["execute-api:ManageConnections"];

/// The stage of the WebSocket API, which the endpoint, the IAM resource and
/// the URL name.
const WEBSOCKET_STAGE: &str = "live";

/// The variables streamcap-lambda reads that `serve` has no use for.
const LAMBDA_ONLY: [&str; 1] = ["STREAMCAP_WEBSOCKET_ENDPOINT"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn template() -> Yaml {
    let path = root().join(TEMPLATE);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    yaml::parse(&text)
}

/// The logical ids and bodies of the resources of `kind`.
fn resources<'a>(template: &'a Yaml, kind: &str) -> Vec<(&'a str, &'a Yaml)> {
    template
        .at(&["Resources"])
        .entries()
        .iter()
        .filter(|(_, r)| r.get("Type").map(Yaml::str) == Some(kind))
        .map(|(id, r)| (id.as_str(), r))
        .collect()
}

/// The one resource of `kind`.
fn only<'a>(template: &'a Yaml, kind: &str) -> (&'a str, &'a Yaml) {
    let found = resources(template, kind);
    assert_eq!(found.len(), 1, "{TEMPLATE} should have exactly one {kind}, has {}", found.len());
    found[0]
}

fn tagged(tag: &str, arg: &str) -> Yaml {
    Yaml::Tagged(tag.into(), Box::new(Yaml::Scalar(arg.into())))
}

fn scalar(s: &str) -> Yaml {
    Yaml::Scalar(s.into())
}

fn map(entries: &[(&str, Yaml)]) -> Yaml {
    Yaml::Map(entries.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
}

#[test]
fn the_template_passes_cfn_lint_with_no_findings() {
    let out = match Command::new("cfn-lint")
        .args(["--non-zero-exit-code", "informational", "--format", "parseable", TEMPLATE])
        .current_dir(root())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "cfn-lint is not on PATH. ./scripts/test installs it (pip install cfn-lint, into \
             target/tools/venv) and puts it on PATH; run the tests through ./scripts/test, or install \
             cfn-lint yourself"
        ),
        Err(e) => panic!("cannot run cfn-lint: {e}"),
    };
    let findings = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && findings.trim().is_empty() && stderr.trim().is_empty(),
        "cfn-lint {TEMPLATE} exited with {} and reported:\n{findings}{stderr}",
        out.status
    );
}

#[test]
fn the_table_is_on_demand_keyed_by_user_id_alone_with_ttl_on_expires_at() {
    let t = template();
    let (_, table) = only(&t, "AWS::DynamoDB::Table");
    let props = table.at(&["Properties"]);
    assert_eq!(props.at(&["BillingMode"]).str(), "PAY_PER_REQUEST");
    assert_eq!(
        props.at(&["KeySchema"]),
        &Yaml::Seq(vec![map(&[("AttributeName", scalar("user_id")), ("KeyType", scalar("HASH"))])]),
        "the partition key is user_id, with no sort key"
    );
    assert_eq!(
        props.at(&["AttributeDefinitions"]),
        &Yaml::Seq(vec![map(&[("AttributeName", scalar("user_id")), ("AttributeType", scalar("S"))])]),
        "user_id is a string, and no other attribute is declared"
    );
    let ttl = props.at(&["TimeToLiveSpecification"]);
    assert_eq!(ttl.at(&["AttributeName"]).str(), "expires_at");
    assert_eq!(ttl.at(&["Enabled"]).str(), "true");
    assert!(props.get("TableName").is_none(), "a fixed table name would allow only one stack per account and region");
}

#[test]
fn the_function_is_streamcap_lambda_on_arm64_al2023_with_the_dynamodb_store() {
    let t = template();
    let (table, _) = only(&t, "AWS::DynamoDB::Table");
    let (_, function) = only(&t, "AWS::Serverless::Function");
    let props = function.at(&["Properties"]);
    assert_eq!(props.at(&["Runtime"]).str(), "provided.al2023");
    assert_eq!(props.at(&["Architectures"]), &Yaml::Seq(vec![scalar("arm64")]));
    assert_eq!(props.at(&["Handler"]).str(), "bootstrap");

    // SAM resolves CodeUri against the template's directory; cargo-lambda
    // puts the function at target/lambda/<binary>/bootstrap.
    let code = Path::new(TEMPLATE).parent().expect("a directory").join(props.at(&["CodeUri"]).str());
    assert_eq!(normalize(&code), Path::new("target/lambda/streamcap-lambda"), "CodeUri {code:?}");

    let env = props.at(&["Environment", "Variables"]);
    assert_eq!(env.at(&["STREAMCAP_STORE"]).str(), "dynamodb");
    assert_eq!(env.at(&["STREAMCAP_DYNAMODB_TABLE"]), &tagged("!Ref", table));
}

/// `path` without `.` and with each `dir/..` removed.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => assert!(out.pop(), "{path:?} leaves the repository"),
            c => out.push(c),
        }
    }
    out
}

#[test]
fn the_function_may_use_only_the_five_item_operations_on_its_table_and_its_logs() {
    let t = template();
    let (table, _) = only(&t, "AWS::DynamoDB::Table");
    let (log_group, _) = only(&t, "AWS::Logs::LogGroup");
    let (role, role_body) = only(&t, "AWS::IAM::Role");
    let (_, function) = only(&t, "AWS::Serverless::Function");
    let props = function.at(&["Properties"]);
    assert_eq!(props.at(&["Role"]), &tagged("!GetAtt", &format!("{role}.Arn")), "the function runs as {role}");
    for sam_grants in ["Policies", "PermissionsBoundary", "Connectors"] {
        assert!(props.get(sam_grants).is_none(), "the function's {sam_grants} would grant more than {role} does");
    }
    for kind in ["AWS::IAM::Policy", "AWS::IAM::ManagedPolicy", "AWS::Serverless::Connector"] {
        assert!(resources(&t, kind).is_empty(), "a {kind} would grant more than {role} does");
    }
    assert!(role_body.at(&["Properties"]).get("ManagedPolicyArns").is_none(), "managed policies grant more");

    let mut granted: BTreeMap<String, Vec<Yaml>> = BTreeMap::new();
    for policy in role_body.at(&["Properties", "Policies"]).items() {
        for statement in policy.at(&["PolicyDocument", "Statement"]).items() {
            assert_eq!(statement.at(&["Effect"]).str(), "Allow");
            assert!(statement.get("NotAction").is_none() && statement.get("NotResource").is_none());
            let actions: Vec<&str> = match statement.at(&["Action"]) {
                Yaml::Seq(items) => items.iter().map(Yaml::str).collect(),
                one => vec![one.str()],
            };
            for action in actions {
                granted.entry(action.to_owned()).or_default().push(statement.at(&["Resource"]).clone());
            }
        }
    }
    let expected: BTreeSet<&str> =
        TABLE_ACTIONS.iter().chain(&LOG_ACTIONS).chain(&CONNECTION_ACTIONS).copied().collect();
    let actual: BTreeSet<&str> = granted.keys().map(String::as_str).collect();
    assert_eq!(actual, expected, "the function's role grants other actions than streamcap needs");
    let (api, _) = only(&t, "AWS::ApiGatewayV2::Api");
    for (action, on) in &granted {
        if action.starts_with("execute-api:") {
            let connections = format!(
                "arn:${{AWS::Partition}}:execute-api:${{AWS::Region}}:${{AWS::AccountId}}:${{{api}}}/{WEBSOCKET_STAGE}/*/@connections/*"
            );
            assert_eq!(on, &vec![tagged("!Sub", &connections)], "{action} must apply to {api}'s connections only");
            continue;
        }
        let target = if action.starts_with("dynamodb:") { table } else { log_group };
        assert_eq!(on, &vec![tagged("!GetAtt", &format!("{target}.Arn"))], "{action} must apply to {target} only");
    }
}

#[test]
fn every_streamcap_variable_is_a_setting_of_the_binary_and_defaults_to_its_default() {
    let t = template();
    let (_, function) = only(&t, "AWS::Serverless::Function");
    let env = function.at(&["Properties", "Environment", "Variables"]);
    let help = common::serve_help_variables();
    let parameters = t.at(&["Parameters"]);
    for (name, value) in env.entries() {
        assert!(name.starts_with("STREAMCAP_"), "{name}: the function reads only STREAMCAP_* settings");
        if LAMBDA_ONLY.contains(&name.as_str()) {
            continue;
        }
        let Some(default) = help.get(name) else {
            panic!("{name} is not a variable that `streamcap serve --help` names; a misspelt name is ignored")
        };
        // A variable set straight from a parameter starts at the binary's
        // default, so an operator who leaves a parameter alone gets the
        // behaviour the docs describe.
        if let Yaml::Tagged(tag, parameter) = value
            && tag == "!Ref"
            && let Some(parameter) = parameters.get(parameter.str())
            && let Some(default) = default
        {
            let default = DELIBERATE_DEFAULTS.iter().find(|(n, _)| n == name).map_or(default.as_str(), |(_, d)| d);
            assert_eq!(parameter.at(&["Default"]).str(), default, "the parameter behind {name}");
        }
    }
}

/// Where the template's default differs from the binary's, on purpose. The
/// binary's `none` serves only on loopback, which a Lambda function never
/// is: with it, the function would refuse to start unless given API keys
/// or told to run without authentication. `jwt` is what a player-facing API
/// uses, and `sam deploy --guided` asks for its key next.
///
/// The binary's socket lease TTL is the heartbeat TTL's; on Lambda a
/// socket that is released when it closes can live longer, and each
/// renewal is billed: 900 s is the TTL docs/aws.md recommends and prices.
const DELIBERATE_DEFAULTS: [(&str, &str); 2] = [("STREAMCAP_AUTH_MODE", "jwt"), ("STREAMCAP_SOCKET_LEASE_TTL", "900")];

#[test]
fn insecure_no_auth_is_set_only_when_its_parameter_says_true() {
    let t = template();
    let (_, function) = only(&t, "AWS::Serverless::Function");
    let env = function.at(&["Properties", "Environment", "Variables"]);
    // Set under a condition, so that a trial stack can ask for it.
    let value = env
        .get("STREAMCAP_INSECURE_NO_AUTH")
        .unwrap_or_else(|| panic!("the function's environment never sets STREAMCAP_INSECURE_NO_AUTH: {env:?}"));
    // !If [Condition, "true", !Ref AWS::NoValue], with a condition that
    // holds only when a parameter that defaults to "false" is "true".
    let Yaml::Tagged(tag, args) = value else { panic!("STREAMCAP_INSECURE_NO_AUTH is set unconditionally: {value:?}") };
    assert_eq!(tag, "!If", "STREAMCAP_INSECURE_NO_AUTH must be set only under a condition");
    let [condition, when_true, otherwise] = args.items() else { panic!("!If takes three arguments: {args:?}") };
    assert_eq!(when_true.str(), "true");
    assert_eq!(otherwise, &tagged("!Ref", "AWS::NoValue"), "otherwise the variable must be absent");
    let condition = t.at(&["Conditions", condition.str()]);
    let Yaml::Tagged(tag, args) = condition else { panic!("condition {condition:?}") };
    assert_eq!(tag, "!Equals", "the condition must compare a parameter with \"true\"");
    let [Yaml::Tagged(reference, parameter), value] = args.items() else { panic!("condition {condition:?}") };
    assert_eq!((reference.as_str(), value.str()), ("!Ref", "true"));
    assert_eq!(t.at(&["Parameters", parameter.str(), "Default"]).str(), "false");
}

#[test]
fn the_http_api_sends_every_request_to_the_function_in_payload_format_2() {
    let t = template();
    let (api, _) = only(&t, "AWS::Serverless::HttpApi");
    let (_, function) = only(&t, "AWS::Serverless::Function");
    let events = function.at(&["Properties", "Events"]).entries();
    assert_eq!(events.len(), 1, "one event source: the HTTP API");
    let event = &events[0].1;
    assert_eq!(event.at(&["Type"]).str(), "HttpApi");
    let props = event.at(&["Properties"]);
    assert_eq!(props.at(&["ApiId"]), &tagged("!Ref", api));
    assert_eq!(props.at(&["PayloadFormatVersion"]).str(), "2.0");
    // Without a path and a method, SAM makes the API's default route.
    assert!(props.get("Path").is_none() && props.get("Method").is_none(), "every route goes to streamcap's router");
}

#[test]
fn the_websocket_api_sends_its_three_routes_and_its_authorizer_to_the_function() {
    let t = template();
    let (api, body) = only(&t, "AWS::ApiGatewayV2::Api");
    let (function, _) = only(&t, "AWS::Serverless::Function");
    assert_eq!(body.at(&["Properties", "ProtocolType"]).str(), "WEBSOCKET");
    let invoke = format!(
        "arn:${{AWS::Partition}}:apigateway:${{AWS::Region}}:lambda:path/2015-03-31/functions/${{{function}.Arn}}/invocations"
    );
    let (integration, body) = only(&t, "AWS::ApiGatewayV2::Integration");
    let props = body.at(&["Properties"]);
    assert_eq!(props.at(&["ApiId"]), &tagged("!Ref", api));
    assert_eq!(props.at(&["IntegrationType"]).str(), "AWS_PROXY");
    assert_eq!(props.at(&["IntegrationUri"]), &tagged("!Sub", &invoke));
    let (authorizer, body) = only(&t, "AWS::ApiGatewayV2::Authorizer");
    let props = body.at(&["Properties"]);
    assert_eq!(props.at(&["AuthorizerType"]).str(), "REQUEST");
    assert_eq!(props.at(&["AuthorizerUri"]), &tagged("!Sub", &invoke));
    assert!(props.get("IdentitySource").is_none(), "a connect without a credential must reach streamcap, for its 401");

    let mut routes: BTreeMap<String, &Yaml> = BTreeMap::new();
    for (_, route) in resources(&t, "AWS::ApiGatewayV2::Route") {
        let props = route.at(&["Properties"]);
        assert_eq!(props.at(&["ApiId"]), &tagged("!Ref", api));
        assert_eq!(props.at(&["Target"]), &tagged("!Sub", &format!("integrations/${{{integration}}}")));
        routes.insert(props.at(&["RouteKey"]).str().to_owned(), props);
    }
    let keys: Vec<&str> = routes.keys().map(String::as_str).collect();
    assert_eq!(keys, ["$connect", "$default", "$disconnect"]);
    // The authorizer admits the connect and hands its ticket to the rest.
    assert_eq!(routes["$connect"].at(&["AuthorizationType"]).str(), "CUSTOM");
    assert_eq!(routes["$connect"].at(&["AuthorizerId"]), &tagged("!Ref", authorizer));

    let (_, stage) = only(&t, "AWS::ApiGatewayV2::Stage");
    let (deployment, body) = only(&t, "AWS::ApiGatewayV2::Deployment");
    assert_eq!(stage.at(&["Properties", "StageName"]).str(), WEBSOCKET_STAGE);
    assert_eq!(stage.at(&["Properties", "DeploymentId"]), &tagged("!Ref", deployment));
    // A deployment made before the routes would deploy none of them.
    let Yaml::Seq(after) = body.at(&["DependsOn"]) else { panic!("the deployment must wait for the routes") };
    assert_eq!(after.len(), 3, "{after:?}");

    let (_, permission) = only(&t, "AWS::Lambda::Permission");
    let props = permission.at(&["Properties"]);
    assert_eq!(props.at(&["FunctionName"]), &tagged("!Ref", function));
    assert_eq!(props.at(&["Principal"]).str(), "apigateway.amazonaws.com");
    assert_eq!(props.at(&["Action"]).str(), "lambda:InvokeFunction");
    let source = format!("arn:${{AWS::Partition}}:execute-api:${{AWS::Region}}:${{AWS::AccountId}}:${{{api}}}/*");
    assert_eq!(props.at(&["SourceArn"]), &tagged("!Sub", &source), "only this API may invoke");

    let (_, function) = only(&t, "AWS::Serverless::Function");
    let env = function.at(&["Properties", "Environment", "Variables"]);
    let host = format!("${{{api}}}.execute-api.${{AWS::Region}}.${{AWS::URLSuffix}}/{WEBSOCKET_STAGE}");
    assert_eq!(env.at(&["STREAMCAP_WEBSOCKET_ENDPOINT"]), &tagged("!Sub", &format!("https://{host}")));
    assert_eq!(t.at(&["Outputs", "WebSocketUrl", "Value"]), &tagged("!Sub", &format!("wss://{host}")));
}

#[test]
fn the_outputs_give_the_api_url_and_the_table_name() {
    let t = template();
    let (table, _) = only(&t, "AWS::DynamoDB::Table");
    let (api, _) = only(&t, "AWS::Serverless::HttpApi");
    let outputs = t.at(&["Outputs"]);
    assert_eq!(outputs.at(&["TableName", "Value"]), &tagged("!Ref", table));
    let Yaml::Tagged(tag, url) = outputs.at(&["ApiUrl", "Value"]) else { panic!("ApiUrl") };
    assert_eq!(tag, "!Sub");
    let url = url.str();
    assert!(url.starts_with(&format!("https://${{{api}}}.execute-api.")), "ApiUrl {url}");
}

#[test]
fn the_yaml_reader_reads_the_forms_the_template_uses() {
    let doc = yaml::parse(
        "# a comment\n\
         A: one # trailing comment\n\
         B: \"quoted: #1\"\n\
         C: >-\n  folded\n  text\n\
         D: [x, \"y\", !Ref Z]\n\
         E:\n  - Name: n\n    Kind: k\n  - !GetAtt T.Arn\n\
         F: !If\n  - Cond\n  - !Not [!Equals [!Ref P, \"\"]]\n  - Key: v\n\
         G:\n- item\n",
    );
    let expected = map(&[
        ("A", scalar("one")),
        ("B", scalar("quoted: #1")),
        ("C", scalar("folded text")),
        ("D", Yaml::Seq(vec![scalar("x"), scalar("y"), tagged("!Ref", "Z")])),
        ("E", Yaml::Seq(vec![map(&[("Name", scalar("n")), ("Kind", scalar("k"))]), tagged("!GetAtt", "T.Arn")])),
        (
            "F",
            Yaml::Tagged(
                "!If".into(),
                Box::new(Yaml::Seq(vec![
                    scalar("Cond"),
                    Yaml::Tagged(
                        "!Not".into(),
                        Box::new(Yaml::Seq(vec![Yaml::Tagged(
                            "!Equals".into(),
                            Box::new(Yaml::Seq(vec![tagged("!Ref", "P"), scalar("")])),
                        )])),
                    ),
                    map(&[("Key", scalar("v"))]),
                ])),
            ),
        ),
        ("G", Yaml::Seq(vec![scalar("item")])),
    ]);
    assert_eq!(doc, expected);
    for outside in ["A: {x: 1}\n", "A: &anchor x\n", "A: 1\n   B: 2\n", "A: |\n  x\nB: *anchor\n"] {
        assert!(std::panic::catch_unwind(|| yaml::parse(outside)).is_err(), "{outside:?} should be refused");
    }
}

/// A reader for the subset of YAML that the template uses.
mod yaml {
    /// A node. Short-form tags (`!Ref X`, `!If [...]`, `!If` over a block)
    /// become `Tagged`, with their argument parsed like any other value.
    #[derive(Clone, Debug, PartialEq)]
    pub enum Yaml {
        Scalar(String),
        Seq(Vec<Yaml>),
        Map(Vec<(String, Yaml)>),
        Tagged(String, Box<Yaml>),
    }

    impl Yaml {
        pub fn get(&self, key: &str) -> Option<&Yaml> {
            self.entries().iter().find(|(k, _)| k == key).map(|(_, v)| v)
        }

        /// The node at `path`; panics with the path if there is none.
        pub fn at(&self, path: &[&str]) -> &Yaml {
            path.iter().fold(self, |node, key| node.get(key).unwrap_or_else(|| panic!("the template has no {path:?}")))
        }

        pub fn entries(&self) -> &[(String, Yaml)] {
            match self {
                Yaml::Map(entries) => entries,
                other => panic!("expected a mapping, found {other:?}"),
            }
        }

        pub fn items(&self) -> &[Yaml] {
            match self {
                Yaml::Seq(items) => items,
                other => panic!("expected a sequence, found {other:?}"),
            }
        }

        pub fn str(&self) -> &str {
            match self {
                Yaml::Scalar(s) => s,
                other => panic!("expected a scalar, found {other:?}"),
            }
        }
    }

    struct Line {
        number: usize,
        indent: usize,
        text: String,
    }

    pub fn parse(text: &str) -> Yaml {
        let mut lines: Vec<Line> = text
            .lines()
            .enumerate()
            .filter_map(|(i, raw)| {
                let text = strip_comment(raw).trim_end();
                let content = text.trim_start();
                (!content.is_empty()).then(|| Line {
                    number: i + 1,
                    indent: text.len() - content.len(),
                    text: content.to_owned(),
                })
            })
            .collect();
        let mut at = 0;
        let doc = block(&mut lines, &mut at, 0);
        if let Some(line) = lines.get(at) {
            panic!("line {}: unexpected indentation", line.number);
        }
        doc
    }

    /// `raw` without a `#` comment that is outside quotes.
    fn strip_comment(raw: &str) -> &str {
        let mut quote = None;
        let mut previous = ' ';
        for (i, c) in raw.char_indices() {
            match (quote, c) {
                // A quote opens a quoted scalar only at the start of a token,
                // not as an apostrophe inside plain text.
                (None, '"' | '\'') if matches!(previous, ' ' | '\t' | '[' | ',') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, '#') if previous == ' ' || previous == '\t' => return &raw[..i],
                _ => {}
            }
            previous = c;
        }
        raw
    }

    /// The mapping or sequence whose lines start at `indent`.
    fn block(lines: &mut [Line], at: &mut usize, indent: usize) -> Yaml {
        if lines[*at].text.starts_with('-') { sequence(lines, at, indent) } else { mapping(lines, at, indent) }
    }

    fn mapping(lines: &mut [Line], at: &mut usize, indent: usize) -> Yaml {
        let mut entries: Vec<(String, Yaml)> = Vec::new();
        while *at < lines.len() && lines[*at].indent == indent && !lines[*at].text.starts_with('-') {
            let line = &lines[*at];
            let Some((key, rest)) = split_key(&line.text) else {
                panic!("line {}: expected `key: value`", line.number)
            };
            let (number, key, rest) = (line.number, key.to_owned(), rest.to_owned());
            assert!(!entries.iter().any(|(k, _)| *k == key), "line {number}: duplicate key {key}");
            *at += 1;
            let value = value(&rest, lines, at, indent, number);
            entries.push((key, value));
        }
        Yaml::Map(entries)
    }

    fn sequence(lines: &mut [Line], at: &mut usize, indent: usize) -> Yaml {
        let mut items = Vec::new();
        while *at < lines.len() && lines[*at].indent == indent && lines[*at].text.starts_with('-') {
            let line = &mut lines[*at];
            let item = line.text[1..].trim_start().to_owned();
            let number = line.number;
            assert!(line.text == "-" || line.text.starts_with("- "), "line {number}: `-` without a space");
            if split_key(&item).is_some() {
                // `- key: value` starts a mapping indented like its key.
                line.indent = indent + line.text.len() - item.len();
                line.text = item;
                let inner = line.indent;
                items.push(mapping(lines, at, inner));
            } else {
                *at += 1;
                items.push(value(&item, lines, at, indent, number));
            }
        }
        Yaml::Seq(items)
    }

    /// The value after a key or a `-` at `indent`: inline, or the block
    /// that follows.
    fn value(rest: &str, lines: &mut [Line], at: &mut usize, indent: usize, number: usize) -> Yaml {
        let nested = |lines: &[Line], at: usize| {
            lines.get(at).is_some_and(|l| l.indent > indent || (l.indent == indent && l.text.starts_with('-')))
        };
        if rest.is_empty() {
            assert!(nested(lines, *at), "line {number}: a key without a value");
            let inner = lines[*at].indent;
            return block(lines, at, inner);
        }
        if matches!(rest, ">" | ">-" | "|" | "|-") {
            let mut text = Vec::new();
            while *at < lines.len() && lines[*at].indent > indent {
                text.push(lines[*at].text.clone());
                *at += 1;
            }
            return Yaml::Scalar(text.join(if rest.starts_with('>') { " " } else { "\n" }));
        }
        if rest.starts_with('!') && !rest.contains(' ') && nested(lines, *at) {
            let inner = lines[*at].indent;
            return Yaml::Tagged(rest.to_owned(), Box::new(block(lines, at, inner)));
        }
        inline(rest, number)
    }

    /// A value on one line: a scalar, a flow sequence or a tagged value.
    fn inline(s: &str, number: usize) -> Yaml {
        let s = s.trim();
        assert!(
            !s.starts_with(['{', '&', '*', '|', '>', '%', '@', '`']),
            "line {number}: {s:?} is outside the YAML this reader knows"
        );
        if let Some(tagged) = s.strip_prefix('!') {
            let (tag, arg) = tagged.split_once(' ').unwrap_or((tagged, ""));
            return Yaml::Tagged(format!("!{tag}"), Box::new(inline(arg, number)));
        }
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner.strip_suffix(']').unwrap_or_else(|| panic!("line {number}: unclosed `[`"));
            return Yaml::Seq(split_flow(inner).into_iter().map(|item| inline(item, number)).collect());
        }
        for q in ['"', '\''] {
            if let Some(quoted) = s.strip_prefix(q) {
                let quoted = quoted.strip_suffix(q).unwrap_or_else(|| panic!("line {number}: unclosed quote"));
                assert!(!quoted.contains(['\\', q]), "line {number}: escapes are outside this reader");
                return Yaml::Scalar(quoted.to_owned());
            }
        }
        Yaml::Scalar(s.to_owned())
    }

    /// The items of a flow sequence: split at the commas outside brackets
    /// and quotes.
    fn split_flow(s: &str) -> Vec<&str> {
        let (mut items, mut start, mut depth, mut quote) = (Vec::new(), 0, 0, None);
        for (i, c) in s.char_indices() {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, '[') => depth += 1,
                (None, ']') => depth -= 1,
                (None, ',') if depth == 0 => {
                    items.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        if !s[start..].trim().is_empty() || !items.is_empty() {
            items.push(&s[start..]);
        }
        items
    }

    /// `key: rest` or `key:`, for a plain key outside quotes and tags.
    fn split_key(text: &str) -> Option<(&str, &str)> {
        if text.starts_with(['!', '"', '\'', '[', '{']) {
            return None;
        }
        if let Some(key) = text.strip_suffix(':')
            && !key.contains(": ")
        {
            return Some((key, ""));
        }
        let (key, rest) = text.split_once(": ")?;
        Some((key, rest.trim()))
    }
}

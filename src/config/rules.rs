//! The rules of `[[limits.rules]]` and `[[limits.plan_rules.<plan>]]`,
//! checked into [`Rule`]s. Every refusal is one line that names the rule
//! by its index and its name, the file and the line of the value at fault:
//! `limits.rules[1] ("tv") in streamcap.toml (line 12): limit -1 is out of
//! range 0..=1000`.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::ConfigError;
use super::settings::{RuleKey, RuleTable};
use crate::limiter::{Label, Limit, Rule};

/// The longest rule name, in characters.
pub const MAX_NAME_LEN: usize = 64;

/// The default rule set and each plan's own set.
pub(super) type RuleSets = (Arc<[Rule]>, BTreeMap<String, Arc<[Rule]>>);

/// The default set and each plan's own set. `plans` says which plan names
/// are configured; a set for any other name is refused.
pub(super) fn build(
    default: Vec<RuleTable>,
    by_plan: BTreeMap<String, Vec<RuleTable>>,
    plans: &dyn Fn(&str) -> bool,
    in_file: &dyn Fn(&str) -> String,
) -> Result<RuleSets, ConfigError> {
    let default = set("limits.rules", default, in_file)?;
    let mut sets = BTreeMap::new();
    for (plan, tables) in by_plan {
        let at = format!("limits.plan_rules.{plan}");
        if !plans(&plan) {
            let line = tables.iter().flat_map(|t| t.keys.first()).map(|k| k.line).next();
            return Err(ConfigError(format!("{}{}: no plan {plan:?} in limits.plans", in_file(&at), on_line(line))));
        }
        sets.insert(plan, set(&at, tables, in_file)?);
    }
    Ok((default, sets))
}

/// One set, in configured order, its names unique.
fn set(at: &str, tables: Vec<RuleTable>, in_file: &dyn Fn(&str) -> String) -> Result<Arc<[Rule]>, ConfigError> {
    let mut rules: Vec<Rule> = Vec::with_capacity(tables.len());
    for (i, table) in tables.iter().enumerate() {
        let rule = check(table, &rules).map_err(|(line, e)| {
            let name = match table.get("name").map(|k| &k.value) {
                Some(toml::Value::String(name)) => format!(" ({name:?})"),
                _ => String::new(),
            };
            ConfigError(format!("{}{}: {e}", in_file(&format!("{at}[{i}]{name}")), on_line(line)))
        })?;
        rules.push(rule);
    }
    // A rule that counts every stream (no scope, no per) is a second
    // total, which a per-user override could not lift. It makes sense only
    // beside an exempt rule, as a cap on the streams the total leaves out.
    if let Some(i) = rules.iter().position(|r| r.device_class.is_none() && r.content_kind.is_none() && !r.per_content)
        && !rules.iter().any(|r| r.exempt)
    {
        let name = rules[i].name.as_str();
        let line = tables[i].keys.first().map(|k| k.line);
        return Err(ConfigError(format!(
            "{}{}: a rule without device_class, content_kind or per counts every stream, as the total does; \
             set the total in limits.default or limits.plans instead",
            in_file(&format!("{at}[{i}] ({name:?})")),
            on_line(line)
        )));
    }
    Ok(rules.into())
}

fn on_line(line: Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

/// One rule, or what is wrong with it and on which line.
fn check(table: &RuleTable, earlier: &[Rule]) -> Result<Rule, (Option<usize>, String)> {
    let first_line = table.keys.first().map(|k| k.line);
    if let Some(k) = table.keys.iter().find(|k| !RuleTable::KEYS.contains(&k.key.as_str())) {
        return Err((
            Some(k.line),
            format!("unknown key {:?}; a rule takes name, device_class, content_kind, per, limit and exempt", k.key),
        ));
    }
    let name = match table.get("name") {
        None => return Err((first_line, "name is required".into())),
        Some(k) => {
            let name = text(k)?;
            let checked = Label::id(name).ok().filter(|_| name.len() <= MAX_NAME_LEN);
            let Some(label) = checked else {
                return Err((
                    Some(k.line),
                    format!("name {name:?} must be 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 and . _ ~ : @ -"),
                ));
            };
            if let Some(i) = earlier.iter().position(|r| r.name.as_str() == name) {
                return Err((Some(k.line), format!("name {name:?} is already the name of rule {i} of this set")));
            }
            label
        }
    };
    let scope = |key: &str| -> Result<Option<Label>, (Option<usize>, String)> {
        let Some(k) = table.get(key) else { return Ok(None) };
        let value = text(k)?;
        Label::id(value).map(Some).map_err(|e| (Some(k.line), format!("{key} {value:?} {e}")))
    };
    let (device_class, content_kind) = (scope("device_class")?, scope("content_kind")?);
    let per_content = match table.get("per") {
        None => false,
        Some(k) => match text(k)? {
            "content_id" => true,
            other => {
                return Err((Some(k.line), format!("per {other:?} is not \"content_id\", the one value it takes")));
            }
        },
    };
    let limit = match table.get("limit") {
        None => return Err((first_line, format!("limit is required, 0..={}", Limit::MAX))),
        Some(k) => match &k.value {
            toml::Value::Integer(n) => u32::try_from(*n)
                .ok()
                .and_then(Limit::new)
                .ok_or_else(|| (Some(k.line), format!("limit {n} is out of range 0..={}", Limit::MAX)))?,
            other => return Err(wrong_type(k, "an integer", other)),
        },
    };
    let exempt = match table.get("exempt") {
        None => false,
        Some(k) => match &k.value {
            toml::Value::Boolean(b) => *b,
            other => return Err(wrong_type(k, "true or false", other)),
        },
    };
    if exempt && device_class.is_none() && content_kind.is_none() {
        let line = table.get("exempt").map(|k| k.line);
        return Err((
            line,
            "an exempt rule needs device_class or content_kind: exempting every stream would leave no total".into(),
        ));
    }
    Ok(Rule { name, device_class, content_kind, per_content, limit, exempt })
}

fn text(k: &RuleKey) -> Result<&str, (Option<usize>, String)> {
    match &k.value {
        toml::Value::String(s) => Ok(s),
        other => Err(wrong_type(k, "a string", other)),
    }
}

fn wrong_type(k: &RuleKey, expected: &str, got: &toml::Value) -> (Option<usize>, String) {
    (Some(k.line), format!("{} must be {expected}, not {} {got}", k.key, got.type_str()))
}

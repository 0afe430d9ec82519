//! The database file: its schema, its settings, and reading it whole at
//! open.
//!
//! Three tables, each keyed by user and stream (`overrides` by user), with
//! no secondary index: `leases`, `tombstones` (`evicted_by` is NULL for a
//! revocation) and `overrides`. Times are integer microseconds since the
//! epoch. A lease's `device_class`, `content_kind`, `plan` and `holder` are
//! nullable columns, added by migrations that only add columns and so run
//! instantly on any file. [`MIGRATIONS`] run in order at open, and
//! `PRAGMA user_version` records how many have run; a database newer than
//! this binary is refused. A shipped migration is never edited: a change
//! adds a new one. [`load`] reads each table once in primary-key order. A
//! row that does not hold valid values makes its user answer `Unavailable`
//! and is left as it is.

use std::collections::HashMap;

use rusqlite::{Connection, Row};

use super::users::{Undecodable, Users};
use crate::limiter::{
    Holder, Label, Lease, Limit, Override, RevokeReason, StreamId, Timestamp, Tombstone, UserId, UserState,
};

/// Schema changes in order; `PRAGMA user_version` counts how many ran.
/// Never edit one that has shipped: add a new one.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: leases, with times in ms since the Unix epoch (µs from 2 on).
    "CREATE TABLE leases (
        user_id    TEXT    NOT NULL,
        stream_id  TEXT    NOT NULL,
        device_id  TEXT,
        content_id TEXT,
        started_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (user_id, stream_id)
    ) WITHOUT ROWID;
    CREATE INDEX leases_by_expiry ON leases (expires_at);",
    // 2: times in µs since the Unix epoch, UTC; tombstones of evicted and
    // revoked streams; per-user overrides.
    "UPDATE leases SET started_at = started_at * 1000, expires_at = expires_at * 1000;
    CREATE TABLE tombstones (
        user_id      TEXT    NOT NULL,
        stream_id    TEXT    NOT NULL,
        evicted_by   TEXT,             -- NULL: revoked
        until        INTEGER NOT NULL,
        PRIMARY KEY (user_id, stream_id)
    ) WITHOUT ROWID;
    CREATE INDEX tombstones_by_expiry ON tombstones (until);
    CREATE TABLE overrides (
        user_id      TEXT    NOT NULL PRIMARY KEY,
        stream_limit INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 3: the sweeper finds expired rows in the writer's memory and deletes
    // them by primary key, so nothing reads the expiry indexes any more,
    // and every renewal paid for updating one.
    "DROP INDEX leases_by_expiry;
    DROP INDEX tombstones_by_expiry;",
    // 4: the lease attributes that rules' scopes read, and the plan the
    // acquiring request named. Existing leases have none of them. Adding a
    // column with no default rewrites no row, so this is instant on any
    // file.
    "ALTER TABLE leases ADD COLUMN device_class TEXT;
    ALTER TABLE leases ADD COLUMN content_kind TEXT;
    ALTER TABLE leases ADD COLUMN plan         TEXT;",
    // 5: the socket that holds a lease, if one does. Instant, as 4.
    "ALTER TABLE leases ADD COLUMN holder TEXT;",
    // 6: when an override ends (µs since the Unix epoch, UTC); NULL, as
    // every existing override has, is for good. Instant, as 4.
    "ALTER TABLE overrides ADD COLUMN expires_at INTEGER;",
];

/// Sets the connection up for durability and brings the schema up to date.
pub(super) fn prepare(conn: &Connection) -> Result<(), String> {
    let sql = |e: rusqlite::Error| e.to_string();
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(sql)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("journal_mode is {mode}, WAL is required"));
    }
    // FULL: a commit returns only after the WAL is fsynced, so an answer
    // survives a power cut, not only a process crash.
    conn.pragma_update(None, "synchronous", "FULL").map_err(sql)?;
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(sql)?;
    if version > MIGRATIONS.len() {
        return Err(format!(
            "schema version {version} is newer than this binary understands ({}); upgrade streamcap",
            MIGRATIONS.len()
        ));
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.unchecked_transaction().map_err(sql)?;
        tx.execute_batch(migration).map_err(sql)?;
        tx.pragma_update(None, "user_version", i + 1).map_err(sql)?;
        tx.commit().map_err(sql)?;
    }
    Ok(())
}

/// Everything in the database, as the writer keeps it.
pub(super) struct Loaded {
    pub(super) users: Users,
    /// Users with a row that does not hold valid values, and what is wrong
    /// with it. Their operations answer `Unavailable` until the row is
    /// fixed and streamcap restarted; their rows are left alone.
    pub(super) corrupt: HashMap<UserId, String>,
    /// Rows whose `user_id` is not a valid id, so no request can name
    /// them. They are left alone.
    pub(super) unreachable: u64,
}

/// Reads every lease, tombstone and override. Each table is read once, in
/// primary-key order, so that one user's rows arrive together.
pub(super) fn load(conn: &Connection) -> rusqlite::Result<Loaded> {
    let mut loaded = Loaded { users: Users::new(), corrupt: HashMap::new(), unreachable: 0 };

    // Leases first: a user's leases become their state.
    let mut stmt = conn.prepare(
        "SELECT user_id, stream_id, device_id, content_id, started_at, expires_at, device_class, content_kind, plan,
                holder
         FROM leases ORDER BY user_id",
    )?;
    each_user(&mut stmt.query([])?, &mut loaded, lease, |users, user, leases| {
        users.replace(user, &UserState::new(leases, Vec::new(), None));
        Ok(())
    })?;

    // Then tombstones and overrides join whatever the user already has.
    let mut stmt = conn.prepare("SELECT user_id, stream_id, evicted_by, until FROM tombstones ORDER BY user_id")?;
    each_user(&mut stmt.query([])?, &mut loaded, tombstone, |users, user, tombstones| {
        let state = users.state(user)?;
        users.replace(user, &UserState::new(state.leases().to_vec(), tombstones, state.limit_override()));
        Ok(())
    })?;

    let mut stmt = conn.prepare("SELECT user_id, stream_limit, expires_at FROM overrides ORDER BY user_id")?;
    each_user(&mut stmt.query([])?, &mut loaded, limit_override, |users, user, mut limits| {
        let state = users.state(user)?;
        users.replace(user, &UserState::new(state.leases().to_vec(), state.tombstones().to_vec(), limits.pop()));
        Ok(())
    })?;
    Ok(loaded)
}

/// Groups `rows` (ordered by their first column, the user) by user, parses
/// each row with `parse`, and hands each user's values to `add`. A row that
/// does not parse marks its user corrupt instead, and drops what was
/// loaded for them.
fn each_user<T>(
    rows: &mut rusqlite::Rows<'_>,
    loaded: &mut Loaded,
    parse: fn(&Row<'_>) -> rusqlite::Result<Result<T, String>>,
    add: impl Fn(&mut Users, &UserId, Vec<T>) -> Result<(), Undecodable>,
) -> rusqlite::Result<()> {
    let mut current: Option<(UserId, Vec<T>)> = None;
    let flush = |loaded: &mut Loaded, current: Option<(UserId, Vec<T>)>| {
        if let Some((user, values)) = current
            && !loaded.corrupt.contains_key(&user)
            && add(&mut loaded.users, &user, values).is_err()
        {
            corrupt(loaded, &user, "its stored state does not decode".into());
        }
    };
    while let Some(row) = rows.next()? {
        let raw = row.get_ref(0)?.as_str().ok();
        if !matches!((&current, raw), (Some((u, _)), Some(r)) if u.as_str() == r) {
            flush(loaded, current.take());
            current = raw.and_then(|r| UserId::new(r).ok()).map(|u| (u, Vec::new()));
        }
        let Some((user, values)) = current.as_mut() else {
            loaded.unreachable += 1;
            continue;
        };
        match parse(row)? {
            Ok(v) => values.push(v),
            Err(why) => corrupt(loaded, user, why),
        }
    }
    flush(loaded, current);
    Ok(())
}

/// Forgets what was loaded for `user` and marks them corrupt.
fn corrupt(loaded: &mut Loaded, user: &UserId, why: String) {
    loaded.users.restore(user.clone(), None);
    loaded.corrupt.entry(user.clone()).or_insert_with(|| format!("corrupt row for user {user}: {why}"));
}

fn lease(r: &Row<'_>) -> rusqlite::Result<Result<Lease, String>> {
    let (stream, device, content) = (r.get_ref(1)?, r.get_ref(2)?, r.get_ref(3)?);
    let (started_at, expires_at) = (r.get_ref(4)?, r.get_ref(5)?);
    let (class, kind, plan, holder) = (r.get_ref(6)?, r.get_ref(7)?, r.get_ref(8)?, r.get_ref(9)?);
    Ok((|| {
        Ok(Lease {
            stream_id: stream_id("stream_id", stream.as_str().ok())?,
            device_id: label("device_id", device.as_str_or_null().ok())?,
            content_id: label("content_id", content.as_str_or_null().ok())?,
            device_class: label("device_class", class.as_str_or_null().ok())?,
            content_kind: label("content_kind", kind.as_str_or_null().ok())?,
            plan: label("plan", plan.as_str_or_null().ok())?,
            holder: match holder.as_str_or_null() {
                Ok(None) => None,
                Ok(Some(h)) => Some(Holder::new(h).map_err(|e| format!("holder {h:?} {e}"))?),
                Err(_) => return Err("holder is not text".to_owned()),
            },
            started_at: time("started_at", started_at.as_i64().ok())?,
            expires_at: time("expires_at", expires_at.as_i64().ok())?,
        })
    })())
}

fn tombstone(r: &Row<'_>) -> rusqlite::Result<Result<Tombstone, String>> {
    let (stream, by, until) = (r.get_ref(1)?, r.get_ref(2)?, r.get_ref(3)?);
    Ok((|| {
        Ok(Tombstone {
            stream_id: stream_id("stream_id", stream.as_str().ok())?,
            reason: match by.as_str_or_null().map_err(|_| "evicted_by is not text".to_owned())? {
                Some(by) => RevokeReason::EvictedBy(stream_id("evicted_by", Some(by))?),
                None => RevokeReason::Revoked,
            },
            until: time("until", until.as_i64().ok())?,
        })
    })())
}

fn limit_override(r: &Row<'_>) -> rusqlite::Result<Result<Override, String>> {
    let n = r.get_ref(1)?.as_i64().ok();
    let until = r.get_ref(2)?.as_i64_or_null();
    Ok((|| {
        let limit = n.and_then(|n| u32::try_from(n).ok()).and_then(Limit::new).ok_or_else(|| match n {
            Some(n) => format!("stream_limit {n} out of range"),
            None => "stream_limit is not an integer".to_owned(),
        })?;
        let expires_at = until.map_err(|_| "expires_at is not an integer".to_owned())?.map(Timestamp::from_micros);
        Ok(Override { limit, expires_at })
    })())
}

fn time(column: &str, raw: Option<i64>) -> Result<Timestamp, String> {
    raw.map(Timestamp::from_micros).ok_or_else(|| format!("{column} is not an integer"))
}

fn stream_id(column: &str, raw: Option<&str>) -> Result<StreamId, String> {
    let raw = raw.ok_or_else(|| format!("{column} is not text"))?;
    StreamId::new(raw).map_err(|e| format!("{column} {e}"))
}

fn label(column: &str, raw: Option<Option<&str>>) -> Result<Option<Label>, String> {
    let raw = raw.ok_or_else(|| format!("{column} is not text"))?;
    raw.map(Label::new).transpose().map_err(|e| format!("{column} {e}"))
}

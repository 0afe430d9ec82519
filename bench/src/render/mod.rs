//! The results as the Markdown section that docs/benchmarks.md carries
//! between two marker comments: one function per table, the Redis and
//! DynamoDB Local tables in files of their own.

mod dynamodb;
mod redis;
mod tables;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;

use crate::report::{Report, Target, int};

impl Report {
    /// The generated section of docs/benchmarks.md.
    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let host = format!("*{}*", self.host());
        self.header(&mut m);
        self.targets_table(&mut m, &host);
        self.closed_loop_table(&mut m, &host);
        if self.has_bare() {
            self.cpu_vs_bare_table(&mut m, &host);
        }
        for s in &self.stores {
            if s.redis_commands.is_some() || s.redis_set.is_some() || !s.redis_contention.is_empty() {
                redis::redis_tables(&mut m, s, self.params.users, self.params.zipf_exponent, &host);
            }
            if let Some(d) = &s.dynamodb {
                dynamodb::dynamodb_table(&mut m, s, d);
            }
        }

        self.mix_tables(&mut m);
        self.half_load_table(&mut m, &host);
        self.cpu_table(&mut m, &host);
        if !self.footprint.is_empty() {
            self.footprint_table(&mut m);
        }
        if !self.recovery.is_empty() {
            self.recovery_table(&mut m);
        }
        let _ = writeln!(m, "\n#### Commands this run spawned\n\n```sh");
        for c in &self.commands {
            let _ = writeln!(m, "{c}");
        }
        let _ = writeln!(m, "```");
        m
    }

    /// Runs recorded before the bare server existed measured /livez on
    /// streamcap only.
    fn has_bare(&self) -> bool {
        self.stores.iter().any(|s| s.bare_livez.is_some())
    }

    /// The title, the machine, the build and the load.
    fn header(&self, m: &mut String) {
        let label = if self.mode == "quick" { "Quick run" } else { "Full run" };
        let _ = writeln!(m, "### {label}: {}\n", self.date);
        if self.mode == "quick" {
            let _ = writeln!(
                m,
                "A **quick** run: short phases and {} leases instead of 1,000,000. Its footprint and recovery \
             numbers are for {} leases only.\n",
                int(self.params.leases as f64),
                int(self.params.leases as f64)
            );
        }
        let mc = &self.machine;
        let _ = writeln!(
            m,
            "**Machine.** {} CPUs ({}, `lscpu` model name), {} RAM, Linux {}.",
            mc.nproc, mc.cpu_model, mc.memory_total, mc.kernel
        );
        let _ = writeln!(
            m,
            "Data dirs on {}; a 4 KiB write + fdatasync there takes {:.0} µs (median of 100; worst {:.0} µs).",
            mc.data_dir_filesystem, mc.fsync_p50_us, mc.fsync_max_us
        );
        let _ = writeln!(
            m,
            "Load average (1, 5, 15 min) before the run: {}; after: {} (the run itself keeps both cores busy).",
            mc.loadavg_before, mc.loadavg_after
        );
        let b = &self.build;
        let _ = writeln!(m, "Server: `{}` at {}, {}; {}.", b.server_binary, b.git_revision, b.rustc, b.redis_server);
        let p = &self.params;
        // Runs recorded before the bare server existed measured /livez on streamcap only.
        let _ = writeln!(
            m,
            "Load: {} keep-alive HTTP/1.1 connections from {} client thread(s), closed loop; {} users, Zipf \
         exponent {} (the busiest user gets {:.1} % of new sessions); {} sessions per connection, each \
         acquire → {} renewals → release. Phases: /livez {} s{}, mix {} s, each open-loop phase {} s; the \
         closed-loop phases alternate in {} round(s), every other one in reverse order, and so do the \
         open-loop ones. The whole run took {:.0} s.\n",
            p.connections,
            p.client_threads,
            int(p.users as f64),
            p.zipf_exponent,
            p.zipf_top_user_share * 100.0,
            p.sessions_per_connection,
            p.renewals_per_session,
            p.livez_seconds,
            if self.has_bare() { " (the bare server's and streamcap's each)" } else { "" },
            p.mix_seconds,
            p.open_loop_seconds,
            p.rounds,
            self.total_seconds
        );
    }

    /// The targets, then what disturbed the run and what failed.
    fn targets_table(&self, m: &mut String, host: &str) {
        let _ = writeln!(m, "#### Targets\n\n{host}\n");
        let _ = writeln!(m, "| target | goal | measured | |\n|---|---|---|---|");
        for t in &self.targets {
            let _ = writeln!(m, "| {} | {} | {} | {} |", t.name, t.target, t.measured, yes_no(t));
        }
        let disturbed: Vec<String> = self
            .stores
            .iter()
            .flat_map(|s| s.measured_phases().into_iter().map(move |p| (s.store.as_str(), p)))
            .filter_map(|(store, p)| {
                let c = &p.cpu;
                let other = c.machine_busy_cores - c.client_cores - c.server_cores - c.store_cores.unwrap_or(0.0);
                (other > 0.1 || c.steal_cores > 0.1).then(|| {
                    format!("{store} {} (other processes {other:.2} cores, steal {:.2})", p.name, c.steal_cores)
                })
            })
            .collect();
        if disturbed.is_empty() {
            let _ = writeln!(
                m,
                "\nNo other process used more than 0.1 core, and the hypervisor stole less than 0.1 core, in any \
             measured phase."
            );
        } else {
            let _ = writeln!(
                m,
                "\n**Disturbed:** other work ran on the machine during {}. Those numbers are not clean.",
                disturbed.join("; ")
            );
        }
        if !self.failures.is_empty() {
            let _ = writeln!(m, "\n**Failures during the run:**\n");
            for f in &self.failures {
                let _ = writeln!(m, "- {}", f.replace('\n', " "));
            }
        }
    }
}

/// A ratio for tables: "2.31 ×", or "–" when there is none.
fn times(r: Option<f64>) -> String {
    r.map_or("–".to_owned(), |r| format!("{r:.2} ×"))
}

/// µs with one decimal, or "–".
fn us(v: Option<f64>) -> String {
    v.map_or("–".to_owned(), |v| format!("{v:.1}"))
}

fn yes_no(t: &Target) -> &'static str {
    match t.met {
        _ if t.reported_only => "reported",
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Puts `section` between the markers for `mode` in `doc`, or appends it
/// with its markers when they are missing.
pub fn splice(doc: &str, mode: &str, section: &str) -> String {
    let begin = format!("<!-- bench:{mode}:begin -->");
    let end = format!("<!-- bench:{mode}:end -->");
    let block = format!("{begin}\n{section}{end}");
    match (doc.find(&begin), doc.find(&end)) {
        (Some(b), Some(e)) if b < e => format!("{}{block}{}", &doc[..b], &doc[e + end.len()..]),
        _ => format!("{}\n{block}\n", doc.trim_end()),
    }
}

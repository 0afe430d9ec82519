//! The results as the Markdown section that docs/benchmarks.md carries
//! between two marker comments: one function per table, the Redis and
//! DynamoDB Local tables in files of their own.

mod dynamodb;
mod redis;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;

use crate::report::{Phase, Report, Target, int, ratio, round3};

impl Report {
    /// The generated section of docs/benchmarks.md.
    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let host = format!("*{}*", self.host());
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
        let has_bare = self.stores.iter().any(|s| s.bare_livez.is_some());
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
            if has_bare { " (the bare server's and streamcap's each)" } else { "" },
            p.mix_seconds,
            p.open_loop_seconds,
            p.rounds,
            self.total_seconds
        );

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

        let _ = writeln!(m, "\n#### Throughput and latency, closed loop\n");
        let _ = writeln!(
            m,
            "{host} Latency is per request, measured by the client from send to the last byte of the answer.{}\n",
            if has_bare {
                " The bare server's `/livez`, streamcap's `/livez` and the lease mix alternate in the same rounds \
                 over the same number of connections."
            } else {
                ""
            }
        );
        let _ = writeln!(
            m,
            "| store | workload | requests | req/s | p50 µs | p99 µs | p99.9 µs | ratio to ceiling |\n|---|---|---:|---:|---:|---:|---:|---|"
        );
        for s in &self.stores {
            let row = |m: &mut String, what: &str, ph: &Phase, ratio: &str| {
                let _ = writeln!(
                    m,
                    "| {} | {what} | {} | {} | {} | {} | {} | {ratio} |",
                    s.store,
                    int(ph.requests as f64),
                    int(ph.throughput),
                    int(ph.latency.p50_us),
                    int(ph.latency.p99_us),
                    int(ph.latency.p999_us)
                );
            };
            let bare = s.bare_livez.as_ref().map(|b| b.throughput);
            let to_bare = |ph: &Phase| bare.and_then(|b| ratio(ph.throughput, b));
            if let Some(b) = &s.bare_livez {
                row(&mut m, "bare server `/livez` (ceiling)", b, "1");
            }
            let livez_ratio = match to_bare(&s.livez) {
                Some(r) => format!("1; {r:.2} × bare"),
                None => "1".to_owned(),
            };
            row(&mut m, "`/livez` (ceiling)", &s.livez, &livez_ratio);
            let mut mix_ratio = format!("{:.2} × /livez", s.mix_to_livez);
            if let Some(r) = to_bare(&s.mix) {
                let _ = write!(mix_ratio, "; {r:.2} × bare");
            }
            row(&mut m, "lease mix", &s.mix, &mix_ratio);
            if let Some(b) = &s.redis_baseline {
                let what = format!("lease mix, baseline {}", b.label);
                let r = ratio(b.mix.throughput, s.livez.throughput)
                    .map_or("–".to_owned(), |r| format!("{r:.2} × /livez"));
                row(&mut m, &what, &b.mix, &r);
            }
            if let Some(c) = &s.redis_set {
                let _ = writeln!(
                    m,
                    "| {} | `redis-benchmark` SET | {} | {} | {} | {} | – | – |",
                    s.store,
                    int(c.requests as f64),
                    int(c.throughput),
                    int(c.p50_ms * 1000.0),
                    int(c.p99_ms * 1000.0)
                );
            }
        }

        if has_bare {
            let _ = writeln!(m, "\n#### Server CPU per request vs the bare server\n");
            let _ = writeln!(
                m,
                "{host} Server CPU µs per request from /proc over the closed-loop phases above. The bare server is axum \
                 with one `/livez` route and no layers, answering the same bytes as streamcap's, on the same \
                 runtime (multi-thread tokio, default worker count). For redis and dynamodb, streamcap's own \
                 process only; the store's process is in the CPU table below.\n"
            );
            let _ = writeln!(
                m,
                "| store | bare `/livez` µs/req | streamcap `/livez` µs/req | ÷ bare | lease mix µs/req | ÷ bare |\n|---|---:|---:|---:|---:|---:|"
            );
            for s in &self.stores {
                let bare = s.bare_livez.as_ref().map(|b| b.cpu.server_us_per_request);
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {} | {} | {} |",
                    s.store,
                    us(bare),
                    us(Some(s.livez.cpu.server_us_per_request)),
                    times(s.livez_cpu_to_bare),
                    us(Some(s.mix.cpu.server_us_per_request)),
                    times(s.mix_cpu_to_bare)
                );
            }
        }

        for s in &self.stores {
            if s.redis_commands.is_some() || s.redis_set.is_some() || !s.redis_contention.is_empty() {
                redis::redis_tables(&mut m, s, self.params.users, self.params.zipf_exponent, &host);
            }
            if let Some(d) = &s.dynamodb {
                dynamodb::dynamodb_table(&mut m, s, d);
            }
        }

        let _ =
            writeln!(m, "\nConditions right before each store's phases (other work on the machine shows up here):\n");
        let _ = writeln!(m, "| store | load average | fsync p50 / worst µs |\n|---|---|---|");
        for s in &self.stores {
            let _ = writeln!(
                m,
                "| {} | {} | {:.0} / {:.0} |",
                s.store, s.loadavg_before, s.fsync_before_us.0, s.fsync_before_us.1
            );
        }

        let _ = writeln!(m, "\nPer request kind in the closed-loop mix (p50 / p99 / p99.9, µs):\n");
        let _ = writeln!(m, "| store | acquire | renew | release |\n|---|---|---|---|");
        for s in &self.stores {
            let k = |name: &str| {
                s.mix
                    .by_kind
                    .get(name)
                    .map_or("–".to_owned(), |l| format!("{} / {} / {}", int(l.p50_us), int(l.p99_us), int(l.p999_us)))
            };
            let _ = writeln!(m, "| {} | {} | {} | {} |", s.store, k("acquire"), k("renew"), k("release"));
        }

        let _ = writeln!(m, "\nStatuses in the closed-loop mix (any 5xx is a failure):\n");
        let _ = writeln!(
            m,
            "| store | acquire 201 | acquire 409 | renew 200 | release 204 | unexpected | 5xx | I/O errors |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for s in &self.stores {
            let n = |k: &str| int(*s.mix.statuses.get(k).unwrap_or(&0) as f64);
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                s.store,
                n("acquire 201"),
                n("acquire 409"),
                n("renew 200"),
                n("release 204"),
                s.mix.unexpected_statuses,
                s.mix.server_errors_5xx,
                s.mix.io_errors
            );
        }

        let _ = writeln!(m, "\n#### p99 at half of peak load, open loop\n");
        let _ = writeln!(
            m,
            "{host} Offered rate: 50 % of the store's closed-loop mix throughput. Requests are released on a fixed \
             schedule (at most every 0.25 ms) to whichever of the same connections is free; the mix and \
             `/livez` at the same rate alternate in rounds. Latency counts from the release, so time spent \
             waiting for a free connection counts.\n"
        );
        let _ = writeln!(
            m,
            "| store | offered req/s | achieved req/s | mix p50 µs | mix p99 µs | /livez p99 µs | mix p99 ÷ /livez p99 | mix requests that waited > 1 ms for a connection |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        for s in &self.stores {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {:.2} | {} |",
                s.store,
                int(s.half_load_mix.offered_rate.unwrap_or(0.0)),
                int(s.half_load_mix.throughput),
                int(s.half_load_mix.latency.p50_us),
                int(s.half_load_mix.latency.p99_us),
                int(s.half_load_livez.latency.p99_us),
                s.half_load_p99_ratio,
                int(s.half_load_mix.late_sends as f64)
            );
        }

        let _ = writeln!(m, "\n#### CPU: client overhead and cost per request\n");
        let _ = writeln!(
            m,
            "{host} CPU seconds per second of the measured window (\"cores\"; the machine has {}), from /proc, and CPU \
             µs per request. The client is this harness. \"Other processes\" is the whole machine's busy time \
             from /proc/stat minus the client, the server and the store's process (redis-server, or DynamoDB \
             Local's Java): anything else that ran during the \
             window. \"Steal\" is time the hypervisor gave to other guests. \"Waiting for a CPU\" is run-queue \
             time from /proc/PID/task/*/schedstat: how long the client's and the server's threads were ready to \
             run while every core was busy.\n",
            self.machine.nproc
        );
        let _ = writeln!(
            m,
            "| store | phase | client cores | server cores | store process cores | other processes' cores | steal cores | client / server waiting for a CPU, ms per s | client µs/req | server µs/req | store process µs/req |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for s in &self.stores {
            for ph in s.measured_phases() {
                let c = &ph.cpu;
                let opt = |v: Option<f64>| v.map_or("–".to_owned(), |v| v.to_string());
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} |",
                    s.store,
                    ph.name,
                    c.client_cores,
                    c.server_cores,
                    opt(c.store_cores),
                    round3(
                        (c.machine_busy_cores - c.client_cores - c.server_cores - c.store_cores.unwrap_or(0.0))
                            .max(0.0)
                    ),
                    c.steal_cores,
                    c.client_runqueue_ms_per_s,
                    c.server_runqueue_ms_per_s,
                    c.client_us_per_request,
                    c.server_us_per_request,
                    opt(c.store_us_per_request)
                );
            }
            if let Some(c) = &s.redis_set {
                let _ = writeln!(
                    m,
                    "| {} | redis-benchmark SET | {} | – | {} | – | – | – | – | – | {} |",
                    s.store, c.benchmark_cpu_cores, c.redis_cores, c.redis_cpu_us_per_call
                );
            }
        }

        if !self.footprint.is_empty() {
            let _ = writeln!(m, "\n#### Resident memory per live lease\n");
            let _ = writeln!(
                m,
                "A fresh server with `--lease-ttl 86400`; RSS (VmRSS) after a /livez warm-up on the same \
                 connections, then after acquiring the leases (3 per user, each with a device_id and a \
                 content_id label).\n"
            );
            let _ = writeln!(
                m,
                "| store | live leases | users | fill req/s | RSS before | RSS after | RSS bytes per lease | disk bytes per lease | full user's next acquire |\n|---|---:|---:|---:|---:|---:|---:|---:|---|"
            );
            for f in &self.footprint {
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {} | {} | {} | **{:.0}** | {} | {} |",
                    f.store,
                    int(f.leases_created as f64),
                    int(f.users as f64),
                    int(f.fill.throughput),
                    mib(f.rss_before),
                    mib(f.rss_after),
                    f.rss_bytes_per_lease,
                    f.disk_bytes_per_lease.map_or("–".to_owned(), |d| format!("{d:.0}")),
                    f.full_user_probe_status
                );
            }
        }

        if !self.recovery.is_empty() {
            let _ = writeln!(m, "\n#### Restart recovery\n");
            let _ = writeln!(
                m,
                "From spawning the new process to: its `listening` log line; `/readyz` answering 200; and the first \
                 decision served correctly (a 409 for a user whose 3 seats are taken). Afterwards, not timed: a \
                 renew of a recovered lease must give 200 and the last user's acquire 409.\n"
            );
            let _ = writeln!(
                m,
                "| store | leases | how it stopped | shutdown s | to listening s | to ready s | to first decision s | checks |\n|---|---:|---|---:|---:|---:|---:|---|"
            );
            for r in &self.recovery {
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {} | {:.3} | {:.3} | **{:.3}** | {} (409 / {} / {}) |",
                    r.store,
                    int(r.leases as f64),
                    r.stop,
                    r.shutdown_seconds.map_or("–".to_owned(), |s| format!("{s:.3}")),
                    r.to_listening_seconds,
                    r.to_ready_seconds,
                    r.to_first_decision_seconds,
                    if r.correct { "correct" } else { "WRONG" },
                    r.renew_status,
                    r.last_user_status
                );
            }
        }

        let _ = writeln!(m, "\n#### Commands this run spawned\n\n```sh");
        for c in &self.commands {
            let _ = writeln!(m, "{c}");
        }
        let _ = writeln!(m, "```");
        m
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

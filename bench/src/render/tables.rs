//! The tables every run has: closed-loop throughput and latency, CPU
//! against the bare server, the mix by kind and status, the open loop,
//! CPU per phase, memory per lease and restart recovery.

use std::fmt::Write as _;

use super::{mib, times, us};
use crate::report::{Phase, Report, int, ratio, round3};

impl Report {
    /// Throughput and latency of each store's closed-loop phases.
    pub(super) fn closed_loop_table(&self, m: &mut String, host: &str) {
        let has_bare = self.has_bare();
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
                row(m, "bare server `/livez` (ceiling)", b, "1");
            }
            let livez_ratio = match to_bare(&s.livez) {
                Some(r) => format!("1; {r:.2} × bare"),
                None => "1".to_owned(),
            };
            row(m, "`/livez` (ceiling)", &s.livez, &livez_ratio);
            let mut mix_ratio = format!("{:.2} × /livez", s.mix_to_livez);
            if let Some(r) = to_bare(&s.mix) {
                let _ = write!(mix_ratio, "; {r:.2} × bare");
            }
            row(m, "lease mix", &s.mix, &mix_ratio);
            if let Some(b) = &s.redis_baseline {
                let what = format!("lease mix, baseline {}", b.label);
                let r = ratio(b.mix.throughput, s.livez.throughput)
                    .map_or("–".to_owned(), |r| format!("{r:.2} × /livez"));
                row(m, &what, &b.mix, &r);
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
    }

    /// Server CPU per request against the bare server's.
    pub(super) fn cpu_vs_bare_table(&self, m: &mut String, host: &str) {
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

    /// The conditions before each store, and the closed-loop mix by request kind and by status.
    pub(super) fn mix_tables(&self, m: &mut String) {
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
    }

    /// p99 at half of the peak, open loop.
    pub(super) fn half_load_table(&self, m: &mut String, host: &str) {
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
    }

    /// CPU of the client, the server and the store, per phase.
    pub(super) fn cpu_table(&self, m: &mut String, host: &str) {
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
    }

    /// Resident memory per live lease.
    pub(super) fn footprint_table(&self, m: &mut String) {
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

    /// Restart recovery.
    pub(super) fn recovery_table(&self, m: &mut String) {
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
}

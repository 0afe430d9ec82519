//! Requests outside the load phases: one request on a fresh connection,
//! a counter from `/metrics`, and a scraper that reads `/metrics` once a
//! second as Prometheus would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::{http, load};

/// `streamcap_store_conflicts_total`, summed over the servers at `addrs`.
pub fn conflicts(addrs: &[SocketAddr]) -> Result<u64, String> {
    let mut sum = 0;
    for &addr in addrs {
        let text = metrics_text(addr)?;
        sum += counter(&text, "streamcap_store_conflicts_total")
            .ok_or_else(|| format!("no streamcap metrics in the /metrics of {addr}"))?;
    }
    Ok(sum)
}

/// The value of a counter without labels in a Prometheus text page. A
/// counter appears once it was first incremented, so a page that shows
/// streamcap's metrics but not this one counts 0, and so does an empty
/// page (a server that has recorded nothing yet, not even a scrape); a
/// page with other text gives `None`.
fn counter(text: &str, name: &str) -> Option<u64> {
    let value = text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' '));
    match value {
        Some(v) => v.trim().parse::<f64>().ok().map(|v| v as u64),
        None => (text.trim().is_empty() || text.lines().any(|l| l.starts_with("streamcap_"))).then_some(0),
    }
}

/// One `GET /metrics`, its body as text.
fn metrics_text(addr: SocketAddr) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut c = http::Conn::connect(addr).await.map_err(|e| format!("/metrics of {addr}: {e}"))?;
        match tokio::time::timeout(load::REQUEST_TIMEOUT, c.fetch(METRICS)).await {
            Ok(Ok((200, body))) => String::from_utf8(body).map_err(|_| format!("/metrics of {addr}: not UTF-8")),
            Ok(Ok((status, _))) => Err(format!("/metrics of {addr} answered {status}")),
            Ok(Err(e)) => Err(format!("/metrics of {addr}: {e}")),
            Err(_) => Err(format!("/metrics of {addr}: no answer in time")),
        }
    })
}

/// Scrapes `GET /metrics` once a second until stopped, like Prometheus.
pub struct Scraper {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

const METRICS: &[u8] = b"GET /metrics HTTP/1.1\r\nhost: bench\r\n\r\n";

impl Scraper {
    pub fn start(addr: SocketAddr) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut ok = 0;
            // Bounded: at most an hour of scrapes.
            for _ in 0..36_000 {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                if one_request(addr, METRICS) == Ok(200) {
                    ok += 1;
                }
                for _ in 0..10 {
                    if flag.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            ok
        });
        Scraper { stop, handle }
    }

    /// Stops scraping; returns how many scrapes succeeded.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}

/// One request on a fresh connection, for probes outside the load phases.
pub fn one_request(addr: SocketAddr, req: &[u8]) -> Result<u16, String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut c = http::Conn::connect(addr).await.map_err(|e| e.to_string())?;
        match tokio::time::timeout(load::REQUEST_TIMEOUT, c.roundtrip(req)).await {
            Ok(Ok((status, _))) => Ok(status),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer in time".into()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_counter_from_the_metrics_page() {
        let page = "# TYPE streamcap_store_conflicts_total counter\nstreamcap_store_conflicts_total 17\n\
                    streamcap_store_conflicts_total_other 3\nstreamcap_decisions_total{outcome=\"granted\"} 5\n";
        assert_eq!(counter(page, "streamcap_store_conflicts_total"), Some(17));
        // Not incremented yet: absent from a page that has streamcap's metrics.
        assert_eq!(
            counter("streamcap_decisions_total{outcome=\"granted\"} 5\n", "streamcap_store_conflicts_total"),
            Some(0)
        );
        assert_eq!(counter("<html>not metrics</html>", "streamcap_store_conflicts_total"), None);
        // A fresh server's first page.
        assert_eq!(counter("", "streamcap_store_conflicts_total"), Some(0));
    }
}

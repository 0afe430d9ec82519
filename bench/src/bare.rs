//! The bare-server ceiling: axum with one `GET /livez` route and no
//! layers, answering the same bytes as streamcap's `/livez` (200,
//! `application/json`, `{"status":"ok"}`), on a multi-thread tokio runtime
//! with the default worker count, as streamcap's. It is what an HTTP
//! request costs on this machine before any of streamcap's own work.
//!
//! The harness runs it as a separate process (`streamcap-bench
//! bare-server --listen 127.0.0.1:0`), so that its CPU time is read from
//! /proc exactly like the server's. Like streamcap, it logs `listening
//! addr=…` on stderr and stops cleanly on SIGTERM.

use std::net::SocketAddr;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;

/// Serves until SIGTERM or SIGINT.
pub fn serve(listen: SocketAddr) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("cannot bind {listen}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        eprintln!("bare server listening addr={addr}");
        axum::serve(listener, app()).with_graceful_shutdown(stopped()).await.map_err(|e| e.to_string())
    })
}

fn app() -> Router {
    Router::new().route("/livez", get(livez))
}

async fn livez() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], r#"{"status":"ok"}"#)
}

async fn stopped() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers, SIGTERM's default action still ends the process.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Conn;
    use crate::workload::LIVEZ;

    #[tokio::test]
    async fn answers_livez_like_streamcap() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app()).await });
        let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        raw.write_all(LIVEZ).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = raw.read(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200 ok\r\n"), "{text}");
        assert!(text.contains("\r\ncontent-type: application/json\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n{\"status\":\"ok\"}"), "{text}");
        // Keep-alive, as the load driver needs; any other path is a 404.
        let mut c = Conn::connect(addr).await.unwrap();
        assert_eq!(c.roundtrip(LIVEZ).await.unwrap(), (200, true));
        assert_eq!(c.roundtrip(b"GET /readyz HTTP/1.1\r\nhost: bench\r\n\r\n").await.unwrap().0, 404);
    }
}

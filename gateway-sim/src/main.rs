//! A payment provider simulator: a real process on a real port standing in for a card provider
//! (Stripe's test payment methods), so that timeouts, refused connections, lost answers and
//! crashes happen between payment-service and its providers as they do in production. It keeps
//! its own ledger (a file, not payment-service's Redis), so the books can be checked against
//! what the provider believes.
//!
//! Settings (environment): `SIM_NAME` (default `card-a`), `HOST` (`127.0.0.1`), `SIM_PORT`
//! (`9101`), `SIM_LEDGER` (default `sim-<name>.jsonl` in the working directory);
//! `SIM_WEBHOOK_URL` (empty: no webhooks) and `SIM_WEBHOOK_SECRET` (`whsec_…`), where paid Pix
//! charges are reported; `SIM_WEBHOOK_MAX_BACKOFF_MS` (`5000`), the longest wait between re-sends.

mod api;
mod faults;
mod ledger;
mod pix;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::api::Sim;
use crate::ledger::Ledger;

fn setting(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = setting("SIM_NAME", "card-a");
    let host = setting("HOST", "127.0.0.1");
    let port: u16 = setting("SIM_PORT", "9101")
        .parse()
        .map_err(|e| format!("SIM_PORT: {e}"))?;
    let ledger_path = PathBuf::from(setting("SIM_LEDGER", &format!("sim-{name}.jsonl")));
    let ledger = Ledger::open(Some(&ledger_path)).map_err(|e| format!("ledger {}: {e}", ledger_path.display()))?;
    let webhook_url = Some(setting("SIM_WEBHOOK_URL", "")).filter(|u| !u.is_empty());
    let secret = match setting("SIM_WEBHOOK_SECRET", "").as_str() {
        "" => None,
        text => Some(shared::webhooks::Secret::parse(text).map_err(|e| format!("SIM_WEBHOOK_SECRET: {e}"))?),
    };
    let max_backoff: u64 = setting("SIM_WEBHOOK_MAX_BACKOFF_MS", "5000")
        .parse()
        .map_err(|e| format!("SIM_WEBHOOK_MAX_BACKOFF_MS: {e}"))?;
    let owed = ledger.unnotified();
    let sim = Arc::new(Sim {
        ledger: Mutex::new(ledger),
        faults: Mutex::new(faults::Faults::default()),
        notifier: pix::Notifier::new(
            webhook_url,
            secret,
            std::time::Duration::from_millis(max_backoff.max(1)),
        )?,
    });
    // Webhooks a crash cut short are owed still.
    for charge in owed {
        pix::deliver(sim.clone(), charge);
    }
    let addr: SocketAddr = format!("{host}:{port}").parse()?;
    let listener = TcpListener::bind(addr).await?;
    println!(
        "gateway-sim {name} listening on http://{addr} (ledger {})",
        ledger_path.display()
    );
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let sim = sim.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let sim = sim.clone();
                async move { api::handle(&sim, req).await }
            });
            // A handler's error (a dropped answer) ends the connection without a response.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

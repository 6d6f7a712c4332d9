//! The reference gateway. The HTTP/WebSocket data plane and the embedded demo arrive with
//! the gateway issue; until then `demo` shows where the demo's users land on the ring.

use std::process::ExitCode;

use tower_hashring::{Ring, RingError};

fn demo() -> Result<(), RingError> {
    let ring = Ring::builder()
        .node("backend-a", 1)
        .node("backend-b", 1)
        .node("backend-c", 1)
        .build()?;
    println!("The WebSocket gateway is not built yet; this is the ring it will route on.");
    println!(
        "{} nodes, {} points. Owners and failover order:",
        ring.nodes().len(),
        ring.len_points()
    );
    for user in 1..=10 {
        let key = format!("{user}");
        let order: Vec<&str> = ring
            .successors(key.as_bytes())
            .map(|n| n.id().as_str())
            .collect();
        println!("  userId={key:<3} -> {}", order.join(" -> "));
    }
    Ok(())
}

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("demo") | None => match demo() {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
        Some(other) => {
            eprintln!("error: unknown command `{other}`; usage: gateway-bin demo");
            ExitCode::from(2)
        }
    }
}

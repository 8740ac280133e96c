//! Revocation latency, end to end: from the 204 of `POST /logout-all` (sent
//! to one authd replica) to the first 401 from a downstream service (which
//! follows the feed of another replica), over many trials.
//!
//! Run by `scripts/revocation-latency.sh`, which starts the replicas and the
//! downstream services; by hand:
//!
//! ```sh
//! cargo run --release -p authd-verify --example revocation_latency -- \
//!   LOGIN_URL LOGOUT_URL DOWNSTREAM_URL [TRIALS]
//! ```
//!
//! `DOWNSTREAM_URL` is a protected route (200 with a valid token, 401
//! without), polled as fast as it answers once the 204 is in.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [login, logout, downstream, rest @ ..] = args.as_slice() else {
        return Err(
            "usage: revocation_latency LOGIN_URL LOGOUT_URL DOWNSTREAM_URL [TRIALS]".into(),
        );
    };
    let trials: usize = rest.first().map_or(Ok(100), |s| s.parse())?;
    let http = reqwest::Client::new();
    let creds = json!({ "email": "latency@example.com", "password": "correct horse battery" });
    let r = http
        .post(format!("{login}/register"))
        .json(&creds)
        .send()
        .await?;
    if !(r.status().as_u16() == 201 || r.status().as_u16() == 409) {
        return Err(format!("register: {}", r.status()).into());
    }
    let mut took = Vec::with_capacity(trials);
    for trial in 0..trials {
        // A busy machine may answer 503 (password hashing saturated): retry.
        let mut attempt = 0;
        let r = loop {
            let r = http
                .post(format!("{login}/login"))
                .json(&creds)
                .send()
                .await?;
            attempt += 1;
            if r.status().as_u16() != 503 || attempt == 20 {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let body: Value = r.error_for_status()?.json().await?;
        let token = body["access_token"]
            .as_str()
            .ok_or("no access_token")?
            .to_owned();
        let status = http
            .get(downstream)
            .bearer_auth(&token)
            .send()
            .await?
            .status();
        if status.as_u16() != 200 {
            return Err(format!("trial {trial}: a live token got {status}").into());
        }
        let r = http
            .post(format!("{logout}/logout-all"))
            .bearer_auth(&token)
            .send()
            .await?;
        if r.status().as_u16() != 204 {
            return Err(format!("trial {trial}: logout-all answered {}", r.status()).into());
        }
        let started = Instant::now();
        loop {
            let status = http
                .get(downstream)
                .bearer_auth(&token)
                .send()
                .await?
                .status();
            if status.as_u16() == 401 {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("trial {trial}: still accepted after 30 s").into());
            }
        }
        took.push(started.elapsed());
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |p: f64| took[((p / 100.0) * took.len() as f64).ceil() as usize - 1];
    let mean = took.iter().sum::<Duration>() / u32::try_from(took.len())?;
    println!(
        "{trials} trials: min {:.0} ms, p50 {:.0} ms, mean {:.0} ms, p90 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        ms(took[0]),
        ms(pct(50.0)),
        ms(mean),
        ms(pct(90.0)),
        ms(pct(99.0)),
        ms(took[took.len() - 1]),
    );
    Ok(())
}

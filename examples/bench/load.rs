//! The load generator: virtual users over real HTTP connections.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Client;

use crate::wire::Wire;

pub const PASSWORD: &str = "correct horse battery";
const COOKIE: &str = "__Host-authd_rt";

/// Answers and latencies of one scenario.
#[derive(Default)]
pub struct Tally {
    pub ok: u64,
    /// Unexpected answers and transport errors.
    pub errors: u64,
    /// Refreshes that did not return a successor (the chain ends there).
    pub broken: u64,
    /// Login answers: 503 (refused by admission) and no answer in time.
    pub refused: u64,
    pub timed_out: u64,
    /// Answers that took over a second.
    pub over_1s: u64,
    lat_us: Vec<u32>,
}

impl Tally {
    pub fn merge(&mut self, o: Tally) {
        self.ok += o.ok;
        self.errors += o.errors;
        self.broken += o.broken;
        self.refused += o.refused;
        self.timed_out += o.timed_out;
        self.over_1s += o.over_1s;
        self.lat_us.extend(o.lat_us);
    }

    fn record(&mut self, took: Duration) {
        self.lat_us
            .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        if took > Duration::from_secs(1) {
            self.over_1s += 1;
        }
    }

    /// The p-quantile latency in ms.
    pub fn pct(&mut self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return 0.0;
        }
        self.lat_us.sort_unstable();
        let i = ((self.lat_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.lat_us[i]) / 1e3
    }
}

pub fn client(users: usize, source: Option<IpAddr>) -> Client {
    Client::builder()
        .pool_max_idle_per_host(users.max(1))
        .local_address(source)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

pub fn email(i: usize) -> String {
    format!("bench{i}@example.com")
}

/// POST with a JSON body, waiting out 503s (hashing at capacity: the machine
/// is shared) for up to a minute.
async fn post_patiently(
    http: &Client,
    url: &str,
    body: &serde_json::Value,
) -> Result<reqwest::Response, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = http
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status() != 503 || Instant::now() > deadline {
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn register(http: &Client, base: &str, users: usize) -> Result<(), String> {
    for i in 0..users {
        let body = serde_json::json!({"email": email(i), "password": PASSWORD});
        let r = post_patiently(http, &format!("{base}/register"), &body).await?;
        if r.status() != 201 {
            return Err(format!("register {}: {}", email(i), r.status()));
        }
    }
    Ok(())
}

/// One login per user: (access token, refresh cookie value).
pub async fn sessions(
    http: &Client,
    base: &str,
    users: usize,
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for i in 0..users {
        let body = serde_json::json!({"email": email(i), "password": PASSWORD});
        let r = post_patiently(http, &format!("{base}/login"), &body).await?;
        if r.status() != 200 {
            return Err(format!("login {}: {}", email(i), r.status()));
        }
        let cookie = cookie_of(&r).ok_or("login set no refresh cookie")?;
        let body: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
        let access = body["access_token"].as_str().ok_or("no access_token")?;
        out.push((access.to_owned(), cookie));
    }
    Ok(out)
}

fn cookie_of(r: &reqwest::Response) -> Option<String> {
    r.headers().get_all("set-cookie").iter().find_map(|v| {
        let first = v.to_str().ok()?.split(';').next()?;
        let (name, value) = first.split_once('=')?;
        (name == COOKIE && !value.is_empty()).then(|| value.to_owned())
    })
}

/// One refresh through the cookie, like a browser: the successor, or None.
async fn refresh_once(wire: &mut Wire, cookie: &str, t: &mut Tally) -> Option<String> {
    let request = format!(
        "POST /refresh HTTP/1.1\r\nhost: {}\r\ncookie: {COOKIE}={cookie}\r\n\
         content-type: application/json\r\ncontent-length: 0\r\n\r\n",
        wire.host()
    );
    let began = Instant::now();
    let next = match wire.send(request.as_bytes(), COOKIE).await {
        Ok(a) if a.status == 200 => a.cookie,
        Ok(_) => None,
        Err(_) => {
            t.errors += 1;
            None
        }
    };
    t.record(began.elapsed());
    match next {
        Some(n) => {
            t.ok += 1;
            Some(n)
        }
        None => {
            t.broken += 1;
            None
        }
    }
}

/// Every user runs its chain of `per_user` refreshes, one after the other;
/// returns the tally, the wall time and each chain's last cookie.
pub async fn refresh_chains(
    base: &str,
    cookies: Vec<String>,
    per_user: u64,
) -> (Tally, f64, Vec<String>) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for cookie in cookies {
        let mut wire = Wire::new(base).expect("the service's base URL");
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let mut cookie = cookie;
            for _ in 0..per_user {
                match refresh_once(&mut wire, &cookie, &mut t).await {
                    Some(next) => cookie = next,
                    None => break, // a broken chain cannot continue
                }
            }
            (t, cookie)
        }));
    }
    let mut total = Tally::default();
    let mut last = Vec::new();
    for task in tasks {
        let (t, c) = task.await.expect("refresh task");
        total.merge(t);
        last.push(c);
    }
    (total, started.elapsed().as_secs_f64(), last)
}

/// Paced refreshes (one per user every `period`) until `stop`: the traffic a
/// flood must not hurt. Returns each chain's last cookie.
pub async fn refresh_paced(
    base: &str,
    cookies: Vec<String>,
    period: Duration,
    run_for: Duration,
) -> (Tally, Vec<String>) {
    let until = Instant::now() + run_for;
    let users = cookies.len().max(1) as u32;
    let mut tasks = Vec::new();
    for (i, cookie) in cookies.into_iter().enumerate() {
        let mut wire = Wire::new(base).expect("the service's base URL");
        tasks.push(tokio::spawn(async move {
            // Spread the users' ticks over the period.
            tokio::time::sleep(period * i as u32 / users).await;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut t = Tally::default();
            let mut cookie = cookie;
            while Instant::now() < until {
                tick.tick().await;
                match refresh_once(&mut wire, &cookie, &mut t).await {
                    Some(next) => cookie = next,
                    None => break,
                }
            }
            (t, cookie)
        }));
    }
    let mut total = Tally::default();
    let mut last = Vec::new();
    for task in tasks {
        let (t, c) = task.await.expect("refresh task");
        total.merge(t);
        last.push(c);
    }
    (total, last)
}

/// GET /me in a loop per user for `run_for`.
pub async fn me(base: &str, access: Vec<String>, run_for: Duration) -> (Tally, f64) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for token in access {
        let mut wire = Wire::new(base).expect("the service's base URL");
        let request = format!(
            "GET /me HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {token}\r\n\r\n",
            wire.host()
        );
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            while started.elapsed() < run_for {
                let began = Instant::now();
                match wire.send(request.as_bytes(), "").await {
                    Ok(a) if a.status == 200 => t.ok += 1,
                    _ => t.errors += 1,
                }
                t.record(began.elapsed());
            }
            t
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        total.merge(task.await.expect("me task"));
    }
    (total, started.elapsed().as_secs_f64())
}

async fn login_once(http: &Client, url: &str, email: &str, t: &mut Tally) {
    let began = Instant::now();
    let r = http
        .post(url)
        .header("x-refresh-transport", "body")
        .json(&serde_json::json!({"email": email, "password": PASSWORD}))
        .send()
        .await;
    match r {
        Ok(r) if r.status() == 200 => {
            let _ = r.bytes().await;
            t.ok += 1;
        }
        Ok(r) if r.status() == 503 => t.refused += 1,
        Ok(_) => t.errors += 1,
        Err(e) if e.is_timeout() => t.timed_out += 1,
        Err(_) => t.errors += 1,
    }
    t.record(began.elapsed());
}

/// `users` users, each from its own address (127.0.2.x, as the per-IP share
/// expects of distinct clients), log in one after another for `run_for`
/// (closed loop); a refused login waits its `Retry-After` (1 s), like a client.
pub async fn login(base: &str, users: usize, run_for: Duration) -> (Tally, f64) {
    let url = format!("{base}/login");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..users {
        let source = std::net::Ipv4Addr::new(127, 0, 2, 1 + (i % 250) as u8);
        let (http, url) = (client(1, Some(source.into())), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            while started.elapsed() < run_for {
                let refused = t.refused;
                login_once(&http, &url, &email(i), &mut t).await;
                if t.refused > refused {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            t
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        total.merge(task.await.expect("login task"));
    }
    (total, started.elapsed().as_secs_f64())
}

/// Open loop: `rate` logins/s for `run_for`, whatever the answers, from
/// `clients` (one per source address), for `users` accounts in turn.
pub async fn flood(
    clients: &[Client],
    base: &str,
    users: usize,
    rate: f64,
    run_for: Duration,
) -> Tally {
    let url = Arc::new(format!("{base}/login"));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut n = 0usize;
    while started.elapsed() < run_for {
        tick.tick().await;
        let http = clients[n % clients.len()].clone();
        let url = Arc::clone(&url);
        let who = email(n % users.max(1));
        n += 1;
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            login_once(&http, &url, &who, &mut t).await;
            t
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        total.merge(task.await.expect("flood task"));
    }
    total
}

//! Replicas whose clocks differ: authd uses each replica's own clock for the
//! grace window and expiry. With clocks within ±2 s (NTP keeps them far
//! closer), concurrent refreshes spread over three replicas still converge on
//! one successor — no false reuse, no lost chain — and real reuse is still
//! caught.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use authd::clock::Clock;
use chrono::TimeDelta;
use common::*;
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_two_seconds_apart_agree() {
    let app = spawn_app().await;
    let slow = Clock::with_offset(TimeDelta::seconds(-2));
    let fast = Clock::with_offset(TimeDelta::seconds(2));
    let behind = app.spawn_replica_with_clock(&[], slow.clone()).await;
    let ahead = app.spawn_replica_with_clock(&[], fast.clone()).await;
    let replicas = [app.base.clone(), behind, ahead];
    let advance = |by: Duration| {
        for clock in [&app.clock, &slow, &fast] {
            clock.advance(by);
        }
    };

    let mut tokens = Vec::new();
    for i in 0..4 {
        tokens.push(app.signed_in(&format!("user{i}@example.com")).await);
    }
    for round in 0..6 {
        for session in tokens.iter_mut() {
            // The same token at once on all three replicas (two tabs and a
            // retry, say), released together from behind the session's lock.
            let held = app.db.lock_session(&session.session_id).await;
            let racers: Vec<_> = replicas
                .iter()
                .map(|base| {
                    let request = app
                        .http
                        .post(format!("{base}/refresh"))
                        .header("cookie", format!("{COOKIE}={}", session.refresh))
                        .header("content-type", "application/json")
                        .send();
                    tokio::spawn(request)
                })
                .collect();
            held.wait_for_waiters(3).await;
            held.release().await;
            let mut successors = HashSet::new();
            for r in racers {
                let r = r.await.unwrap().unwrap();
                assert_eq!(r.status(), StatusCode::OK, "round {round}");
                successors.insert(refresh_set_cookie(r.headers()).unwrap().value);
            }
            assert_eq!(successors.len(), 1, "round {round}: one successor");
            session.refresh = successors.into_iter().next().unwrap();
        }
        advance(Duration::from_secs(3));
    }

    // Every chain goes on, whichever replica serves it.
    for (i, session) in tokens.iter_mut().enumerate() {
        let base = &replicas[i % 3];
        let r = app.refresh_response_at(base, &session.refresh).await;
        assert_eq!(r.status(), StatusCode::OK);
        let previous = std::mem::replace(
            &mut session.refresh,
            refresh_set_cookie(r.headers()).unwrap().value,
        );
        // And a replayed token outside the grace window is still reuse, on
        // the replica whose clock is furthest behind: a window seen from
        // another replica is off by their skew (here up to 4 s), no more.
        advance(Duration::from_secs(15));
        let r = app.refresh_response_at(&replicas[1], &previous).await;
        assert_problem(r, StatusCode::UNAUTHORIZED, "refresh_token_reused").await;
    }
}

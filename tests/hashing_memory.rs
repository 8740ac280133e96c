//! Peak memory across a burst of logins with the real (OWASP) parameters,
//! and its release once the hashing threads are idle. A
//! test binary of its own, so nothing else allocates in this process while
//! it measures (cargo-nextest also runs each test in its own process).

use std::net::IpAddr;
use std::time::Duration;

use authd::domain::Password;
use authd::password::{PasswordHasher, Verified};

const MIB: u64 = 1024 * 1024;

/// A `/proc/self/status` field in bytes (`VmRSS`, `VmHWM`).
fn status(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status")
        .expect("this test reads /proc/self/status: it needs Linux");
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unreadable {line:?}"));
    kib * 1024
}

/// 200 hashes and verifications, 16 callers at a time, through 2 hashing
/// threads at m = 19456 KiB. The threads own 2 × 19 MiB between them for
/// their whole life, so the peak may rise by that and some allocator slack:
/// at most 64 MiB over the process's resident size at the start. Allocating
/// argon2's memory per hash instead (argon2's own `hash_password`) leaves
/// 19 MiB blocks in glibc's per-thread arenas after each `free` once its
/// dynamic mmap threshold has risen, and the peak climbs well past that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_logins_stays_within_64_mib_of_the_baseline() {
    // Reset VmHWM to the current RSS, so the peak is measured from here.
    std::fs::write("/proc/self/clear_refs", "5")
        .expect("this test resets the peak RSS via /proc/self/clear_refs: it needs Linux >= 4.0");
    let baseline = status("VmRSS");

    let hasher = PasswordHasher::new(2, 32, Duration::from_secs(60));
    let password = Password::new("correct horse battery".into());
    let mut callers = Vec::new();
    for caller in 0..16u8 {
        let hasher = hasher.clone();
        let password = password.clone();
        let ip = Some(IpAddr::from([10, 0, 0, caller]));
        callers.push(tokio::spawn(async move {
            let mut stored = None;
            // 200 operations in all: 12 or 13 per caller, alternating.
            for op in (caller as usize..200).step_by(16) {
                let ticket = hasher.admit(ip).expect("16 callers fit in 34 places");
                if op % 2 == 0 || stored.is_none() {
                    stored = Some(ticket.hash(&password).await.unwrap());
                } else {
                    let v = ticket.verify(&password, stored.clone()).await.unwrap();
                    assert_eq!(v, Verified::Yes);
                }
            }
        }));
    }
    for c in callers {
        c.await.unwrap();
    }
    assert_eq!((hasher.queue_depth(), hasher.busy()), (0, 0));

    let peak = status("VmHWM");
    let grew = peak.saturating_sub(baseline);
    eprintln!(
        "baseline RSS {} MiB, peak {} MiB, grew {} MiB; now {} MiB",
        baseline / MIB,
        peak / MIB,
        grew / MIB,
        status("VmRSS") / MIB
    );
    assert!(
        grew <= 64 * MIB,
        "peak RSS grew by {} MiB during the burst (limit 64 MiB)",
        grew / MIB
    );

    // Idle threads hand their argon2 pages back: within 10 s the process is
    // back within 16 MiB of where it started (the 2 × 19 MiB are gone).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = status("VmRSS");
        if now <= baseline + 16 * MIB {
            eprintln!("idle RSS {} MiB", now / MIB);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "RSS still {} MiB over the baseline 10 s after the burst",
            now.saturating_sub(baseline) / MIB
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And the memory works again after its release.
    let ticket = hasher.admit(None).expect("an idle hasher admits");
    let stored = ticket.hash(&password).await.unwrap();
    let ticket = hasher.admit(None).expect("an idle hasher admits");
    assert_eq!(
        ticket.verify(&password, Some(stored)).await.unwrap(),
        Verified::Yes
    );
}

/// Memory that other threads freed (a load of requests leaves its buffers
/// behind) stays resident in glibc's arenas until the allocator trims them.
/// A burst of hashing starts by giving those free pages back, so its argon2
/// memory lands on a trimmed heap rather than on top of the last load's.
#[cfg(target_env = "gnu")]
#[tokio::test]
async fn a_burst_of_hashing_first_gives_the_heaps_free_pages_back() {
    let hasher = PasswordHasher::new(2, 32, Duration::from_secs(60));
    // 64 MiB in 4 KiB pieces (below any mmap threshold, above the tcache's
    // sizes), allocated and freed on another thread; the piece allocated last
    // stays in use, so the freed ones are not at the top of the arena, where
    // `free` itself would hand them back.
    let last = std::thread::spawn(|| {
        let pieces: Vec<Vec<u8>> = (0..16_384).map(|_| vec![1u8; 4096]).collect();
        let last = vec![1u8; 4096];
        drop(pieces);
        last
    })
    .join()
    .unwrap();
    let before = status("VmRSS");

    let password = Password::new("correct horse battery".into());
    let ticket = hasher.admit(None).expect("an idle hasher admits");
    ticket.hash(&password).await.unwrap();
    let after = status("VmRSS");
    eprintln!(
        "RSS with 64 MiB freed {} MiB, after the first hash {} MiB",
        before / MIB,
        after / MIB
    );
    assert!(
        after + 48 * MIB <= before,
        "RSS went from {} to {} MiB: the free 64 MiB were not given back",
        before / MIB,
        after / MIB
    );
    drop(last);
}

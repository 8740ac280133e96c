//! argon2id hashing on a few long-lived threads that each own their argon2
//! memory, behind an admission check by expected wait with a fair share per
//! client IP: a login flood is refused at once (→ 503 + Retry-After) instead of
//! growing the heap, stalling refreshes or locking other clients out.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::oneshot;

use crate::domain::Password;

/// How long a caller may expect to wait for its hash before it is refused.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(1);

/// Stored hashes needing more memory than this are refused rather than
/// allocated (1 GiB; OWASP's strongest argon2id setting is 46 MiB).
const MAX_STORED_M_COST: u32 = 1024 * 1024;

/// While requests other than password checks were served this recently, one
/// core stays free of hashing (see [`Shared::hashing_threads`]).
const RESERVE_WINDOW: Duration = Duration::from_millis(250);

/// Weight of the newest hash in the moving average of hash times.
const HASH_TIME_WEIGHT: f64 = 0.2;
/// Weight of the newest sample in the moving average of how far hash times
/// stray from the mean (TCP's RTTVAR weight, RFC 6298).
const HASH_SPREAD_WEIGHT: f64 = 0.25;

const DUMMY_PASSWORD: &[u8] = b"authd dummy password, never matches";
/// A hashing thread idle this long hands its argon2 memory's pages back to the
/// OS (it keeps the allocation; the next hash faults them in again, about a
/// millisecond against tens for the hash). Idle replicas so stay small.
const IDLE_RELEASE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The expected wait is over the limit, or the caller's share is used up.
    /// `retry_after` is whole seconds, at least one.
    #[error("password hashing is at capacity; retry in {}s", retry_after.as_secs())]
    Busy { retry_after: Duration },
    #[error("password hashing failed: {0}")]
    Internal(String),
}

fn internal(e: impl std::fmt::Display) -> HashError {
    HashError::Internal(e.to_string())
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    No,
    Yes,
    /// Correct, and the stored hash used other parameters: here is a new one.
    YesRehashed(String),
}

/// The hashing threads and their queue. Cheap to clone; the threads stop when
/// the last clone and the last ticket are gone.
#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    /// Verified against when the email is unknown, so both cases cost the same.
    dummy_hash: String,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake_dispatcher();
    }
}

/// What the callers, the dispatcher and the hashing threads share.
///
/// The hashing threads run under `SCHED_IDLE` (see [`lower_priority`]): any
/// other thread preempts them, and one preempted while holding a lock would
/// stall whoever waits for that lock until the cores are free again (a priority
/// inversion). So they never touch `state`, the lock the request handlers
/// take: a dispatcher thread at normal priority does all the queue's
/// bookkeeping, hands each hashing thread its next job through that thread's
/// own slot, and takes the results back through `finished`. Callers and the
/// dispatcher share `state`; the dispatcher and the hashing threads share only
/// the slots and `finished`.
struct Shared {
    state: Mutex<State>,
    /// One per hashing thread: the job it is to run next.
    slots: Vec<Slot>,
    /// Hashes done, waiting for the dispatcher to account for and answer.
    finished: Mutex<Vec<Finished>>,
    dispatcher: OnceLock<Thread>,
    /// When [`PasswordHasher::other_work`] was last called, in milliseconds
    /// since `started` (0: never).
    other_work_at: AtomicU64,
    started: Instant,
    params: Params,
    threads: usize,
    max_queue: usize,
    max_wait: Duration,
}

impl Shared {
    // Nothing panics while holding the lock, and every update leaves the
    // counts consistent, so a poisoned lock is still safe to use.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many hashing threads may run now: all of them, except while other
    /// requests (refreshes, `/me`, logouts) are being served, when one core
    /// stays free of hashing. A busy scheduler gives even `SCHED_IDLE`
    /// threads their turn in slices, and on a small machine two cores of
    /// argon2 put milliseconds of queueing on every other request; one free
    /// core keeps them at their usual latency during a login flood. Logins
    /// alone still get every core.
    fn hashing_threads(&self) -> usize {
        self.hashing_threads_at(self.started.elapsed().as_millis())
    }

    /// [`Self::hashing_threads`] at `now_ms` after `started`.
    fn hashing_threads_at(&self, now_ms: u128) -> usize {
        let at = self.other_work_at.load(Ordering::Relaxed);
        let recent = at != 0 && now_ms < u128::from(at) + RESERVE_WINDOW.as_millis();
        if recent && self.threads > 1 {
            self.threads - 1
        } else {
            self.threads
        }
    }

    /// Tell the dispatcher something changed: a job was queued or finished,
    /// or the hasher closed. (`unpark` takes no lock.)
    fn wake_dispatcher(&self) {
        if let Some(t) = self.dispatcher.get() {
            t.unpark();
        }
    }
}

/// A hashing thread's mailbox.
#[derive(Default)]
struct Slot {
    job: Mutex<Option<Job>>,
    /// Set when the hasher has closed and every job is done: the thread ends.
    closed: AtomicBool,
    thread: OnceLock<Thread>,
}

impl Slot {
    fn take(&self) -> Option<Job> {
        self.job
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn give(&self, job: Job) {
        *self.job.lock().unwrap_or_else(PoisonError::into_inner) = Some(job);
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// A hash done on thread `slot`, for the dispatcher to account for and answer.
struct Finished {
    slot: usize,
    client: ClientKey,
    /// How long the hash took, when it succeeded (the admission estimate).
    took: Option<Duration>,
    result: Result<Done, HashError>,
    reply: oneshot::Sender<Result<Done, HashError>>,
}

/// Admission key. IPv6 clients are grouped by /64: one subscriber usually has
/// a whole /64, so per-address shares would be free to multiply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ClientKey {
    /// No address known (the CLI; a transport without peer addresses).
    Unknown,
    V4(std::net::Ipv4Addr),
    V6Prefix(u64),
}

impl ClientKey {
    fn of(ip: Option<IpAddr>) -> Self {
        match ip {
            None => Self::Unknown,
            Some(IpAddr::V4(v4)) => Self::V4(v4),
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4),
                None => Self::V6Prefix((v6.to_bits() >> 64) as u64),
            },
        }
    }
}

#[derive(Default)]
struct ClientState {
    /// Places held: admitted, not yet on a thread (queued or about to be).
    places: usize,
    /// Hashes of this client on a thread right now.
    running: usize,
    /// Submitted jobs, in order.
    jobs: VecDeque<Job>,
}

struct State {
    clients: HashMap<ClientKey, ClientState>,
    /// Clients with submitted jobs, in round-robin order.
    rotation: VecDeque<ClientKey>,
    /// Sum of `places`.
    queued: usize,
    /// Sum of `running`.
    running: usize,
    /// Moving average of recent hash times.
    hash_time: Duration,
    /// Moving average of how far recent hash times strayed from `hash_time`.
    hash_spread: Duration,
    next_id: u64,
    closed: bool,
}

impl State {
    /// Expected time until a new job of `key` is hashed: (the hashes running
    /// now, the jobs ahead of it, and its own) × hash time ÷ threads. The queue is served round-robin across
    /// clients, so the new job is served in round `mine + 1` (after the
    /// client's own places), and each round before it serves one job of every
    /// other client that has one queued. A flooding client refills its places
    /// as fast as they are served, so each other client with a place counts
    /// for `mine + 1` jobs, not for what it holds now: a client with nothing
    /// queued waits behind one job per other client, not behind a flood, and
    /// a client with many places waits for as many rounds as it holds.
    fn expected_wait(&self, key: ClientKey, threads: usize) -> Duration {
        let jobs = u32::try_from(self.jobs_until_done(key, threads)).unwrap_or(u32::MAX);
        self.hash_time.saturating_mul(jobs) / u32::try_from(threads).unwrap_or(u32::MAX)
    }

    /// What admission compares with `max_wait`: the expected wait plus two
    /// spreads of it. Hash times vary (a hashing thread yields its core to
    /// every other request), and a login is to be refused at once rather
    /// than left waiting past `max_wait`. Each thread serves its share of
    /// the jobs one after another, so the spread of their sum grows as the
    /// square root of that share.
    fn wait_bound(&self, key: ClientKey, threads: usize) -> Duration {
        let share = self.jobs_until_done(key, threads) as f64 / threads.max(1) as f64;
        self.expected_wait(key, threads) + self.hash_spread.mul_f64(2.0 * share.sqrt())
    }

    /// The jobs that run before a new job of `key` is done, its own included.
    fn jobs_until_done(&self, key: ClientKey, threads: usize) -> usize {
        let mine = self.clients.get(&key).map_or(0, |c| c.places);
        let others = self
            .clients
            .iter()
            .filter(|(k, c)| **k != key && c.places > 0)
            .count();
        // Plus what is on the threads now: each finishes before a new job
        // can start there.
        (mine + 1)
            .saturating_mul(others + 1)
            .saturating_add(self.running.min(threads))
    }

    fn take_place(&mut self, key: ClientKey) {
        self.clients.entry(key).or_default().places += 1;
        self.queued += 1;
    }

    fn give_back_place(&mut self, key: ClientKey) {
        if let Some(c) = self.clients.get_mut(&key) {
            c.places = c.places.saturating_sub(1);
            self.queued = self.queued.saturating_sub(1);
        }
        self.forget_if_idle(key);
    }

    fn forget_if_idle(&mut self, key: ClientKey) {
        if self
            .clients
            .get(&key)
            .is_some_and(|c| c.places == 0 && c.running == 0 && c.jobs.is_empty())
        {
            self.clients.remove(&key);
        }
    }

    fn enqueue(&mut self, key: ClientKey, job: Job) {
        let c = self.clients.entry(key).or_default();
        if c.jobs.is_empty() {
            self.rotation.push_back(key);
        }
        c.jobs.push_back(job);
    }

    /// The next job, round-robin across clients; its place becomes a running hash.
    fn take_next(&mut self) -> Option<(ClientKey, Job)> {
        while let Some(key) = self.rotation.pop_front() {
            let Some(c) = self.clients.get_mut(&key) else {
                continue;
            };
            let Some(job) = c.jobs.pop_front() else {
                continue;
            };
            if !c.jobs.is_empty() {
                self.rotation.push_back(key);
            }
            c.places = c.places.saturating_sub(1);
            c.running += 1;
            self.queued = self.queued.saturating_sub(1);
            self.running += 1;
            return Some((key, job));
        }
        None
    }

    /// The next job that can still be done within `max_wait` of its
    /// admission. Admission expected it to be; when hashes then took longer (the
    /// cores were busy with other work), one that would now be answered late
    /// is taken out into `late`, to be refused at once rather than served
    /// past the wait it was promised, and the next one is tried. When a hash
    /// alone takes `max_wait` or longer, no job could be on time: none is
    /// refused (as a free thread admits any).
    fn take_next_on_time(
        &mut self,
        max_wait: Duration,
        late: &mut Vec<Job>,
    ) -> Option<(ClientKey, Job)> {
        while let Some((key, job)) = self.take_next() {
            let on_time = self.hash_time >= max_wait
                || job.admitted_at.elapsed() + self.hash_time <= max_wait;
            if on_time {
                return Some((key, job));
            }
            self.finished(key, None);
            late.push(job);
        }
        None
    }

    /// Remove a job that is still queued (its caller went away) and give its
    /// place back. A job already on a thread is left to finish.
    fn withdraw(&mut self, key: ClientKey, id: u64) {
        let Some(c) = self.clients.get_mut(&key) else {
            return;
        };
        let Some(at) = c.jobs.iter().position(|j| j.id == id) else {
            return;
        };
        c.jobs.remove(at);
        if c.jobs.is_empty() {
            self.rotation.retain(|k| *k != key);
        }
        self.give_back_place(key);
    }

    fn finished(&mut self, key: ClientKey, took: Option<Duration>) {
        if let Some(c) = self.clients.get_mut(&key) {
            c.running = c.running.saturating_sub(1);
            self.running = self.running.saturating_sub(1);
        }
        self.forget_if_idle(key);
        if let Some(took) = took {
            // The spread against the mean before this sample (RFC 6298's order).
            self.hash_spread = self.hash_spread.mul_f64(1.0 - HASH_SPREAD_WEIGHT)
                + took.abs_diff(self.hash_time).mul_f64(HASH_SPREAD_WEIGHT);
            self.hash_time =
                self.hash_time.mul_f64(1.0 - HASH_TIME_WEIGHT) + took.mul_f64(HASH_TIME_WEIGHT);
        }
    }
}

struct Job {
    id: u64,
    client: ClientKey,
    /// When its caller was admitted ([`HashTicket::admitted_at`]).
    admitted_at: Instant,
    /// When it joined the queue (the wait metric).
    queued_at: Instant,
    /// When the dispatcher gave it to a thread: its service time counts from
    /// here, so a thread that waits for a core makes the estimate grow.
    given_at: Option<Instant>,
    work: Work,
    reply: oneshot::Sender<Result<Done, HashError>>,
}

enum Work {
    Hash(Password),
    Verify {
        password: Password,
        stored: String,
        /// False for the dummy hash of an unknown email: the answer is `No`.
        known: bool,
    },
    /// Holds its thread until `release` is signalled or dropped.
    #[cfg(test)]
    Gate {
        started: oneshot::Sender<()>,
        release: std::sync::mpsc::Receiver<()>,
    },
    #[cfg(test)]
    Panic,
}

#[derive(Debug)]
enum Done {
    Hashed(String),
    Verified(Verified),
    #[cfg(test)]
    Nothing,
}

impl Work {
    fn run(self, params: &Params, blocks: &mut [Block]) -> Result<Done, HashError> {
        match self {
            Work::Hash(password) => hash_into(params, password.expose(), blocks).map(Done::Hashed),
            Work::Verify {
                password,
                stored,
                known,
            } => {
                let matches = verify_into(&stored, password.expose(), blocks, MAX_STORED_M_COST)?;
                Ok(Done::Verified(if !known || !matches {
                    Verified::No
                } else if needs_rehash(&stored, params) {
                    Verified::YesRehashed(hash_into(params, password.expose(), blocks)?)
                } else {
                    Verified::Yes
                }))
            }
            #[cfg(test)]
            Work::Gate { started, release } => {
                let _ = started.send(());
                let _ = release.recv();
                Ok(Done::Nothing)
            }
            #[cfg(test)]
            Work::Panic => panic!("hash panicked (test)"),
        }
    }
}

impl PasswordHasher {
    /// OWASP parameters: argon2id, m = 19456 KiB, t = 2, p = 1.
    pub fn new(threads: usize, max_queue: usize, max_wait: Duration) -> Self {
        Self::with_params(Params::default(), threads, max_queue, max_wait)
    }

    /// Start `threads` hashing threads (at least one). At most `threads +
    /// max_queue` hashes are admitted at once, and none whose expected wait is
    /// over `max_wait`. Blocks for one hash per thread: each thread measures
    /// the hash time (the admission estimate starts from it) and the first
    /// one's hash becomes the dummy hash.
    pub fn with_params(
        params: Params,
        threads: usize,
        max_queue: usize,
        max_wait: Duration,
    ) -> Self {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                clients: HashMap::new(),
                rotation: VecDeque::new(),
                queued: 0,
                running: 0,
                hash_time: Duration::ZERO,
                hash_spread: Duration::ZERO,
                next_id: 0,
                closed: false,
            }),
            slots: (0..threads.max(1)).map(|_| Slot::default()).collect(),
            finished: Mutex::new(Vec::new()),
            dispatcher: OnceLock::new(),
            other_work_at: AtomicU64::new(0),
            started: Instant::now(),
            params,
            threads,
            max_queue,
            max_wait,
        });
        let (ready, calibrated) = std::sync::mpsc::channel();
        for n in 0..threads {
            let theirs = Arc::clone(&shared);
            let ready = ready.clone();
            let handle = thread::Builder::new()
                .name(format!("authd-hash-{n}"))
                .spawn(move || {
                    lower_priority();
                    // This thread's argon2 memory for its whole life: one
                    // allocation, reused by every hash (see the README).
                    let mut blocks = vec![Block::new(); theirs.params.block_count()];
                    let started = Instant::now();
                    let dummy = hash_into(&theirs.params, DUMMY_PASSWORD, &mut blocks);
                    let _ = ready.send(dummy.map(|d| (started.elapsed(), d)));
                    serve(&theirs, n, &mut blocks);
                })
                .expect("the OS starts a password hashing thread");
            let _ = shared.slots[n].thread.set(handle.thread().clone());
        }
        let dispatcher = {
            let theirs = Arc::clone(&shared);
            thread::Builder::new()
                .name("authd-hashqueue".into())
                .spawn(move || dispatch(&theirs))
                .expect("the OS starts the password hashing dispatcher")
        };
        let _ = shared.dispatcher.set(dispatcher.thread().clone());
        drop(ready);
        let mut dummy_hash = None;
        let mut first_hashes = Vec::with_capacity(threads);
        for _ in 0..threads {
            let (took, hash) = calibrated
                .recv()
                .expect("a password hashing thread reports its first hash")
                .expect("argon2 with valid parameters hashes");
            first_hashes.push(took);
            dummy_hash.get_or_insert(hash);
        }
        shared.lock().hash_time = mean(&first_hashes);
        Self {
            inner: Arc::new(Inner {
                shared,
                dummy_hash: dummy_hash.unwrap_or_default(),
            }),
        }
    }

    /// Ask for a place in the hashing queue; answers at once. Refused when the
    /// expected wait is over `max_wait`, when `threads + max_queue` places are
    /// taken, or when `client` already holds its share: half of the places
    /// that fit within `max_wait` (at most half of `threads + max_queue`), so
    /// a flood from one address always leaves the other half to everyone
    /// else. A free thread always admits: nobody would be served sooner.
    pub fn admit(&self, client: Option<IpAddr>) -> Result<HashTicket, HashError> {
        let shared = &self.inner.shared;
        let key = ClientKey::of(client);
        let threads = shared.hashing_threads();
        let mut state = shared.lock();
        let outstanding = state.queued + state.running;
        if outstanding >= threads {
            let wait = state.wait_bound(key, threads);
            let limit = shared.threads + shared.max_queue;
            let share =
                (limit.min(places_within(shared.max_wait, state.hash_time, threads)) / 2).max(1);
            let held = state.clients.get(&key).map_or(0, |c| c.places + c.running);
            let refusal = if outstanding >= limit {
                Some("queue full")
            } else if held >= share {
                Some("client share used")
            } else if wait > shared.max_wait {
                Some("expected wait too long")
            } else {
                None
            };
            if let Some(reason) = refusal {
                drop(state);
                let retry_after = whole_seconds(wait);
                tracing::debug!(
                    reason,
                    expected_wait_ms = wait.as_millis(),
                    retry_after_s = retry_after.as_secs(),
                    "password hash refused"
                );
                return Err(HashError::Busy { retry_after });
            }
        }
        state.take_place(key);
        Ok(HashTicket {
            inner: Arc::clone(&self.inner),
            client: key,
            holds_place: true,
            admitted_at: Instant::now(),
        })
    }

    /// Note a request that needs no password check (a refresh, `/me`, a
    /// logout): for a moment, hashing leaves one core to such requests.
    pub fn other_work(&self) {
        let shared = &self.inner.shared;
        let now = u64::try_from(shared.started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        // Only a changed value is written: no cache line bouncing between
        // cores at thousands of requests per second.
        if shared.other_work_at.load(Ordering::Relaxed) != now {
            shared.other_work_at.store(now, Ordering::Relaxed);
        }
    }

    /// Places held right now: admitted and not yet on a thread (metrics, tests).
    pub fn queue_depth(&self) -> usize {
        self.inner.shared.lock().queued
    }

    /// Hashes on a thread right now, including those whose caller went away.
    pub fn busy(&self) -> usize {
        self.inner.shared.lock().running
    }

    /// Moving average of recent hash times: the admission estimate's unit.
    pub fn hash_time(&self) -> Duration {
        self.inner.shared.lock().hash_time
    }

    #[cfg(test)]
    fn set_hash_time(&self, d: Duration) {
        self.inner.shared.lock().hash_time = d;
    }

    #[cfg(test)]
    fn set_hash_spread(&self, d: Duration) {
        self.inner.shared.lock().hash_spread = d;
    }
}

/// How many jobs fit in `max_wait` at `hash_time` each on `threads` threads.
fn places_within(max_wait: Duration, hash_time: Duration, threads: usize) -> usize {
    let per_job = hash_time.as_nanos().max(1);
    usize::try_from(max_wait.as_nanos().saturating_mul(threads as u128) / per_job)
        .unwrap_or(usize::MAX)
}

/// The mean of `times` (zero for none): the first estimate of a hash's time,
/// from each thread's first hash.
fn mean(times: &[Duration]) -> Duration {
    let n = u32::try_from(times.len()).unwrap_or(u32::MAX).max(1);
    times.iter().sum::<Duration>() / n
}

/// Whole seconds, rounded up, at least one (the `Retry-After` unit).
fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs((d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1))
}

/// A place in the hashing queue. Used by [`HashTicket::hash`] or
/// [`HashTicket::verify`]; dropped unused, it gives its place back at once.
#[must_use = "a ticket holds a place in the hashing queue until it is used or dropped"]
pub struct HashTicket {
    inner: Arc<Inner>,
    client: ClientKey,
    /// False once the place travels with a submitted job.
    holds_place: bool,
    /// When the place was given: the wait admission promised counts from
    /// here (a login looks its user up between admission and hashing).
    admitted_at: Instant,
}

impl Drop for HashTicket {
    fn drop(&mut self) {
        if self.holds_place {
            self.inner.shared.lock().give_back_place(self.client);
        }
    }
}

impl HashTicket {
    /// The returned future owns what it needs (it can be spawned); dropping
    /// it before the hash starts gives the place back.
    pub fn hash(
        self,
        password: &Password,
    ) -> impl Future<Output = Result<String, HashError>> + Send + 'static {
        let work = Work::Hash(password.clone());
        async move {
            match self.run(work).await? {
                Done::Hashed(h) => Ok(h),
                _ => Err(internal("unexpected hashing result")),
            }
        }
    }

    /// Verify `password` against `stored`, or against the dummy hash when there
    /// is no user (`stored = None`), which always answers `No`.
    pub fn verify(
        self,
        password: &Password,
        stored: Option<String>,
    ) -> impl Future<Output = Result<Verified, HashError>> + Send + 'static {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.inner.dummy_hash.clone());
        let work = Work::Verify {
            password: password.clone(),
            stored,
            known,
        };
        async move {
            match self.run(work).await? {
                Done::Verified(v) => Ok(v),
                _ => Err(internal("unexpected verification result")),
            }
        }
    }

    async fn run(mut self, work: Work) -> Result<Done, HashError> {
        let shared = Arc::clone(&self.inner.shared);
        let (reply, result) = oneshot::channel();
        let id = {
            let mut state = shared.lock();
            let id = state.next_id;
            state.next_id += 1;
            state.enqueue(
                self.client,
                Job {
                    id,
                    client: self.client,
                    admitted_at: self.admitted_at,
                    queued_at: Instant::now(),
                    given_at: None,
                    work,
                    reply,
                },
            );
            id
        };
        self.holds_place = false;
        shared.wake_dispatcher();
        // If this future is dropped while the job is still queued, the place
        // comes back at once; a job already on a thread finishes there.
        let _queued = Queued {
            shared: &shared,
            client: self.client,
            id,
        };
        result
            .await
            .map_err(|_| internal("the hashing thread dropped the job"))?
    }
}

struct Queued<'a> {
    shared: &'a Shared,
    client: ClientKey,
    id: u64,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.shared.lock().withdraw(self.client, self.id);
    }
}

/// The dispatcher's loop (normal priority): account for finished hashes and
/// answer their callers, then give every free hashing thread the next job,
/// round-robin across clients. When the hasher has closed and every job is
/// done, it lets the hashing threads end, and ends.
fn dispatch(shared: &Shared) {
    let mut free = vec![true; shared.slots.len()];
    let mut trimmed_at: Option<Instant> = None;
    loop {
        let finished = std::mem::take(
            &mut *shared
                .finished
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let mut state = shared.lock();
        let mut replies = Vec::with_capacity(finished.len());
        for f in finished {
            free[f.slot] = true;
            state.finished(f.client, f.took);
            replies.push((f.reply, f.result));
        }
        let allowed = shared.hashing_threads();
        let mut busy = free.iter().filter(|f| !**f).count();
        let mut late = Vec::new();
        // A burst of hashing is about to start: each thread's argon2 memory
        // becomes resident again on top of whatever the heap holds. Give the
        // heap's free pages back first (what a load of other requests left in
        // glibc's arenas), at most once per `IDLE_RELEASE`, outside the lock.
        if busy == 0
            && !state.rotation.is_empty()
            && trimmed_at.is_none_or(|t| t.elapsed() >= IDLE_RELEASE)
        {
            drop(state);
            for (reply, result) in replies {
                let _ = reply.send(result);
            }
            trim_heap();
            trimmed_at = Some(Instant::now());
            continue;
        }
        for (slot, is_free) in shared.slots.iter().zip(free.iter_mut()) {
            if busy >= allowed {
                break;
            }
            if !*is_free {
                continue;
            }
            let Some((_, mut job)) = state.take_next_on_time(shared.max_wait, &mut late) else {
                break;
            };
            job.given_at = Some(Instant::now());
            *is_free = false;
            busy += 1;
            slot.give(job);
        }
        let done = state.closed && free.iter().all(|f| *f) && state.rotation.is_empty();
        drop(state);
        for job in late {
            tracing::debug!(
                waited_ms = job.admitted_at.elapsed().as_millis(),
                "password hash refused: its wait outgrew the estimate"
            );
            let retry_after = whole_seconds(Duration::ZERO);
            replies.push((job.reply, Err(HashError::Busy { retry_after })));
        }
        // Accounted for before the answer, so a caller that has its result
        // sees the thread free.
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
        if done {
            for slot in &shared.slots {
                slot.closed.store(true, Ordering::Release);
                if let Some(t) = slot.thread.get() {
                    t.unpark();
                }
            }
            return;
        }
        thread::park();
    }
}

/// A hashing thread's loop: run the job in its slot with this thread's
/// memory, hand the result to the dispatcher; release the memory's pages
/// after `IDLE_RELEASE` without work.
fn serve(shared: &Shared, n: usize, blocks: &mut [Block]) {
    let slot = &shared.slots[n];
    // Whether `blocks` may hold resident pages (false once released).
    let mut resident = true;
    let mut idle_since = Instant::now();
    loop {
        let Some(job) = slot.take() else {
            if slot.closed.load(Ordering::Acquire) {
                return;
            }
            if resident {
                let left = IDLE_RELEASE.saturating_sub(idle_since.elapsed());
                if left.is_zero() {
                    release_pages(blocks);
                    resident = false;
                } else {
                    thread::park_timeout(left);
                }
            } else {
                thread::park();
            }
            continue;
        };
        resident = true;
        let started = job.given_at.unwrap_or_else(Instant::now);
        crate::metrics::hash_wait(started.saturating_duration_since(job.queued_at));
        // A panic must neither lose the thread nor the caller's answer.
        let result = panic::catch_unwind(AssertUnwindSafe(|| job.work.run(&shared.params, blocks)))
            .unwrap_or_else(|_| Err(internal("password hashing panicked")));
        let took = result.is_ok().then(|| started.elapsed());
        if let Some(took) = took {
            crate::metrics::hash_duration(took);
        }
        shared
            .finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Finished {
                slot: n,
                client: job.client,
                took,
                result,
                reply: job.reply,
            });
        shared.wake_dispatcher();
        idle_since = Instant::now();
    }
}

/// Give the pages of an idle thread's argon2 memory back to the OS, keeping
/// the allocation (`MADV_DONTNEED`: the range reads as zeros until written).
#[cfg(target_os = "linux")]
fn release_pages(blocks: &mut [Block]) {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let start = blocks.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(blocks);
    // Whole pages inside the slice only: the allocator's bookkeeping next to
    // it stays untouched.
    let from = start.next_multiple_of(page);
    let to = end - end % page;
    if to <= from {
        return;
    }
    // SAFETY: [from, to) lies inside `blocks`, which this thread borrows
    // mutably, so nothing else reads or writes it meanwhile. Afterwards the
    // range reads as zeros: an all-zero `Block` is a valid value, and argon2
    // writes every block before it reads it.
    let rc = unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_DONTNEED) };
    if let Err(e) = os_result(rc) {
        tracing::debug!(error = %e, "cannot release an idle hashing thread's memory");
    }
}

/// A libc call's return code as a result: 0 is success, anything else the
/// thread's `errno`.
#[cfg(target_os = "linux")]
fn os_result(rc: libc::c_int) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn release_pages(_blocks: &mut [Block]) {}

/// Hand the free pages of every malloc arena back to the OS. glibc keeps
/// memory freed by the runtime's threads (buffers of finished requests) in
/// its arenas; RSS only falls when the top of an arena is free or on this
/// call. Takes each arena's lock in turn, briefly: called from the
/// dispatcher, which runs at normal priority, never from a hashing thread
/// (a `SCHED_IDLE` thread preempted while holding an arena lock would stall
/// every allocation in that arena).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: malloc_trim has no preconditions; it only returns free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

/// Hashing threads run under `SCHED_IDLE`: the scheduler gives them a core
/// only when nothing else wants it, and any other thread that wakes up (the
/// async runtime's workers serving refreshes, `/me` and health checks, the
/// database on the same host) preempts them at once. A login flood so cannot
/// delay other requests; hashes just take longer while the cores are busy,
/// which the moving average sees, so admission refuses sooner. On an idle
/// machine they run at full speed. Linux applies the policy per thread, so
/// this touches no other thread. Where `SCHED_IDLE` is refused, nice +19.
#[cfg(target_os = "linux")]
fn lower_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    let Err(e) = os_result(rc) else {
        return;
    };
    tracing::debug!(
        error = %e,
        "cannot run a password hashing thread under SCHED_IDLE; lowering its nice value"
    );
    // SAFETY: gettid has no preconditions; setpriority only reads its
    // arguments, and the id is this thread's own.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(
            libc::PRIO_PROCESS,
            libc::id_t::try_from(tid).unwrap_or(0),
            19,
        )
    };
    if let Err(e) = os_result(rc) {
        tracing::debug!(error = %e, "cannot lower the priority of a password hashing thread");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// A new PHC string for `password` with `params`, computed in `blocks`.
fn hash_into(params: &Params, password: &[u8], blocks: &mut [Block]) -> Result<String, HashError> {
    let salt = argon2::password_hash::try_generate_salt().map_err(internal)?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    let n = params.block_count();
    let memory = blocks
        .get_mut(..n)
        .ok_or_else(|| internal("hashing memory is smaller than the parameters"))?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(password, &salt, &mut out, memory)
        .map_err(internal)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(internal)?,
        salt: Some(Salt::new(&salt).map_err(internal)?),
        hash: Some(Output::new(&out).map_err(internal)?),
    };
    Ok(phc.to_string())
}

/// Recompute the stored PHC string's hash of `password` with its own
/// algorithm, version and parameters, in `blocks` when they are large enough
/// (the common case: current or smaller parameters), else in a buffer of its
/// own (a stronger hash from another configuration: rare) of at most
/// `max_m_cost` KiB; a stored hash needing more is an error.
fn verify_into(
    stored: &str,
    password: &[u8],
    blocks: &mut [Block],
    max_m_cost: u32,
) -> Result<bool, HashError> {
    let parsed = PasswordHash::new(stored).map_err(internal)?;
    let algorithm = Algorithm::try_from(parsed.algorithm.as_str()).map_err(internal)?;
    let version = parsed
        .version
        .map(Version::try_from)
        .transpose()
        .map_err(internal)?
        .unwrap_or_default();
    let params = Params::try_from(&parsed).map_err(internal)?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        return Err(internal("stored hash has no salt or no output"));
    };
    let mut out = [0u8; Output::MAX_LENGTH];
    let out = out
        .get_mut(..expected.len())
        .ok_or_else(|| internal("stored hash output is too long"))?;
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let n = params.block_count();
    if let Some(memory) = blocks.get_mut(..n) {
        argon2.hash_password_into_with_memory(password, &salt, out, memory)
    } else {
        if params.m_cost() > max_m_cost {
            return Err(internal("stored hash needs more memory than allowed"));
        }
        let mut memory = Vec::new();
        memory.try_reserve_exact(n).map_err(internal)?;
        memory.resize(n, Block::new());
        argon2.hash_password_into_with_memory(password, &salt, out, &mut memory)
    }
    .map_err(internal)?;
    // `Output`'s equality is constant-time.
    Ok(Output::new(out).map_err(internal)? == expected)
}

fn needs_rehash(stored: &str, current: &Params) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return true;
    };
    if parsed.algorithm.as_str() != "argon2id" || parsed.version != Some(Version::V0x13.into()) {
        return true;
    }
    match Params::try_from(&parsed) {
        Ok(p) => {
            p.m_cost() != current.m_cost()
                || p.t_cost() != current.t_cost()
                || p.p_cost() != current.p_cost()
        }
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};

    use super::*;

    fn cheap() -> Params {
        Params::new(1024, 1, 1, None).unwrap()
    }

    fn tiny() -> Params {
        Params::new(8, 1, 1, None).unwrap()
    }

    /// A queue with nothing in it, hashes timed at `hash_time` ± `spread`.
    fn empty_state(hash_time: Duration, spread: Duration) -> State {
        State {
            clients: HashMap::new(),
            rotation: VecDeque::new(),
            queued: 0,
            running: 0,
            hash_time,
            hash_spread: spread,
            next_id: 0,
            closed: false,
        }
    }

    fn pw() -> Password {
        Password::new("correct horse".into())
    }

    fn ip(n: u8) -> Option<IpAddr> {
        Some(IpAddr::from([10, 0, 0, n]))
    }

    /// Occupies one hashing thread until the returned sender is used or dropped.
    async fn gate(h: &PasswordHasher, client: Option<IpAddr>) -> std::sync::mpsc::Sender<()> {
        let (release_tx, release) = std::sync::mpsc::channel();
        let (started, on_thread) = oneshot::channel();
        let ticket = h.admit(client).unwrap();
        tokio::spawn(ticket.run(Work::Gate { started, release }));
        on_thread.await.unwrap();
        release_tx
    }

    #[tokio::test]
    async fn hash_then_verify() {
        let h = PasswordHasher::with_params(cheap(), 2, 4, DEFAULT_MAX_WAIT);
        let stored = h.admit(None).unwrap().hash(&pw()).await.unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"));
        let verify = |p: Password, s: Option<String>| {
            let h = h.clone();
            async move { h.admit(None).unwrap().verify(&p, s).await.unwrap() }
        };
        assert_eq!(verify(pw(), Some(stored.clone())).await, Verified::Yes);
        let wrong = Password::new("wrong horse".into());
        assert_eq!(verify(wrong, Some(stored)).await, Verified::No);
        assert_eq!(verify(pw(), None).await, Verified::No);
        assert_eq!((h.queue_depth(), h.busy()), (0, 0));
    }

    #[tokio::test]
    async fn default_parameters_are_owasp() {
        let h = PasswordHasher::new(1, 0, DEFAULT_MAX_WAIT);
        let stored = h
            .admit(None)
            .unwrap()
            .hash(&Password::new("x".repeat(12)))
            .await
            .unwrap();
        assert!(
            stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
        assert!(
            h.inner
                .dummy_hash
                .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
        );
    }

    /// Reused memory gives argon2's own answers: hashes made here verify with
    /// the library's allocating verifier and the other way round, for the
    /// thread's parameters, smaller ones (a prefix of its memory) and larger
    /// ones (a buffer of their own).
    #[tokio::test]
    async fn reused_memory_agrees_with_argon2() {
        let h = PasswordHasher::with_params(cheap(), 1, 4, DEFAULT_MAX_WAIT);
        for _ in 0..3 {
            let mine = h.admit(None).unwrap().hash(&pw()).await.unwrap();
            let parsed = PasswordHash::new(&mine).unwrap();
            assert!(
                Argon2::default()
                    .verify_password(b"correct horse", &parsed)
                    .is_ok()
            );
            assert!(
                Argon2::default()
                    .verify_password(b"correct horsf", &parsed)
                    .is_err()
            );
        }
        for params in [tiny(), cheap(), Params::new(4096, 2, 2, None).unwrap()] {
            let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(b"correct horse")
                .unwrap()
                .to_string();
            let v = h
                .admit(None)
                .unwrap()
                .verify(&pw(), Some(theirs.clone()))
                .await
                .unwrap();
            assert!(
                matches!(v, Verified::Yes | Verified::YesRehashed(_)),
                "{theirs}"
            );
            let wrong = h
                .admit(None)
                .unwrap()
                .verify(&Password::new("correct horsf".into()), Some(theirs))
                .await
                .unwrap();
            assert_eq!(wrong, Verified::No);
        }
    }

    /// A stored hash larger than the thread's memory gets a buffer of its own
    /// up to the limit, inclusive, and is refused one KiB past it.
    #[test]
    fn a_stored_hash_may_need_exactly_the_memory_limit_and_no_more() {
        let stored = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(4096, 1, 1, None).unwrap(),
        )
        .hash_password(b"correct horse")
        .unwrap()
        .to_string();
        let mut blocks = vec![Block::new(); 1024];
        assert!(verify_into(&stored, b"correct horse", &mut blocks, 4096).unwrap());
        assert!(!verify_into(&stored, b"correct horsf", &mut blocks, 4096).unwrap());
        assert!(matches!(
            verify_into(&stored, b"correct horse", &mut blocks, 4095),
            Err(HashError::Internal(_))
        ));
        // Enough memory of its own: the limit does not apply.
        let mut enough = vec![Block::new(); 4096];
        assert!(verify_into(&stored, b"correct horse", &mut enough, 1024).unwrap());
    }

    #[tokio::test]
    async fn a_stored_hash_that_is_not_argon2_is_an_error_not_a_panic() {
        let h = PasswordHasher::with_params(tiny(), 1, 4, DEFAULT_MAX_WAIT);
        for stored in [
            "",
            "x",
            "$argon2id$v=19$m=8,t=1,p=1$c2FsdA",
            "$argon2id$v=19$m=4294967295,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        ] {
            let r = h
                .admit(None)
                .unwrap()
                .verify(&pw(), Some(stored.into()))
                .await;
            assert!(matches!(r, Err(HashError::Internal(_))), "{stored}: {r:?}");
        }
        assert_eq!((h.queue_depth(), h.busy()), (0, 0));
    }

    #[test]
    fn a_change_of_m_t_p_version_or_algorithm_needs_a_rehash() {
        let current = Params::new(1024, 2, 1, None).unwrap();
        let phc = |alg: Algorithm, version: Version, m, t, p| {
            Argon2::new(alg, version, Params::new(m, t, p, None).unwrap())
                .hash_password(b"pw")
                .unwrap()
                .to_string()
        };
        let (id, v13) = (Algorithm::Argon2id, Version::V0x13);
        assert!(!needs_rehash(&phc(id, v13, 1024, 2, 1), &current));
        assert!(needs_rehash(&phc(id, v13, 2048, 2, 1), &current), "m");
        assert!(needs_rehash(&phc(id, v13, 1024, 3, 1), &current), "t");
        assert!(needs_rehash(&phc(id, v13, 1024, 2, 2), &current), "p");
        assert!(
            needs_rehash(&phc(id, Version::V0x10, 1024, 2, 1), &current),
            "version"
        );
        assert!(
            needs_rehash(&phc(Algorithm::Argon2i, v13, 1024, 2, 1), &current),
            "algorithm"
        );
        assert!(needs_rehash("not a phc string", &current));
    }

    #[tokio::test]
    async fn old_parameters_are_upgraded() {
        let new = PasswordHasher::with_params(
            Params::new(2048, 2, 1, None).unwrap(),
            1,
            4,
            DEFAULT_MAX_WAIT,
        );
        for (m, t, p) in [(1024, 2, 1), (2048, 1, 1), (2048, 2, 2)] {
            let old = Argon2::new(
                Algorithm::Argon2id,
                Version::V0x13,
                Params::new(m, t, p, None).unwrap(),
            )
            .hash_password(b"correct horse")
            .unwrap()
            .to_string();
            match new
                .admit(None)
                .unwrap()
                .verify(&pw(), Some(old))
                .await
                .unwrap()
            {
                Verified::YesRehashed(h) => assert!(h.contains("m=2048,t=2,p=1$"), "{h}"),
                other => panic!("m={m} t={t} p={p}: expected a rehash, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_free_thread_always_admits() {
        // Even a hash slower than max_wait: nobody would be served sooner.
        let h = PasswordHasher::with_params(tiny(), 2, 0, Duration::ZERO);
        h.set_hash_time(Duration::from_secs(5));
        let a = h.admit(ip(1)).unwrap();
        let b = h.admit(ip(1)).unwrap();
        assert!(matches!(h.admit(ip(2)), Err(HashError::Busy { .. })));
        drop((a, b));
        assert_eq!(h.queue_depth(), 0);
    }

    #[tokio::test]
    async fn admission_refuses_at_once_when_the_expected_wait_is_too_long() {
        // One thread held by a gate; hashes take 100 ms; max_wait 1 s: nine
        // distinct clients get a place (the ninth waits for the running hash,
        // eight ahead and its own: 10 × 100 ms = 1 s), the tenth would wait
        // 1.1 s.
        let h = PasswordHasher::with_params(tiny(), 1, 32, Duration::from_secs(1));
        h.set_hash_time(Duration::from_millis(100));
        let release = gate(&h, ip(200)).await;
        let tickets: Vec<_> = (1..=9).map(|n| h.admit(ip(n)).unwrap()).collect();
        assert_eq!(h.queue_depth(), 9);
        match h.admit(ip(10)) {
            Err(HashError::Busy { retry_after }) => {
                assert_eq!(retry_after, Duration::from_secs(2))
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a tenth client was admitted past max_wait"),
        }
        // A client already waiting is behind its own place too: refused.
        assert!(matches!(h.admit(ip(1)), Err(HashError::Busy { .. })));
        drop(tickets);
        assert_eq!(h.queue_depth(), 0);
        assert!(h.admit(ip(11)).is_ok());
        drop(release);
    }

    #[tokio::test]
    async fn admission_counts_how_much_hash_times_vary() {
        // As above, but hash times stray 20 ms from their 100 ms mean: the
        // eighth client (9 jobs: 900 ms expected) could wait 900 + 2 × √9 ×
        // 20 = 1 020 ms, so only seven get a place (800 + 2 × √8 × 20 ≈
        // 913 ms).
        let h = PasswordHasher::with_params(tiny(), 1, 32, Duration::from_secs(1));
        h.set_hash_time(Duration::from_millis(100));
        h.set_hash_spread(Duration::from_millis(20));
        let release = gate(&h, ip(200)).await;
        let tickets: Vec<_> = (1..=7).map(|n| h.admit(ip(n)).unwrap()).collect();
        match h.admit(ip(8)) {
            Err(HashError::Busy { retry_after }) => {
                assert_eq!(retry_after, Duration::from_secs(2))
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("an eighth client was admitted past max_wait"),
        }
        drop(tickets);
        drop(release);
    }

    #[test]
    fn the_spread_follows_how_far_hash_times_stray_from_their_mean() {
        let mut state = empty_state(Duration::from_millis(100), Duration::ZERO);
        let key = ClientKey::of(ip(1));
        state.finished(key, Some(Duration::from_millis(140)));
        // |140 − 100| × 0.25, against the mean before this sample.
        assert_eq!(state.hash_spread, Duration::from_millis(10));
        assert_eq!(state.hash_time, Duration::from_millis(108));
        state.finished(key, Some(Duration::from_millis(108)));
        assert_eq!(state.hash_spread, Duration::from_micros(7_500));
        // A hash that did not run (its caller went away first) is no sample.
        state.finished(key, None);
        assert_eq!(state.hash_spread, Duration::from_micros(7_500));
        assert_eq!(state.hash_time, Duration::from_millis(108));
    }

    #[test]
    fn the_bound_spreads_over_the_jobs_each_thread_serves() {
        let mut state = empty_state(Duration::from_millis(100), Duration::from_millis(20));
        let (other, me) = (ClientKey::of(ip(1)), ClientKey::of(ip(2)));
        state.take_place(other);
        state.take_place(other);
        state.take_place(other);
        // Behind one other client: 2 jobs. On 2 threads each serves 1:
        // 100 ms expected + 2 × √1 × 20 ms. On 1 thread, 2 each: 200 ms +
        // 2 × √2 × 20 ms.
        assert_eq!(state.wait_bound(me, 2), Duration::from_millis(140));
        let one = state.wait_bound(me, 1).as_secs_f64();
        assert!((one - (0.2 + 0.04 * 2f64.sqrt())).abs() < 1e-6, "{one}");
    }

    #[tokio::test]
    async fn one_client_holds_at_most_half_of_the_places() {
        // 1 thread + 9 queue places; hashes are quick, so the places, not the
        // wait, are the limit: a client may hold 5, its running hash included.
        let h = PasswordHasher::with_params(tiny(), 1, 9, Duration::from_secs(1));
        h.set_hash_time(Duration::from_millis(1));
        let release = gate(&h, ip(1)).await;
        let mine: Vec<_> = (0..4).map(|_| h.admit(ip(1)).unwrap()).collect();
        assert!(matches!(h.admit(ip(1)), Err(HashError::Busy { .. })));
        let others: Vec<_> = (0..5).map(|_| h.admit(ip(2)).unwrap()).collect();
        assert!(
            matches!(h.admit(ip(3)), Err(HashError::Busy { .. })),
            "all 10 places are taken"
        );
        drop((mine, others));
        // IPv6: one /64 is one client.
        let v6 = |net: u16, last: u16| Some(IpAddr::from([0x2001, 0xdb8, 0, net, 0, 0, 0, last]));
        let in_one_64: Vec<_> = (0..5).map(|n| h.admit(v6(1, n)).unwrap()).collect();
        assert!(matches!(h.admit(v6(1, 99)), Err(HashError::Busy { .. })));
        assert!(h.admit(v6(2, 1)).is_ok());
        drop((in_one_64, release));
    }

    #[tokio::test]
    async fn a_cancelled_wait_gives_its_place_back_and_never_runs() {
        let h = PasswordHasher::with_params(tiny(), 1, 4, DEFAULT_MAX_WAIT);
        let release = gate(&h, ip(1)).await;
        // Queued behind the gate: the timeout drops the waiting future.
        let waiting = h.admit(ip(2)).unwrap().hash(&pw());
        assert!(
            tokio::time::timeout(Duration::from_millis(10), waiting)
                .await
                .is_err()
        );
        assert_eq!(h.queue_depth(), 0);
        // The same through an aborted task.
        let task = tokio::spawn(h.admit(ip(2)).unwrap().hash(&pw()));
        while h.inner.shared.lock().rotation.is_empty() {
            tokio::task::yield_now().await;
        }
        assert_eq!(h.queue_depth(), 1);
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(h.queue_depth(), 0);
        {
            let state = h.inner.shared.lock();
            assert!(state.rotation.is_empty());
            assert_eq!(
                state
                    .clients
                    .get(&ClientKey::of(ip(2)))
                    .map(|c| c.jobs.len()),
                None
            );
        }
        drop(release);
        assert!(h.admit(ip(3)).unwrap().hash(&pw()).await.is_ok());
        assert_eq!((h.queue_depth(), h.busy()), (0, 0));
    }

    #[tokio::test]
    async fn a_hash_whose_caller_went_away_stays_busy_until_it_finishes() {
        let h = PasswordHasher::with_params(tiny(), 1, 1, DEFAULT_MAX_WAIT);
        let (release_tx, release) = std::sync::mpsc::channel();
        let (started, on_thread) = oneshot::channel();
        let task = tokio::spawn(h.admit(ip(1)).unwrap().run(Work::Gate { started, release }));
        on_thread.await.unwrap();
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!((h.busy(), h.queue_depth()), (1, 0));
        // Its thread is still taken: the next caller queues behind it.
        let next = tokio::spawn(h.admit(ip(2)).unwrap().hash(&pw()));
        assert_eq!((h.busy(), h.queue_depth()), (1, 1));
        release_tx.send(()).unwrap();
        // One thread: the next hash runs only once the abandoned one is done.
        assert!(next.await.unwrap().is_ok());
        assert_eq!((h.busy(), h.queue_depth()), (0, 0));
    }

    #[tokio::test]
    async fn a_panicking_hash_answers_an_error_and_keeps_its_thread() {
        let h = PasswordHasher::with_params(tiny(), 1, 0, DEFAULT_MAX_WAIT);
        let r = h.admit(ip(1)).unwrap().run(Work::Panic).await;
        assert!(matches!(r, Err(HashError::Internal(_))));
        assert_eq!((h.queue_depth(), h.busy()), (0, 0));
        assert!(h.inner.shared.lock().clients.is_empty());
        assert!(h.admit(ip(1)).unwrap().hash(&pw()).await.is_ok());
    }

    #[tokio::test]
    async fn other_requests_keep_one_core_free_of_hashing() {
        let h = PasswordHasher::with_params(tiny(), 2, 8, DEFAULT_MAX_WAIT);
        assert_eq!(
            h.inner.shared.hashing_threads(),
            2,
            "logins alone: every core"
        );
        h.other_work();
        assert_eq!(h.inner.shared.hashing_threads(), 1);
        // Admission counts on the threads that may run: with one busy, the
        // next caller queues (its expected wait is one hash), it is not told
        // a thread is free.
        h.set_hash_time(Duration::from_millis(400));
        let _busy = gate(&h, ip(1)).await;
        let _queued = h.admit(ip(2)).unwrap();
        assert!(matches!(h.admit(ip(3)), Err(HashError::Busy { .. })));
        let one = PasswordHasher::with_params(tiny(), 1, 0, DEFAULT_MAX_WAIT);
        one.other_work();
        assert_eq!(one.inner.shared.hashing_threads(), 1, "never none");
    }

    /// Two threads freed in one go while other requests are being served:
    /// the dispatcher hands out one job, not one per free thread.
    #[tokio::test]
    async fn a_kept_core_stays_free_when_several_jobs_wait() {
        let h = PasswordHasher::with_params(tiny(), 2, 8, DEFAULT_MAX_WAIT);
        let gated = |n: u8| {
            let (release_tx, release) = std::sync::mpsc::channel::<()>();
            let (started, on_thread) = oneshot::channel();
            let task = tokio::spawn(h.admit(ip(n)).unwrap().run(Work::Gate { started, release }));
            (release_tx, on_thread, task)
        };
        let (release_a, on_thread_a, a) = gated(1);
        let (release_b, on_thread_b, b) = gated(2);
        on_thread_a.await.unwrap();
        on_thread_b.await.unwrap();
        let (_release_c, _c_started, _c) = gated(3);
        let (_release_d, _d_started, _d) = gated(4);
        assert_eq!((h.busy(), h.queue_depth()), (2, 2));
        // Other requests are being served from now until long after the test.
        h.inner
            .shared
            .other_work_at
            .store(u64::MAX / 2, Ordering::Relaxed);
        release_a.send(()).unwrap();
        release_b.send(()).unwrap();
        // An answer is sent after the dispatcher's pass that handed out the
        // next jobs, so once both are in, that pass is over.
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        assert_eq!(
            (h.busy(), h.queue_depth()),
            (1, 1),
            "one core kept free of hashing"
        );
    }

    #[tokio::test]
    async fn the_kept_core_is_given_back_250_ms_after_the_last_other_request() {
        let h = PasswordHasher::with_params(tiny(), 2, 0, DEFAULT_MAX_WAIT);
        let shared = &h.inner.shared;
        shared.other_work_at.store(1000, Ordering::Relaxed);
        assert_eq!(shared.hashing_threads_at(1000), 1);
        assert_eq!(shared.hashing_threads_at(1249), 1);
        assert_eq!(shared.hashing_threads_at(1250), 2);
        assert_eq!(shared.hashing_threads_at(60_000), 2);
    }

    /// A job queued `waited` ago, whose answer nobody reads.
    fn queued_job(key: ClientKey, id: u64, waited: Duration) -> Job {
        let (reply, _) = oneshot::channel();
        Job {
            id,
            client: key,
            admitted_at: Instant::now().checked_sub(waited).unwrap(),
            queued_at: Instant::now(),
            given_at: None,
            work: Work::Panic,
            reply,
        }
    }

    #[test]
    fn a_job_that_can_no_longer_be_done_in_time_is_taken_out() {
        let ms = Duration::from_millis;
        let mut state = empty_state(ms(100), Duration::ZERO);
        let key = ClientKey::of(ip(1));
        for (id, waited) in [(0, ms(950)), (1, ms(850)), (2, ms(0))] {
            state.take_place(key);
            state.enqueue(key, queued_job(key, id, waited));
        }
        // 950 + 100 ms is past the 1 s wait; 850 + 100 is not.
        let mut late = Vec::new();
        let (_, next) = state.take_next_on_time(ms(1000), &mut late).unwrap();
        assert_eq!(next.id, 1);
        assert_eq!(late.iter().map(|j| j.id).collect::<Vec<_>>(), [0]);
        // The late job's place is given back; the next one runs.
        assert_eq!((state.queued, state.running), (1, 1));
        // A hash that alone takes the whole wait: no job could be on time,
        // so none is refused, however long it waited.
        state.hash_time = ms(1000);
        state.take_place(key);
        state.enqueue(key, queued_job(key, 3, ms(5000)));
        let mut late = Vec::new();
        assert_eq!(
            state.take_next_on_time(ms(1000), &mut late).unwrap().1.id,
            2
        );
        assert_eq!(
            state.take_next_on_time(ms(1000), &mut late).unwrap().1.id,
            3
        );
        assert!(late.is_empty());
    }

    /// The end to end of the above: a queued hash whose wait has outgrown
    /// `max_wait` is answered `Busy` when its turn comes, not hashed late.
    #[tokio::test]
    async fn a_queued_hash_that_outwaited_its_estimate_is_refused_not_served_late() {
        let h = PasswordHasher::with_params(tiny(), 1, 8, Duration::from_millis(50));
        let release = gate(&h, ip(1)).await;
        let queued = tokio::spawn(h.admit(ip(2)).unwrap().hash(&pw()));
        // The queued hash's wait passes the limit: time itself is what is
        // tested, there is nothing to await instead.
        tokio::time::sleep(Duration::from_millis(60)).await;
        drop(release);
        match queued.await.unwrap() {
            Err(HashError::Busy { retry_after }) => {
                assert_eq!(retry_after, Duration::from_secs(1))
            }
            other => panic!("a late hash was not refused: {other:?}"),
        }
        assert_eq!((h.queue_depth(), h.busy()), (0, 0));
    }

    #[test]
    fn the_queue_is_served_round_robin_across_clients() {
        let mut state = empty_state(Duration::from_millis(100), Duration::ZERO);
        let (flood, other) = (ClientKey::of(ip(1)), ClientKey::of(ip(2)));
        let push = |state: &mut State, key, id| {
            state.take_place(key);
            state.enqueue(key, queued_job(key, id, Duration::ZERO));
        };
        for id in 0..5 {
            push(&mut state, flood, id);
        }
        // Behind five of the flood's jobs, another client waits for one.
        assert_eq!(state.expected_wait(other, 1), Duration::from_millis(200));
        assert_eq!(state.expected_wait(flood, 1), Duration::from_millis(600));
        assert_eq!(state.expected_wait(other, 2), Duration::from_millis(100));
        push(&mut state, other, 100);
        push(&mut state, other, 101);
        // A client with two places waits three rounds; a flood refills its
        // places as they are served, so a round holds one job of every client
        // with a place, whatever it holds now.
        let third = ClientKey::of(ip(3));
        push(&mut state, third, 200);
        assert_eq!(state.expected_wait(other, 1), Duration::from_millis(900));
        state.withdraw(third, 200);
        let order: Vec<u64> = std::iter::from_fn(|| state.take_next().map(|(_, j)| j.id)).collect();
        assert_eq!(order, [0, 100, 1, 101, 2, 3, 4]);
        assert_eq!((state.queued, state.running), (0, 7));
    }

    #[test]
    fn places_within_is_the_jobs_that_fit_in_the_wait() {
        let s = Duration::from_secs(1);
        assert_eq!(places_within(s, Duration::from_millis(100), 1), 10);
        assert_eq!(places_within(s, Duration::from_millis(100), 2), 20);
        assert_eq!(places_within(s, Duration::from_millis(300), 2), 6);
        // Before any hash is timed: everything fits, nothing divides by zero.
        assert_eq!(places_within(s, Duration::ZERO, 1), 1_000_000_000);
    }

    /// Released pages read as zeros; nothing outside the slice changes, even
    /// on the pages it shares with its neighbours.
    #[cfg(target_os = "linux")]
    #[test]
    fn releasing_a_threads_memory_zeroes_whole_pages_inside_it_only() {
        let mut buf = vec![Block::default(); 64];
        for b in &mut buf {
            b.as_mut().fill(u64::MAX);
        }
        // 40 KiB from 3 KiB in: the whole pages inside it are released, the
        // pages it shares with blocks 0..3 and 43..64 are not.
        release_pages(&mut buf[3..43]);
        let words = |blocks: &[Block]| -> Vec<u64> {
            blocks.iter().flat_map(|b| b.as_ref().to_vec()).collect()
        };
        assert!(
            words(&buf[..3])
                .iter()
                .chain(&words(&buf[43..]))
                .all(|w| *w == u64::MAX),
            "memory outside the released slice changed"
        );
        let inside = words(&buf[3..43]);
        assert!(inside.iter().all(|w| *w == 0 || *w == u64::MAX));
        // All of it but at most a page at each end.
        let zeroed = inside.iter().filter(|w| **w == 0).count();
        assert!(
            zeroed >= inside.len() - 2 * 4096 / 8,
            "only {zeroed} words released"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_libc_return_code_is_a_result() {
        assert!(os_result(0).is_ok());
        assert!(os_result(-1).is_err());
    }

    #[test]
    fn the_first_estimate_is_the_mean_of_the_first_hashes() {
        let ms = Duration::from_millis;
        assert_eq!(mean(&[ms(40), ms(60)]), ms(50));
        assert_eq!(mean(&[ms(30)]), ms(30));
        assert_eq!(mean(&[]), Duration::ZERO);
    }

    #[test]
    fn retry_after_is_whole_seconds_and_at_least_one() {
        assert_eq!(whole_seconds(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            whole_seconds(Duration::from_millis(1)),
            Duration::from_secs(1)
        );
        assert_eq!(
            whole_seconds(Duration::from_millis(1001)),
            Duration::from_secs(2)
        );
        assert_eq!(
            whole_seconds(Duration::from_secs(3)),
            Duration::from_secs(3)
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn hashing_threads_run_under_sched_idle() {
        let _h = PasswordHasher::with_params(tiny(), 2, 0, DEFAULT_MAX_WAIT);
        let mut found = 0;
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let dir = task.unwrap().path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            let comm = comm.trim();
            if !comm.starts_with("authd-hash-") {
                continue;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
            // Fields after the parenthesised name (the 3rd overall is the
            // first): nice is field 19, the scheduling policy field 41.
            // Nothing else about the thread changes: its nice value stays 0.
            let after_name = &stat[stat.rfind(')').unwrap() + 2..];
            let field =
                |n: usize| -> i32 { after_name.split(' ').nth(n - 3).unwrap().parse().unwrap() };
            assert_eq!(field(41), libc::SCHED_IDLE, "{comm}");
            assert_eq!(field(19), 0, "{comm}: nice");
            found += 1;
        }
        assert!(found >= 2, "hashing threads found: {found}");
    }

    /// The dispatcher and every hashing thread end once the hasher is gone
    /// (each holds the shared state until it returns).
    #[test]
    fn the_threads_end_when_the_last_clone_is_dropped() {
        let h = PasswordHasher::with_params(tiny(), 2, 4, DEFAULT_MAX_WAIT);
        let other = h.clone();
        let shared = Arc::clone(&h.inner.shared);
        drop(h);
        let held = "the hasher, 2 threads, the dispatcher, the test";
        assert_eq!(Arc::strong_count(&shared), 5, "{held}");
        drop(other);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&shared) > 1 {
            assert!(
                Instant::now() < deadline,
                "the hashing threads are still running"
            );
            thread::sleep(Duration::from_millis(1));
        }
    }
}

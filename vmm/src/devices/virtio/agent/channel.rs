//! The VMM's side of the agent channel: send a request, wait for its answer.
//!
//! Callers (the allocator's eviction, device models, the control API) run on their own
//! threads and block here, never on the agent thread: a request is queued in a bounded
//! outbox, the agent thread is kicked, and the caller waits on a condition variable for the
//! answer with a deadline. The agent thread delivers messages to the guest as the guest
//! posts buffers, and routes each answer to its waiter by request id; an answer nobody
//! waits for (a late one, or one to a request never sent) is counted and dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use protocol::msg::{
    EVICT_HOST_COPY, GuestMsg, HostMsg, QUERY_QUIESCE, QUERY_RESUME, Report, Status,
};
use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;

use crate::sync::lock;

/// Most requests queued for the guest at once.
pub const OUTBOX_CAPACITY: usize = 64;

/// Why a request got no answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AgentError {
    /// The guest's agent has not said Hello yet.
    #[error("the guest agent is not running (no Hello received)")]
    NotReady,
    /// Too many requests queued: the guest is not taking them.
    #[error("the guest agent is not taking requests ({OUTBOX_CAPACITY} queued)")]
    Backlog,
    /// No answer within the deadline.
    #[error("the guest agent did not answer request {req} within {timeout_ms} ms")]
    Timeout {
        /// The request.
        req: u64,
        /// The deadline.
        timeout_ms: u64,
    },
    /// The channel was shut down.
    #[error("the agent channel is shut down")]
    Stopped,
    /// Evictions were cancelled: the VMM is stopping ([`AgentChannel::cancel_evictions`]).
    #[error("eviction cancelled: the VMM is stopping")]
    Cancelled,
}

/// Counters of the agent channel, for metrics.
#[derive(Debug, Default, Serialize)]
pub struct AgentMetrics {
    /// Requests written to the guest.
    pub requests_sent: AtomicU64,
    /// Answers matched to a waiting request.
    pub answers: AtomicU64,
    /// Answers to no waiting request (late, duplicate, or never asked).
    pub unsolicited_answers: AtomicU64,
    /// Messages that did not decode.
    pub bad_messages: AtomicU64,
    /// Descriptor chains with bad addresses, sizes or layout.
    pub bad_descriptors: AtomicU64,
    /// Requests that timed out.
    pub timeouts: AtomicU64,
    /// Pages copied for the guest (VMM-assisted migration).
    pub pages_copied: AtomicU64,
    /// Nanoseconds spent copying those pages (the copy alone, checks excluded).
    pub copy_ns: AtomicU64,
    /// Nanoseconds spent giving host backing to destination pages never touched before.
    pub backing_ns: AtomicU64,
    /// Migration pairs refused (outside the evicted range, into device memory, ...).
    pub pairs_refused: AtomicU64,
    /// Hello messages received.
    pub hellos: AtomicU64,
}

impl AgentMetrics {
    /// Add one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

struct Waiter {
    request: HostMsg,
    delivered: bool,
    answer: Option<GuestMsg>,
    /// Given up by [`AgentChannel::cancel_evictions`].
    cancelled: bool,
}

#[derive(Default)]
struct State {
    outbox: VecDeque<HostMsg>,
    waiting: HashMap<u64, Waiter>,
    next_req: u64,
    agent_version: Option<u32>,
    stopped: bool,
    /// No eviction is sent any more (the VMM is stopping); returns and queries still are.
    evictions_cancelled: bool,
}

/// State shared by the callers and the agent thread.
pub struct ChannelShared {
    state: Mutex<State>,
    answered: Condvar,
    kick: EventFd,
    /// Counters.
    pub metrics: AgentMetrics,
    /// Benchmarks only: flush the host's caches before each Migrate copy, so that the copy
    /// is timed cold, the state its memcpy baseline is measured in
    /// ([`crate::bench::MemcpyBaseline`]).
    pub cold_copies: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for ChannelShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelShared").finish_non_exhaustive()
    }
}

/// A cloneable handle to send requests to the guest agent.
#[derive(Debug, Clone)]
pub struct AgentChannel {
    shared: Arc<ChannelShared>,
}

impl AgentChannel {
    /// A channel whose agent thread waits on `kick` for new requests.
    pub fn new(kick: EventFd) -> Self {
        AgentChannel {
            shared: Arc::new(ChannelShared {
                state: Mutex::new(State {
                    next_req: 1,
                    ..State::default()
                }),
                answered: Condvar::new(),
                kick,
                metrics: AgentMetrics::default(),
                cold_copies: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The state the agent thread works on.
    pub fn shared(&self) -> &Arc<ChannelShared> {
        &self.shared
    }

    /// The agent protocol version the guest announced, once it has.
    pub fn agent_version(&self) -> Option<u32> {
        lock(&self.shared.state).agent_version
    }

    /// Wait until the guest agent has said Hello, up to `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.shared.state);
        while state.agent_version.is_none() && !state.stopped {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .shared
                .answered
                .wait_timeout(state, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        state.agent_version.is_some()
    }

    /// Ask the guest to evict `[gpa, gpa+len)`; the guest's status and pages migrated.
    pub fn evict(
        &self,
        gpa: u64,
        len: u64,
        host_copy: bool,
        timeout: Duration,
    ) -> Result<(Status, u64), AgentError> {
        let flags = if host_copy { EVICT_HOST_COPY } else { 0 };
        match self.request(
            |req| HostMsg::Evict {
                req,
                gpa,
                len,
                flags,
            },
            timeout,
        )? {
            GuestMsg::Evicted {
                status, migrated, ..
            } => Ok((status, migrated)),
            _ => Ok((Status::Failed { code: 0 }, 0)),
        }
    }

    /// Give `[gpa, gpa+len)` back to the guest's allocator.
    pub fn give_back(&self, gpa: u64, len: u64, timeout: Duration) -> Result<Status, AgentError> {
        match self.request(|req| HostMsg::Return { req, gpa, len }, timeout)? {
            GuestMsg::Returned { status, .. } => Ok(status),
            _ => Ok(Status::Failed { code: 0 }),
        }
    }

    /// Ask for the guest's report; `quiesce` stops its workload, `resume` restarts it.
    pub fn query(
        &self,
        quiesce: bool,
        resume: bool,
        timeout: Duration,
    ) -> Result<Report, AgentError> {
        let flags = if quiesce { QUERY_QUIESCE } else { 0 } | if resume { QUERY_RESUME } else { 0 };
        match self.request(|req| HostMsg::Query { req, flags }, timeout)? {
            GuestMsg::Report { report, .. } => Ok(report),
            _ => Ok(Report::default()),
        }
    }

    /// Diagnostic: what the guest reads at `gpa`.
    pub fn probe(&self, gpa: u64, timeout: Duration) -> Result<u64, AgentError> {
        match self.request(|req| HostMsg::Probe { req, gpa }, timeout)? {
            GuestMsg::Probed { value, .. } => Ok(value),
            _ => Ok(0),
        }
    }

    /// Ask the guest to check its pages and exit (no answer expected).
    pub fn shutdown_guest(&self) -> Result<(), AgentError> {
        self.post(|req| HostMsg::Shutdown { req }).map(|_| ())
    }

    /// Tell the guest to undo request `target` (no answer awaited).
    pub fn cancel(&self, target: u64) {
        let _ = self.post(|req| HostMsg::Cancel { req, target });
    }

    /// Queue a request without waiting for an answer; its request id.
    fn post(&self, build: impl FnOnce(u64) -> HostMsg) -> Result<u64, AgentError> {
        self.enqueue(build, false)
    }

    /// Queue a request (registering a waiter for its answer if `wait`) and kick the agent
    /// thread; its request id.
    fn enqueue(&self, build: impl FnOnce(u64) -> HostMsg, wait: bool) -> Result<u64, AgentError> {
        let mut state = lock(&self.shared.state);
        if state.stopped {
            return Err(AgentError::Stopped);
        }
        if state.agent_version.is_none() {
            return Err(AgentError::NotReady);
        }
        if state.outbox.len() >= OUTBOX_CAPACITY {
            return Err(AgentError::Backlog);
        }
        let req = state.next_req;
        let request = build(req);
        if state.evictions_cancelled && matches!(request, HostMsg::Evict { .. }) {
            return Err(AgentError::Cancelled);
        }
        state.next_req += 1;
        state.outbox.push_back(request);
        if wait {
            state.waiting.insert(
                req,
                Waiter {
                    request,
                    delivered: false,
                    answer: None,
                    cancelled: false,
                },
            );
        }
        drop(state);
        let _ = self.shared.kick.write(1);
        Ok(req)
    }

    /// Send a request and wait for its answer.
    fn request(
        &self,
        build: impl FnOnce(u64) -> HostMsg,
        timeout: Duration,
    ) -> Result<GuestMsg, AgentError> {
        let deadline = Instant::now() + timeout;
        let req = self.enqueue(build, true)?;
        let mut state = lock(&self.shared.state);
        loop {
            if let Some(answer) = state.waiting.get_mut(&req).and_then(|w| w.answer.take()) {
                state.waiting.remove(&req);
                return Ok(answer);
            }
            if state.stopped {
                state.waiting.remove(&req);
                return Err(AgentError::Stopped);
            }
            if state.waiting.get(&req).is_some_and(|w| w.cancelled) {
                let delivered = state.waiting.remove(&req).is_some_and(|w| w.delivered);
                state.outbox.retain(|m| m.req() != req);
                drop(state);
                if delivered {
                    // The guest may be isolating or migrating the range: make it undo that
                    // and keep its pages where they are.
                    self.cancel(req);
                }
                return Err(AgentError::Cancelled);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let delivered = state.waiting.remove(&req).is_some_and(|w| w.delivered);
                state.outbox.retain(|m| m.req() != req);
                drop(state);
                AgentMetrics::inc(&self.shared.metrics.timeouts);
                if delivered {
                    // The guest may still act on it: make it undo whatever it did.
                    self.cancel(req);
                }
                return Err(AgentError::Timeout {
                    req,
                    timeout_ms: timeout.as_millis() as u64,
                });
            }
            state = self
                .shared
                .answered
                .wait_timeout(state, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Give up every eviction under way (the guest is told to undo those it received) and
    /// refuse new ones; frees, queries and shutdown still reach the guest. The first step
    /// of a clean stop: allocations waiting on the guest fail now and release their bits.
    pub fn cancel_evictions(&self) {
        let mut state = lock(&self.shared.state);
        state.evictions_cancelled = true;
        for w in state.waiting.values_mut() {
            if matches!(w.request, HostMsg::Evict { .. }) {
                w.cancelled = true;
            }
        }
        drop(state);
        self.shared.answered.notify_all();
    }

    /// Fail every waiter and refuse new requests (VMM shutting down).
    pub fn stop(&self) {
        lock(&self.shared.state).stopped = true;
        self.shared.answered.notify_all();
    }
}

impl ChannelShared {
    /// Take up to `n` requests to deliver, marking them delivered.
    pub fn take_outgoing(&self, n: usize) -> Vec<HostMsg> {
        let mut state = lock(&self.state);
        let k = n.min(state.outbox.len());
        let msgs: Vec<HostMsg> = state.outbox.drain(..k).collect();
        for m in &msgs {
            if let Some(w) = state.waiting.get_mut(&m.req()) {
                w.delivered = true;
            }
        }
        msgs
    }

    /// Put a request back at the head of the outbox (no buffer to deliver it in).
    pub fn put_back(&self, msg: HostMsg) {
        lock(&self.state).outbox.push_front(msg);
    }

    /// Whether requests are waiting to be delivered.
    pub fn has_outgoing(&self) -> bool {
        !lock(&self.state).outbox.is_empty()
    }

    /// The range request `req` is evicting, if it is a pending Evict.
    pub fn evicting(&self, req: u64) -> Option<(u64, u64)> {
        match lock(&self.state).waiting.get(&req)?.request {
            HostMsg::Evict { gpa, len, .. } => Some((gpa, len)),
            _ => None,
        }
    }

    /// The guest said Hello.
    pub fn hello(&self, version: u32) {
        lock(&self.state).agent_version = Some(version);
        AgentMetrics::inc(&self.metrics.hellos);
        self.answered.notify_all();
    }

    /// Route an answer from the guest to its waiter.
    pub fn deliver(&self, msg: GuestMsg) {
        let mut state = lock(&self.state);
        let waiter = msg.answers().and_then(|req| state.waiting.get_mut(&req));
        match waiter {
            Some(w) if msg.is_answer_to(&w.request) && w.delivered && w.answer.is_none() => {
                w.answer = Some(msg);
                AgentMetrics::inc(&self.metrics.answers);
                drop(state);
                self.answered.notify_all();
            }
            _ => AgentMetrics::inc(&self.metrics.unsolicited_answers),
        }
    }

    /// Stop waiters (the guest is gone).
    pub fn stop(&self) {
        lock(&self.state).stopped = true;
        self.answered.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel() -> AgentChannel {
        let c = AgentChannel::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        c.shared().hello(1);
        c
    }

    #[test]
    fn answers_reach_their_waiter() {
        let c = channel();
        let shared = c.shared().clone();
        let agent = std::thread::spawn(move || {
            loop {
                let out = shared.take_outgoing(8);
                if let Some(HostMsg::Evict { req, .. }) = out.first() {
                    // A stray answer first, then the right one.
                    shared.deliver(GuestMsg::Evicted {
                        req: req + 100,
                        status: Status::Done,
                        migrated: 0,
                    });
                    shared.deliver(GuestMsg::Returned {
                        req: *req,
                        status: Status::Done,
                    });
                    shared.deliver(GuestMsg::Evicted {
                        req: *req,
                        status: Status::Done,
                        migrated: 7,
                    });
                    return;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let r = c.evict(0x800_0000, 0x1000, true, Duration::from_secs(5));
        agent.join().unwrap();
        assert_eq!(r, Ok((Status::Done, 7)));
        let m = &c.shared().metrics;
        assert_eq!(m.unsolicited_answers.load(Ordering::Relaxed), 2);
        assert_eq!(m.answers.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_silent_guest_times_out_and_undelivered_requests_vanish() {
        let c = channel();
        let t0 = Instant::now();
        let r = c.evict(0, 0x1000, false, Duration::from_millis(50));
        assert!(matches!(r, Err(AgentError::Timeout { .. })));
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(
            !c.shared().has_outgoing(),
            "undelivered request left behind"
        );
    }

    #[test]
    fn a_delivered_request_that_times_out_is_cancelled() {
        let c = channel();
        let shared = c.shared().clone();
        let agent = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut seen = Vec::new();
            while Instant::now() < deadline && seen.len() < 2 {
                seen.extend(shared.take_outgoing(8));
                std::thread::sleep(Duration::from_millis(1));
            }
            seen
        });
        let r = c.evict(0, 0x1000, false, Duration::from_millis(100));
        assert!(matches!(r, Err(AgentError::Timeout { req: 1, .. })));
        let seen = agent.join().unwrap();
        assert!(
            matches!(seen[1], HostMsg::Cancel { target: 1, .. }),
            "{seen:?}"
        );
    }

    #[test]
    fn cancelled_evictions_fail_at_once_and_are_undone_in_the_guest() {
        let c = channel();
        let shared = c.shared().clone();
        let canceller = c.clone();
        let agent = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut seen = Vec::new();
            while Instant::now() < deadline && seen.len() < 2 {
                let out = shared.take_outgoing(8);
                if out.iter().any(|m| matches!(m, HostMsg::Evict { .. })) {
                    // The guest is working on it when the VMM is told to stop.
                    canceller.cancel_evictions();
                }
                seen.extend(out);
                std::thread::sleep(Duration::from_millis(1));
            }
            seen
        });
        let t0 = Instant::now();
        let r = c.evict(0, 0x1000, false, Duration::from_secs(30));
        assert_eq!(r, Err(AgentError::Cancelled));
        assert!(t0.elapsed() < Duration::from_secs(5));
        let seen = agent.join().unwrap();
        assert!(
            matches!(seen[1], HostMsg::Cancel { target: 1, .. }),
            "{seen:?}"
        );
        // No new eviction is sent; returns still are.
        assert_eq!(
            c.evict(0, 0x1000, false, Duration::from_millis(1)),
            Err(AgentError::Cancelled)
        );
        assert!(matches!(
            c.give_back(0, 0x1000, Duration::from_millis(1)),
            Err(AgentError::Timeout { .. })
        ));
    }

    #[test]
    fn not_ready_backlog_and_stop() {
        let c = AgentChannel::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        assert_eq!(
            c.probe(0, Duration::from_millis(1)),
            Err(AgentError::NotReady)
        );
        c.shared().hello(1);
        for _ in 0..OUTBOX_CAPACITY {
            c.cancel(1);
        }
        assert_eq!(
            c.probe(0, Duration::from_millis(1)),
            Err(AgentError::Backlog)
        );
        c.stop();
        assert_eq!(
            c.probe(0, Duration::from_millis(1)),
            Err(AgentError::Stopped)
        );
    }
}

//! Waiting for the next message of a hand-off between threads (clients -> raft driver -> apply).
//!
//! A thread asleep on a channel takes tens of microseconds to wake on a virtual machine, and a
//! write crosses two such hand-offs before it is answered. When writes come one at a time (a lone
//! client), a thread that just handled one polls its channel for a short while first, giving the
//! CPU away between polls, so the next finds it awake. Under load, messages queue up while the
//! thread works and it has its next batch at once; polling there would only take CPU from the
//! threads filling the queue, so a thread that just handled a batch, or nothing, sleeps.

use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

/// How long a receiver polls before it sleeps after handling a lone message: a bit more than a
/// write's round trip through the other threads and a loopback client (~0.25 ms here).
const POLL_FOR: Duration = Duration::from_micros(300);
/// At most this many messages handled at once count as "one at a time".
const LONE: usize = 2;

/// How long to poll before sleeping, having just handled `handled` messages.
pub fn poll_after(handled: usize) -> Duration {
    if (1..=LONE).contains(&handled) {
        POLL_FOR
    } else {
        Duration::ZERO
    }
}

/// The next message, waiting until `deadline` at most; polls first for `poll_for`.
pub fn recv_until<T>(
    rx: &Receiver<T>,
    deadline: Option<Instant>,
    poll_for: Duration,
) -> Result<T, RecvTimeoutError> {
    let start = Instant::now();
    let poll_until = deadline.map_or(start + poll_for, |d| d.min(start + poll_for));
    loop {
        match rx.try_recv() {
            Ok(msg) => return Ok(msg),
            Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Empty) => {}
        }
        if Instant::now() >= poll_until {
            break;
        }
        std::thread::yield_now();
    }
    match deadline {
        Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
        None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn only_a_lone_message_is_followed_by_polling() {
        assert_eq!(poll_after(0), Duration::ZERO, "nothing handled: idle");
        assert_eq!(poll_after(1), POLL_FOR);
        assert_eq!(poll_after(LONE), POLL_FOR);
        assert_eq!(poll_after(LONE + 1), Duration::ZERO, "a batch: under load");
    }

    #[test]
    fn a_message_sent_while_polling_or_sleeping_is_received() {
        // Polling for longer than the sender takes, then not polling at all.
        for poll in [Duration::from_secs(1), Duration::ZERO] {
            let (tx, rx) = mpsc::channel();
            let sender = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(5));
                tx.send(7).unwrap();
            });
            let deadline = Instant::now() + Duration::from_secs(5);
            assert_eq!(recv_until(&rx, Some(deadline), poll), Ok(7));
            assert_eq!(
                recv_until(&rx, None, poll),
                Err(RecvTimeoutError::Disconnected)
            );
            sender.join().unwrap();
        }
    }

    #[test]
    fn the_deadline_holds_even_when_it_comes_before_the_polling_ends() {
        let (_tx, rx) = mpsc::channel::<()>();
        let start = Instant::now();
        let deadline = start + Duration::from_micros(100);
        assert_eq!(
            recv_until(&rx, Some(deadline), Duration::from_secs(1)),
            Err(RecvTimeoutError::Timeout)
        );
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "polled past the deadline"
        );
        let deadline = Instant::now() + Duration::from_millis(20);
        assert_eq!(
            recv_until(&rx, Some(deadline), POLL_FOR),
            Err(RecvTimeoutError::Timeout)
        );
        assert!(Instant::now() >= deadline, "woke before the deadline");
    }
}

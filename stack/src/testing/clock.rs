//! The event loop's clock, as every simulation plays it ([`super::Scenario`], the fuzz
//! harness's `Sim`): after each input, poll until nothing is due now; move time only to
//! the deadlines the stack reports, as the real loop sleeps until `poll_at`. A stack that
//! asks to be polled forever, or whose timers never let the clock reach its target,
//! panics here with the numbers.

use crate::stack::Stack;
use smoltcp::time::{Duration, Instant};

/// Polls in a row at one instant before we call it a busy loop.
pub const MAX_POLLS_PER_INSTANT: usize = 64;

/// A simulated event loop around a [`Stack`].
pub trait EventLoop {
    /// The loop's stack, and its virtual clock.
    fn clock(&mut self) -> (&Stack, &mut Instant);
    /// One turn of the loop's output side at the current instant: `poll`, then write what
    /// the stack queued for the tap.
    fn poll_once(&mut self);

    /// Deadlines one [`advance`] may visit before we call it a timer storm.
    const MAX_DEADLINES_PER_ADVANCE: usize = 1_000_000;

    /// Serves a deadline that has come ([`settle`]). `overdue`: it was due before the clock
    /// moved. False when the loop cannot serve it now (a full tap): the clock then jumps
    /// to the advance's target, as the real loop waits for the tap to drain.
    fn at_deadline(&mut self, _overdue: bool) -> bool
    where
        Self: Sized,
    {
        settle(self);
        true
    }
}

/// Whether the stack wants to be polled at or before `now`.
fn due(stack: &Stack, now: Instant) -> bool {
    matches!(stack.poll_at(), Some(at) if at <= now)
}

/// Polls until nothing is due now ([`MAX_POLLS_PER_INSTANT`] turns at the most).
pub fn settle(event_loop: &mut impl EventLoop) {
    for _ in 0..MAX_POLLS_PER_INSTANT {
        event_loop.poll_once();
        let (stack, now) = event_loop.clock();
        if !due(stack, *now) {
            return;
        }
    }
    panic!(
        "busy loop: after {MAX_POLLS_PER_INSTANT} polls at {} the stack still reports poll_at <= now",
        event_loop.clock().1
    );
}

/// Moves the clock forward by `by`, serving every deadline the stack reports on the way
/// (and nowhere else) with [`EventLoop::at_deadline`].
pub fn advance<L: EventLoop>(event_loop: &mut L, by: Duration) {
    let target = *event_loop.clock().1 + by;
    for _ in 0..L::MAX_DEADLINES_PER_ADVANCE {
        let (stack, now) = event_loop.clock();
        match stack.poll_at() {
            Some(deadline) if deadline <= target => {
                let overdue = deadline <= *now;
                *now = (*now).max(deadline);
                if !event_loop.at_deadline(overdue) {
                    *event_loop.clock().1 = target;
                    return;
                }
            }
            _ => {
                *now = target;
                return;
            }
        }
    }
    panic!(
        "advance({by}) visited {} deadlines without reaching {target}",
        L::MAX_DEADLINES_PER_ADVANCE
    );
}

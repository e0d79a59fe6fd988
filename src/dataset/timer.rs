//! A quiet-period timer for hand-written streams.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::Sleep;

/// Fires once a stream has waited `after` without anything new: armed by the first
/// [`expired`](Self::expired) check after a [`reset`](Self::reset), so it measures time spent
/// waiting, not time spent by the caller between polls.
#[derive(Debug, Default)]
pub(crate) struct QuietTimer {
    after: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl QuietTimer {
    pub(crate) fn new(after: Option<Duration>) -> QuietTimer {
        QuietTimer { after, sleep: None }
    }

    /// Something arrived: start over.
    pub(crate) fn reset(&mut self) {
        self.sleep = None;
    }

    /// Called when the stream has nothing to hand out: true once the quiet period is over
    /// (otherwise the waker is registered for when it will be).
    pub(crate) fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(after) = self.after else {
            return false;
        };
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
        sleep.as_mut().poll(cx).is_ready()
    }
}

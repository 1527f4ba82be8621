//! Routing updates go ahead of the Trunk statuses' bulk writes.
//!
//! At a start with thousands of Trunks the status writer publishes first statuses one
//! after another for a minute or more, and the API server is busy with them. A failover
//! in that time waits behind them in the API server. While a routing update is in
//! flight, the bulk writer does not start another write ([`RoutingFirst::clear`]).
//! A first routing (a new ConfigMap) does not hold it: at a start every policy writes
//! one, and the statuses would wait for all of them.

use tokio::sync::watch;

/// Counts routing updates in flight; the bulk status writer waits while there are any.
pub struct RoutingFirst {
    in_flight: watch::Sender<usize>,
}

impl Default for RoutingFirst {
    fn default() -> Self {
        Self {
            in_flight: watch::Sender::new(0),
        }
    }
}

/// A routing update in flight, until dropped.
pub struct Hold<'a>(&'a RoutingFirst);

impl RoutingFirst {
    /// A routing update starts.
    pub fn hold(&self) -> Hold<'_> {
        self.in_flight.send_modify(|n| *n += 1);
        Hold(self)
    }

    /// Returns once no routing update is in flight.
    pub async fn clear(&self) {
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = self.in_flight.subscribe().wait_for(|n| *n == 0).await;
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn the_bulk_writer_waits_until_every_routing_update_has_ended() {
        let gate = Arc::new(RoutingFirst::default());
        tokio::time::timeout(Duration::from_secs(1), gate.clear())
            .await
            .expect("nothing in flight: no wait");
        let (a, b) = (gate.hold(), gate.hold());
        let waiter = tokio::spawn({
            let gate = gate.clone();
            async move { gate.clear().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "two updates in flight");
        drop(a);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "one update still in flight");
        drop(b);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("released when the last update ended")
            .unwrap();
    }
}

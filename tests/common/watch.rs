//! Watches that stamp each object with the moment the watch delivered it: what the
//! latency benchmarks measure between.

use std::time::Instant;

use futures::StreamExt as _;
use kube::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::mpsc;

/// Every version of the objects `config` selects, with the time it arrived, until the
/// receiver is dropped; the watch resumes after errors.
pub fn timestamped<K>(api: Api<K>, config: watcher::Config) -> mpsc::UnboundedReceiver<(Instant, K)>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        // The backoff gives up after a while of errors (an overloaded API server); the
        // watch then starts over (a re-list delivers every object again).
        loop {
            let mut stream = watcher(api.clone(), config.clone())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(next) = stream.next().await {
                let Ok(object) = next else { continue };
                if tx.send((Instant::now(), object)).is_err() {
                    return;
                }
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    });
    rx
}

/// The destinations of dispatcher set 1 that carry calls (have a `weight`).
pub fn weighted_set1(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with("1 ") && l.contains(";weight="))
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect()
}

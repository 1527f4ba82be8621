//! Leader election on a `coordination.k8s.io` Lease, with a renew deadline shorter than
//! the lease (as client-go's `leaderelection` does).
//!
//! Why hand-written rather than `kube-lease-manager`: a leader must *stop writing*
//! before any standby may consider its lease expired. That needs the time of the last
//! successful renewal and a deadline that fires even while a renewal request hangs on a
//! partitioned connection; the crate reports neither. The algorithm is client-go's:
//!
//! - every `retry` a standby reads the Lease; a holder whose record has not changed for
//!   `leaseDurationSeconds` *as observed on the standby's own clock* (no clock-skew
//!   trust) is expired, and the standby takes the Lease with an optimistic-concurrency
//!   update (`resourceVersion`): of two standbys only one wins;
//! - the leader renews every `retry`; each request is cut off at the renew deadline;
//!   when no renewal has succeeded for `renew_deadline` (counted from when the last
//!   successful request was *sent*, which is before the API server stored it) the
//!   leader gives up: the `leading` channel turns false and every write stops. Since
//!   `renew_deadline < lease duration`, this happens before a standby can take over;
//! - on shutdown the leader closes its write gate first, then releases the Lease
//!   (empty holder), so a standby takes over at its next poll.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Timing and identity of one replica's election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// This replica's identity (the Lease's `holderIdentity`).
    pub identity: String,
    /// How long a lease is valid without renewal (`leaseDurationSeconds`).
    pub duration: Duration,
    /// The leader stops writing when no renewal succeeded for this long.
    pub renew_deadline: Duration,
    /// Period of acquisition attempts and renewals.
    pub retry: Duration,
}

impl LeaseConfig {
    /// client-go's proportions: renew deadline 2/3 of the lease, retry 2/15 (15 s →
    /// 10 s and 2 s), each at least one second and the deadline below the duration.
    pub fn from_duration(name: String, identity: String, duration_seconds: u64) -> Self {
        let duration = Duration::from_secs(duration_seconds.max(2));
        let renew_deadline = (duration * 2 / 3).max(Duration::from_secs(1));
        let retry = (duration * 2 / 15).max(Duration::from_secs(1));
        Self {
            name,
            identity,
            duration,
            renew_deadline,
            retry,
        }
    }
}

/// What a standby remembers about the holder's record: it changes on every renewal.
#[derive(Clone, Debug, PartialEq)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<String>,
    resource_version: Option<String>,
}

/// One replica's elector. See the module documentation.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<(Observed, Instant)>,
}

/// The outcome of one attempt.
enum Attempt {
    /// We hold the Lease (acquired or renewed).
    Held,
    /// Someone else holds a valid lease.
    Taken,
}

impl Elector {
    /// An elector for the Lease `config.name` in `api`'s namespace.
    pub fn new(api: Api<Lease>, config: LeaseConfig) -> Self {
        Self {
            api,
            config,
            observed: None,
        }
    }

    /// Campaign, lead and stand by until `shutdown`; `leading` says whether this replica
    /// may write. Releases the Lease on shutdown when holding it.
    pub async fn run(mut self, leading: watch::Sender<bool>, shutdown: CancellationToken) {
        loop {
            // Standby: try every `retry` until we hold the Lease.
            let mut renewed;
            loop {
                let sent = Instant::now();
                match tokio::time::timeout(self.config.retry, self.try_acquire_or_renew()).await {
                    Ok(Ok(Attempt::Held)) => {
                        renewed = sent;
                        break;
                    }
                    Ok(Ok(Attempt::Taken)) => {}
                    Ok(Err(e)) => warn!(error = %e, "cannot read or take the leader Lease"),
                    Err(_) => warn!("leader Lease request timed out"),
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(self.config.retry) => {}
                }
            }
            info!(identity = %self.config.identity, "acquired the leader Lease");
            leading.send_replace(true);
            // Leading: renew every `retry`, give up at the deadline.
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        leading.send_replace(false);
                        self.release().await;
                        return;
                    }
                    _ = tokio::time::sleep(self.config.retry) => {}
                }
                let sent = Instant::now();
                let left = (renewed + self.config.renew_deadline).saturating_duration_since(sent);
                let attempt =
                    tokio::time::timeout(left.min(self.config.retry), self.try_acquire_or_renew())
                        .await;
                match attempt {
                    Ok(Ok(Attempt::Held)) => {
                        renewed = sent;
                        continue;
                    }
                    Ok(Ok(Attempt::Taken)) => {
                        warn!("another replica holds the leader Lease; stopping writes");
                        leading.send_replace(false);
                        break;
                    }
                    Ok(Err(e)) => warn!(error = %e, "cannot renew the leader Lease; retrying"),
                    Err(_) => warn!("renewing the leader Lease timed out; retrying"),
                }
                if renewed.elapsed() >= self.config.renew_deadline {
                    warn!(
                        deadline_seconds = self.config.renew_deadline.as_secs_f64(),
                        "no renewal within the renew deadline: stopping writes before the lease expires"
                    );
                    leading.send_replace(false);
                    break;
                }
            }
        }
    }

    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let now = MicroTime(jiff::Timestamp::now());
        let duration = i32::try_from(self.config.duration.as_secs()).unwrap_or(i32::MAX);
        let me = self.config.identity.clone();
        let Some(current) = self.api.get_opt(&self.config.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Taken),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = Observed {
            holder: holder.clone(),
            renew_time: spec.renew_time.as_ref().map(|t| t.0.to_string()),
            resource_version: current.metadata.resource_version.clone(),
        };
        let observed_at = match &self.observed {
            Some((seen, at)) if *seen == record => *at,
            _ => Instant::now(),
        };
        self.observed = Some((record, observed_at));
        let valid_for = Duration::from_secs(
            u64::try_from(spec.lease_duration_seconds.unwrap_or(duration)).unwrap_or(0),
        );
        let mine = holder.as_deref() == Some(me.as_str());
        if holder.is_some() && !mine && observed_at.elapsed() < valid_for {
            return Ok(Attempt::Taken);
        }
        let mut next = current.clone();
        next.spec = Some(LeaseSpec {
            holder_identity: Some(me),
            lease_duration_seconds: Some(duration),
            acquire_time: if mine {
                spec.acquire_time.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(
                spec.lease_transitions.unwrap_or(0) + i32::from(!mine && holder.is_some()),
            ),
            ..spec
        });
        // `replace` carries the resourceVersion we read: of two standbys racing for an
        // expired lease, the second gets 409 Conflict.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(Attempt::Held),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Taken),
            Err(e) => Err(e),
        }
    }

    /// Give the Lease up (empty holder, one-second duration) so a standby takes over at
    /// its next poll instead of waiting for expiry.
    async fn release(&self) {
        let release = async {
            let Some(mut lease) = self.api.get_opt(&self.config.name).await? else {
                return Ok::<bool, kube::Error>(false);
            };
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                return Ok(false);
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
            self.api
                .replace(&self.config.name, &PostParams::default(), &lease)
                .await?;
            Ok(true)
        };
        match tokio::time::timeout(self.config.retry.max(Duration::from_secs(2)), release).await {
            Ok(Ok(true)) => info!("released the leader Lease"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                warn!(error = %e, "could not release the leader Lease; a standby takes over when it expires")
            }
            Err(_) => {
                warn!("releasing the leader Lease timed out; a standby takes over when it expires")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renew_deadline_is_shorter_than_the_lease() {
        for secs in [2, 6, 15, 60] {
            let c = LeaseConfig::from_duration("l".into(), "a".into(), secs);
            assert!(c.renew_deadline < c.duration, "{c:?}");
            assert!(c.retry < c.renew_deadline, "{c:?}");
        }
        let c = LeaseConfig::from_duration("l".into(), "a".into(), 15);
        assert_eq!(
            (c.renew_deadline, c.retry),
            (Duration::from_secs(10), Duration::from_secs(2))
        );
    }
}

//! What the sync channel did, shared between its task and the metrics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Serialize, Serializer, ser::SerializeStruct};

use super::{flows::Skip, wire::Reject};

#[derive(Debug, Default)]
pub struct Counters {
    pub messages_sent: AtomicU64,
    pub flows_sent: AtomicU64,
    pub send_errors: AtomicU64,
    pub messages_received: AtomicU64,
    pub flows_applied: AtomicU64,
    rejected: [AtomicU64; Reject::ALL.len()],
    skipped: [AtomicU64; Skip::ALL.len()],
}

impl Counters {
    pub fn reject(&self, r: Reject) {
        if let Some(i) = Reject::ALL.iter().position(|x| *x == r) {
            self.rejected[i].fetch_add(1, Relaxed);
        }
    }

    pub fn skip(&self, s: Skip) {
        if let Some(i) = Skip::ALL.iter().position(|x| *x == s) {
            self.skipped[i].fetch_add(1, Relaxed);
        }
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }

    /// Messages refused, by reason.
    pub fn rejected(&self) -> Vec<(&'static str, u64)> {
        Reject::ALL
            .iter()
            .zip(&self.rejected)
            .map(|(r, c)| (r.name(), c.load(Relaxed)))
            .collect()
    }

    /// Received flows not applied, by reason.
    pub fn skipped(&self) -> Vec<(&'static str, u64)> {
        Skip::ALL
            .iter()
            .zip(&self.skipped)
            .map(|(s, c)| (s.name(), c.load(Relaxed)))
            .collect()
    }
}

/// `lb status --json` shows the values at the time of the request.
impl Serialize for Counters {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("SyncCounters", 7)?;
        st.serialize_field("messages_sent", &Self::get(&self.messages_sent))?;
        st.serialize_field("flows_sent", &Self::get(&self.flows_sent))?;
        st.serialize_field("send_errors", &Self::get(&self.send_errors))?;
        st.serialize_field("messages_received", &Self::get(&self.messages_received))?;
        st.serialize_field("flows_applied", &Self::get(&self.flows_applied))?;
        let map = |v: Vec<(&'static str, u64)>| {
            v.into_iter().collect::<std::collections::BTreeMap<_, _>>()
        };
        st.serialize_field("rejected", &map(self.rejected()))?;
        st.serialize_field("skipped", &map(self.skipped()))?;
        st.end()
    }
}

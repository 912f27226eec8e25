//! Counting the writes of result keys, to show that no result is stored twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use rask::Settings;
use rask_common::Keys;

/// Counts the writes of every result key of a deployment, from Redis's keyspace notifications
/// (a `SET NX` that finds the key stored writes nothing and is not announced). Stops on drop.
pub struct ResultWrites {
    counts: Arc<Mutex<HashMap<String, u32>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ResultWrites {
    /// Turns keyspace notifications on (a private Redis only: it changes the server's
    /// configuration, until a restart) and starts counting.
    pub async fn watch(settings: &Settings) -> Self {
        let client = redis::Client::open(settings.redis_url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg("K$")
            .query_async(&mut conn)
            .await
            .unwrap();
        let prefix = format!(
            "__keyspace@0__:{}",
            Keys::new(settings.key_prefix.as_str()).result_pattern_prefix()
        );
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.psubscribe(format!("{prefix}*")).await.unwrap();
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let counted = counts.clone();
        let task = tokio::spawn(async move {
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                let event: String = message.get_payload().unwrap_or_default();
                if event == "set" {
                    let key = message.get_channel_name()[prefix.len()..].to_owned();
                    *counted.lock().unwrap().entry(key).or_insert(0) += 1;
                }
            }
        });
        ResultWrites { counts, task }
    }

    /// (distinct keys written, keys written more than once).
    pub fn tally(&self) -> (usize, usize) {
        let counts = self.counts.lock().unwrap();
        (counts.len(), counts.values().filter(|n| **n > 1).count())
    }
}

impl Drop for ResultWrites {
    fn drop(&mut self) {
        self.task.abort();
    }
}

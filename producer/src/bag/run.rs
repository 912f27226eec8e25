//! Submitting a [`Bag`]: [`Bag::persist`] leaves its partitions on the cluster, [`Bag::compute`]
//! brings its elements back. (Reductions are `Delayed` values: the client's `compute` and
//! `persist` submit them.)

use serde::de::DeserializeOwned;

use crate::client::Client;
use crate::error::Result;
use crate::future::Future;

use super::{Bag, Part};

impl<T> Bag<T> {
    /// Submits every partition not stored yet (with the graph each depends on) and returns the
    /// same bag backed by the partitions' keys, once the tasks that can run now are confirmed
    /// by the broker; the partitions stay on the cluster for the result TTL. Any process may
    /// use them by key ([`Bag::keys`], [`Bag::from_keys`]); later pipelines on the returned bag
    /// (or on this one: same keys) reuse them instead of computing them again.
    ///
    /// # Errors
    /// As [`Client::persist`]: [`crate::Error::Argument`] if an element did not encode;
    /// [`crate::Error`] if Redis or the broker failed.
    pub async fn persist(&self, client: &Client) -> Result<Bag<T>> {
        let lazy: Vec<_> = self
            .parts
            .iter()
            .filter_map(|part| match part {
                Part::Lazy(delayed) => Some(delayed.clone()),
                Part::Stored(_) => None,
            })
            .collect();
        client.persist_many(&lazy).await?;
        Ok(Bag::from_keys(self.keys()))
    }

    /// Submits the bag (as [`Bag::persist`]) and waits for all its elements, in order, without
    /// a time limit (persist, then gather [`Bag::futures`] with a timeout, to bound the wait).
    ///
    /// # Errors
    /// As [`Bag::persist`]; [`crate::Error::Task`] if a partition failed (an element's failure
    /// names its index in the partition).
    pub async fn compute(&self, client: &Client) -> Result<Vec<T>>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let persisted = self.persist(client).await?;
        let parts = client.gather(&persisted.futures(client)).await?;
        Ok(parts.into_iter().flatten().collect())
    }

    /// The futures of the partitions (each the list of its elements), in order: wait for them,
    /// or take them as completed, after [`Bag::persist`].
    pub fn futures(&self, client: &Client) -> Vec<Future<Vec<T>>> {
        self.keys()
            .into_iter()
            .map(|key| client.future(key))
            .collect()
    }
}

//! [`Client::call`]: submit one task and wait for its value in one step, overlapping the
//! broker's publisher confirm with the task's execution, the value coming back as a direct reply
//! (docs/protocol.md §25). [`Client::call_encoded_with`] is the same by function name, with
//! arguments encoded already and options (what the Python client calls).

use std::time::Duration;

use futures::future::{select, Either};
use rask_common::message::encode_value;
use rask_common::{Task, TaskKey, TaskMessage, TaskOptions};
use serde::de::DeserializeOwned;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::gather::single;

impl Client {
    /// Submits one call of `task` and returns its value: like `submit` then `result`, but the
    /// wait for the task's result starts before the broker has confirmed the publish, so the two
    /// overlap instead of adding up.
    ///
    /// The message is published persistent and confirmed as always. If the broker refuses it
    /// (or the publish gives up reconnecting) before the result is in, the call fails with that
    /// error. If the result is stored first, the call returns it without waiting for the
    /// confirm: a stored outcome already proves that the broker routed and delivered the task
    /// and that a worker stored its result (workers acknowledge only after storing), which is
    /// everything the confirm would have said.
    ///
    /// # Errors
    /// [`crate::Error::Task`] if the task failed; other variants if publishing or reading did.
    pub async fn call<T: Task>(&self, task: T, args: T::Args) -> Result<T::Output> {
        let _ = task;
        let options = TaskOptions::default();
        self.call_encoded_with(T::NAME, encode_value(&args)?, &options, None)
            .await
    }

    /// [`Client::call`] of the function registered as `function`, with `args` encoded already
    /// (the MessagePack array of its arguments, as [`Client::map_encoded`] takes them) and
    /// `options` applied, its value decoded as `T` (`rmpv::Value` for any), waiting at most
    /// `timeout` if one is given.
    ///
    /// # Errors
    /// As [`Client::call`]; [`crate::Error::Common`] for options that do not apply (a pool name
    /// that is not one); [`crate::Error::Timeout`] naming the task's key when `timeout` ran out
    /// first (the task is not revoked: it may still run and store its result under that key).
    pub async fn call_encoded_with<T: DeserializeOwned>(
        &self,
        function: &str,
        args: Vec<u8>,
        options: &TaskOptions,
        timeout: Option<Duration>,
    ) -> Result<T> {
        let key = TaskKey::unique(function);
        let Some(waited) = timeout else {
            return self.call_keyed(key, function, args, options).await;
        };
        match tokio::time::timeout(
            waited,
            self.call_keyed(key.clone(), function, args, options),
        )
        .await
        {
            Ok(value) => value,
            Err(_) => Err(Error::Timeout {
                waited,
                pending: 1,
                first: key,
            }),
        }
    }

    /// [`Client::call_encoded_with`] of the task `key`, without a timeout.
    async fn call_keyed<T: DeserializeOwned>(
        &self,
        key: TaskKey,
        function: &str,
        args: Vec<u8>,
        options: &TaskOptions,
    ) -> Result<T> {
        // Listen before publishing: the result cannot exist before the task is published.
        let mut waiter = self.waiter(vec![key.clone()]).for_unpublished();
        let mut message = TaskMessage::new(key, function, args);
        // The worker sends the outcome here as it stores it: no read after the announcement.
        message.reply = Some(self.reply_to().clone());
        let publish = self.publish_with("submit", function, std::iter::once(Ok(message)), options);
        let publish = std::pin::pin!(publish);
        let result = std::pin::pin!(single::<T>(&mut waiter));
        match select(publish, result).await {
            Either::Left((confirmed, result)) => {
                confirmed?;
                result.await
            }
            Either::Right((value, _confirm)) => value,
        }
    }
}

//! [`Client::call`]: submit one task and wait for its value in one step, overlapping the
//! broker's publisher confirm with the task's execution.

use futures::future::{select, Either};
use rask_common::message::encode_value;
use rask_common::{Task, TaskKey, TaskMessage};
use tracing::Instrument;

use crate::client::Client;
use crate::error::Result;
use crate::gather::single;
use crate::trace::Publishing;

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
        let key = TaskKey::unique(T::NAME);
        // Listen before publishing: the result cannot exist before the task is published.
        let mut waiter = self.waiter(vec![key.clone()]).for_unpublished();
        let mut message = TaskMessage::new(key, T::NAME, encode_value(&args)?);
        message.pool = self.settings().route(T::NAME, None);
        // The worker sends the outcome here as it stores it: no read after the announcement.
        message.reply = Some(self.reply_to().clone());
        self.watch_route(T::NAME, message.pool.as_ref());
        let publishing = Publishing::start(self.settings(), "submit", T::NAME);
        let message = publishing.stamp(message);
        let publish = self
            .publish(std::iter::once(Ok(message)))
            .instrument(publishing.span.clone());
        let publish = std::pin::pin!(publish);
        let result = std::pin::pin!(single::<T::Output>(&mut waiter));
        match select(publish, result).await {
            Either::Left((confirmed, result)) => {
                confirmed?;
                result.await
            }
            Either::Right((value, _confirm)) => value,
        }
    }
}

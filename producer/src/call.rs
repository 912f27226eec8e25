//! [`Client::call`]: submit one task and wait for its value in one step, overlapping the
//! broker's publisher confirm with the task's execution.

use futures::future::try_join;
use rask_common::message::encode_value;
use rask_common::{Task, TaskKey, TaskMessage};

use crate::client::Client;
use crate::error::Result;
use crate::gather::single;

impl Client {
    /// Submits one call of `task` and returns its value: like `submit` then `result`, but the
    /// wait for the task's result starts before the broker has confirmed the publish, so the two
    /// overlap instead of adding up. Still fails if the broker does not confirm the task.
    ///
    /// # Errors
    /// [`crate::Error::Task`] if the task failed; other variants if publishing or reading did.
    pub async fn call<T: Task>(&self, task: T, args: T::Args) -> Result<T::Output> {
        let _ = task;
        let key = TaskKey::unique(T::NAME);
        // Listen before publishing: the result cannot exist before the task is published.
        let mut waiter = self.waiter(vec![key.clone()]).for_unpublished();
        let message = TaskMessage::new(key, T::NAME, encode_value(&args)?);
        let (_, value) = try_join(
            self.publish(std::iter::once(Ok(message))),
            single(&mut waiter),
        )
        .await?;
        Ok(value)
    }
}

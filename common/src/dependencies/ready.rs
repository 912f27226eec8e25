//! A graph task released to run, as its stored record: published from the record's bytes as
//! they are, with only the fields a publisher needs read from them (the arguments are not
//! decoded, so a released task costs no decode and re-encode of its message).

use serde::Deserialize;

use crate::keys::TaskKey;
use crate::message::{TaskMessage, Undecodable, PROTOCOL_VERSION};
use crate::pool::Pool;
use crate::trace::TraceContext;

/// A task ready to be published: its message body as stored, and the fields read from it that
/// route it and label it ([`crate::broker::task_properties`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ReadyTask {
    /// The task's key.
    pub key: TaskKey,
    /// The function it calls.
    pub function: String,
    /// Its AMQP priority.
    pub priority: u8,
    /// The pool whose queues it goes to (`None`: the default pool).
    pub pool: Option<Pool>,
    /// The trace context its record keeps (the producer's, [`crate::trace`]), sent in the
    /// headers of its publish.
    pub trace: Option<TraceContext>,
    /// The message body, published as it is.
    pub body: Vec<u8>,
}

/// The fields of a message that publishing needs; the others (the arguments) are skipped.
#[derive(Deserialize)]
#[serde(rename = "TaskMessage")]
struct Head {
    version: u16,
    key: TaskKey,
    function: String,
    #[serde(default)]
    priority: u8,
    #[serde(default)]
    pool: Option<Pool>,
    #[serde(default, deserialize_with = "crate::trace::lenient")]
    trace: Option<TraceContext>,
}

impl ReadyTask {
    /// Reads the head of a stored message `body`, keeping the body.
    ///
    /// # Errors
    /// [`Undecodable`] if it is not a task message of this protocol version.
    pub fn from_body(body: Vec<u8>) -> Result<Self, Undecodable> {
        let head: Head = match rmp_serde::from_slice(&body) {
            Ok(head) => head,
            // The full decoder says best what is wrong (and reads what it can).
            Err(_) => {
                return Err(TaskMessage::decode(&body).err().unwrap_or(Undecodable {
                    key: None,
                    function: None,
                    reason: "not a rask task message".into(),
                }))
            }
        };
        if head.version != PROTOCOL_VERSION {
            return Err(TaskMessage::decode(&body).err().unwrap_or(Undecodable {
                key: Some(head.key),
                function: Some(head.function),
                reason: format!("protocol version {} is not supported", head.version),
            }));
        }
        Ok(ReadyTask {
            key: head.key,
            function: head.function,
            priority: head.priority,
            pool: head.pool,
            trace: head.trace,
            body,
        })
    }

    /// Encodes `message` as a ready task (for a message at hand rather than stored).
    ///
    /// # Errors
    /// [`crate::Error::Encode`] (cannot happen for well-formed messages).
    pub fn from_message(message: &TaskMessage) -> crate::Result<Self> {
        Ok(ReadyTask {
            key: message.key.clone(),
            function: message.function.clone(),
            priority: message.priority,
            pool: message.pool.clone(),
            trace: message.trace.clone(),
            body: message.encode()?,
        })
    }

    /// The whole message, decoded (for the paths that need more than the head: a failure
    /// stored for it, a client that publishes messages).
    ///
    /// # Errors
    /// [`Undecodable`] if the body is not a whole task message.
    pub fn message(&self) -> Result<TaskMessage, Undecodable> {
        TaskMessage::decode(&self.body)
    }

    /// The messages of `tasks`, decoded (for a client that publishes them); an undecodable
    /// record is logged and skipped.
    pub fn messages(tasks: Vec<ReadyTask>) -> Vec<TaskMessage> {
        tasks
            .into_iter()
            .filter_map(|task| match task.message() {
                Ok(message) => Some(message),
                Err(e) => {
                    tracing::warn!(key = %task.key, reason = %e.reason, "skipping an undecodable task record");
                    None
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_is_read_and_the_body_kept() {
        let mut message = TaskMessage::new(
            TaskKey::new("add-1").unwrap(),
            "add",
            crate::message::encode_value(&(1, 2)).unwrap(),
        );
        message.priority = 3;
        message.pool = Some(Pool::new("gpu").unwrap());
        message.trace = Some(TraceContext::random_root());
        let body = message.encode().unwrap();
        let ready = ReadyTask::from_body(body.clone()).unwrap();
        assert_eq!(ready, ReadyTask::from_message(&message).unwrap());
        assert_eq!(
            (ready.key.as_str(), ready.function.as_str()),
            ("add-1", "add")
        );
        assert_eq!(
            (ready.priority, ready.pool.as_ref()),
            (3, message.pool.as_ref())
        );
        assert_eq!(ready.trace, message.trace);
        assert_eq!(ready.body, body);
        assert_eq!(ready.message().unwrap(), message);
    }

    #[test]
    fn bad_records_are_undecodable() {
        assert!(ReadyTask::from_body(b"\xc1 garbage".to_vec()).is_err());
        let mut message = TaskMessage::new(TaskKey::new("add-1").unwrap(), "add", vec![0x90]);
        message.version = 99;
        let bad = ReadyTask::from_body(message.encode().unwrap()).unwrap_err();
        assert_eq!(bad.key, Some(message.key));
    }
}

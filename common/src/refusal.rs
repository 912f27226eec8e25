//! RabbitMQ's refusals of what the settings ask for, explained: a refused login, a queue or
//! exchange that exists with other arguments, a queue another connection holds. Each becomes an
//! [`Error::BrokerRefused`] whose message names the settings involved and their values, so that
//! an operator knows what to change; its kind (from the reply code, [`crate::ErrorKind`]) says
//! whether connecting again can help.
//!
//! Only the broker's own refusals (AMQP replies with a code) are explained; a lost connection
//! stays an [`Error::Broker`].

use crate::error::Error;
use crate::settings::Settings;

/// A part of the topology being declared, with the setting that names it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Object<'a> {
    /// An exchange named by `setting`.
    Exchange {
        name: &'a str,
        setting: &'static str,
    },
    /// A queue named by `setting` (the task queue's shards are named by `queue`).
    Queue {
        name: &'a str,
        setting: &'static str,
    },
    /// The binding of `queue` to `exchange`.
    Binding { queue: &'a str, exchange: &'a str },
    /// The delay ladder of the task queue `queue` ([`crate::delay`]): its queues and exchanges
    /// `{queue}.delay.level{k}`.
    DelayLadder { queue: &'a str },
}

impl std::fmt::Display for Object<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Object::Exchange { name, .. } => write!(f, "exchange {name}"),
            Object::Queue { name, .. } => write!(f, "queue {name}"),
            Object::Binding { queue, exchange } => {
                write!(f, "the binding of queue {queue} to exchange {exchange}")
            }
            Object::DelayLadder { queue } => {
                write!(
                    f,
                    "the delay ladder of queue {queue} ({queue}.delay.level0 to 31)"
                )
            }
        }
    }
}

/// The AMQP reply code and text of `error`, if the broker refused with one.
fn reply(error: &lapin::Error) -> Option<(u16, String)> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            Some((amqp.get_id(), amqp.get_message().to_string()))
        }
        _ => None,
    }
}

/// `error` from declaring `object` with `settings`: explained when the broker refused it.
pub(crate) fn declaring(error: lapin::Error, object: Object<'_>, settings: &Settings) -> Error {
    let Some((code, text)) = reply(&error) else {
        return Error::Broker(error);
    };
    let explained = match (code, object) {
        (406, Object::Queue { name, setting }) => {
            other_queue_arguments(name, setting, &text, settings)
        }
        (406, Object::DelayLadder { .. }) => format!(
            "{object}: a queue or exchange of that name exists with other arguments or another \
             type (rask declares them itself, the same for every delay): delete it so that it \
             is declared again"
        ),
        (406, Object::Exchange { name, setting }) => format!(
            "exchange {name} (setting {setting}) exists with another type or other arguments: \
             name another exchange with {setting}, or delete this one so that it is declared \
             again"
        ),
        (405, Object::Queue { name, .. }) => format!(
            "queue {name} is held exclusively by another connection; it is declared once that \
             connection closes"
        ),
        (403, _) => format!(
            "the user of amqp_url may not declare {object}: give it configure permission on \
             the vhost, or name other exchanges and queues (exchange, queue, \
             dead_letter_exchange, dead_letter_queue)"
        ),
        (_, Object::Exchange { name, setting } | Object::Queue { name, setting }) => {
            format!("declaring {object} (setting {setting} = {name}) was refused")
        }
        (_, Object::Binding { .. } | Object::DelayLadder { .. }) => {
            format!("declaring {object} was refused")
        }
    };
    Error::BrokerRefused {
        explained,
        source: error,
    }
}

/// The explanation of PRECONDITION_FAILED for queue `name` (named by the setting `named_by`):
/// which of its arguments differs (RabbitMQ names it in the reply text, `inequivalent arg
/// 'x-max-priority' …`) and which settings declare that argument.
fn other_queue_arguments(name: &str, named_by: &str, text: &str, settings: &Settings) -> String {
    let argument = text
        .split_once("inequivalent arg '")
        .and_then(|(_, rest)| rest.split_once('\''))
        .map(|(argument, _)| argument);
    let dead_letters = named_by == "dead_letter_queue";
    let queue_type = ("queue_type", settings.queue_type.to_string());
    let max_length = (
        "dead_letter_max_length",
        settings.dead_letter_max_length.to_string(),
    );
    let max_bytes = (
        "dead_letter_max_bytes",
        settings.dead_letter_max_bytes.to_string(),
    );
    let declaring: Vec<(&str, String)> = match (argument, dead_letters) {
        (Some("x-queue-type" | "x-dead-letter-strategy"), _) => vec![queue_type],
        (Some("x-max-priority"), false) => {
            vec![("max_priority", settings.max_priority.to_string())]
        }
        (Some("x-overflow"), false) => vec![queue_type],
        (Some("x-dead-letter-exchange"), false) => vec![(
            "dead_letter_exchange",
            settings.dead_letter_exchange.clone(),
        )],
        (Some("x-max-length"), true) => vec![max_length],
        (Some("x-max-length-bytes"), true) => vec![max_bytes],
        (Some("x-overflow"), true) => vec![max_length, max_bytes],
        (_, false) => vec![
            ("max_priority", settings.max_priority.to_string()),
            queue_type,
            (
                "dead_letter_exchange",
                settings.dead_letter_exchange.clone(),
            ),
        ],
        (_, true) => vec![queue_type, max_length, max_bytes],
    };
    let listed: Vec<String> = declaring
        .iter()
        .map(|(setting, value)| format!("{setting} = {value}"))
        .collect();
    let (the_setting, them) = match listed.as_slice() {
        [one] => (format!("the setting {one} disagrees with it"), "it"),
        _ => (
            format!("the settings that declare it are {}", listed.join(", ")),
            "them",
        ),
    };
    format!(
        "queue {name} exists with other arguments{}; {the_setting}: set {them} as the queue was \
         declared, or delete the queue (after moving its messages) so that it is declared again",
        argument.map_or_else(String::new, |a| format!(": {a}")),
    )
}

/// `error` from connecting to the node at `url` (masked): explained when the broker refused
/// the login.
pub(crate) fn login(error: lapin::Error, url: &str) -> Error {
    let explained = match (reply(&error), error.kind()) {
        (Some((403, _)), _) | (None, lapin::ErrorKind::AuthProviderError(_)) => {
            format!("RabbitMQ refused the login of amqp_url = {url}: check its user and password")
        }
        (Some((530, _)), _) => format!(
            "RabbitMQ refused the vhost of amqp_url = {url}: check that it exists and that the \
             user may use it"
        ),
        (Some(_), _) => format!("RabbitMQ refused the connection of amqp_url = {url}"),
        (None, _) => return Error::Broker(error),
    };
    Error::BrokerRefused {
        explained,
        source: error,
    }
}

/// `error` from starting to consume `queue`: explained when the broker refused it.
pub fn consuming(error: lapin::Error, queue: &str) -> Error {
    let Some((code, _)) = reply(&error) else {
        return Error::Broker(error);
    };
    let explained = match code {
        403 => format!(
            "the user of amqp_url may not consume queue {queue}: give it read permission on \
             the vhost"
        ),
        405 => format!("queue {queue} is consumed exclusively by another connection"),
        _ => format!("consuming queue {queue} (setting queue) was refused"),
    };
    Error::BrokerRefused {
        explained,
        source: error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPSoftError};

    fn refusal(kind: AMQPSoftError, text: &str) -> lapin::Error {
        let amqp = AMQPError::new(AMQPErrorKind::Soft(kind), text.into());
        lapin::Error::from(lapin::ErrorKind::ProtocolError(amqp))
    }

    #[test]
    fn a_queue_with_other_arguments_names_the_setting() {
        let settings = Settings::default();
        let text = "PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue \
                    'rask.tasks' in vhost '/': received the value '9' of type 'byte' but \
                    current is the value '5' of type 'signedint'";
        let queue = Object::Queue {
            name: "rask.tasks",
            setting: "queue",
        };
        let error = declaring(
            refusal(AMQPSoftError::PRECONDITIONFAILED, text),
            queue,
            &settings,
        );
        assert_eq!(error.kind(), ErrorKind::Configuration);
        let message = error.to_string();
        assert!(
            message.starts_with(
                "queue rask.tasks exists with other arguments: x-max-priority; the setting \
                 max_priority = 9 disagrees"
            ),
            "{message}"
        );
        assert!(message.contains("current is the value '5'"), "{message}");

        let unknown = declaring(
            refusal(
                AMQPSoftError::PRECONDITIONFAILED,
                "PRECONDITION_FAILED - other",
            ),
            queue,
            &settings,
        );
        assert!(
            unknown
                .to_string()
                .contains("max_priority = 9, queue_type = classic"),
            "{unknown}"
        );
    }

    #[test]
    fn locks_are_transient_and_lost_connections_stay_broker_errors() {
        let settings = Settings::default();
        let queue = Object::Queue {
            name: "q",
            setting: "queue",
        };
        let locked = declaring(
            refusal(AMQPSoftError::RESOURCELOCKED, "RESOURCE_LOCKED - locked"),
            queue,
            &settings,
        );
        assert_eq!(locked.kind(), ErrorKind::Transient);
        let io = lapin::Error::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        let lost = declaring(io, queue, &settings);
        assert!(matches!(lost, Error::Broker(_)), "{lost:?}");
        assert_eq!(lost.kind(), ErrorKind::Transient);
        let denied = login(
            refusal(
                AMQPSoftError::ACCESSREFUSED,
                "ACCESS_REFUSED - Login was refused",
            ),
            "amqp://guest:***@h/",
        );
        assert_eq!(denied.kind(), ErrorKind::Configuration);
        assert!(denied.to_string().contains("user and password"), "{denied}");
    }
}

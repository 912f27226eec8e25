//! The error type of `rask-common`: connecting to the broker and the store, and decoding what they hold.

/// A `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong below the task level: settings, connections, encoding.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is missing or has a bad value; the message names the setting and the value.
    #[error("bad setting: {0}")]
    Settings(String),
    /// RabbitMQ refused or dropped something.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// Redis refused or dropped something.
    #[error("store: {0}")]
    Store(#[from] redis::RedisError),
    /// A value could not be encoded as MessagePack.
    #[error("encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// Bytes could not be decoded as the expected MessagePack value.
    #[error("decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// A message carries a protocol version this build does not speak.
    #[error("protocol version {found} is not supported (this build speaks {supported})")]
    Version {
        /// The version in the message.
        found: u16,
        /// The version this build writes and reads.
        supported: u16,
    },
    /// A TLS file named by a setting (`tls_ca_file`, `tls_cert_file`, `tls_key_file`) cannot be
    /// read.
    #[error("cannot read {setting} {}: {source}", path.display())]
    TlsFile {
        /// The setting naming the file.
        setting: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// A task's delay (countdown, eta) is longer than the broker's delay queues hold
    /// ([`crate::delay::MAX_DELAY`]); nothing was published.
    #[error("a delay of {delay:?} is longer than the longest the delay queues hold, {max:?}")]
    DelayTooLong {
        /// The delay asked for.
        delay: std::time::Duration,
        /// The longest delay.
        max: std::time::Duration,
    },
    /// A task key is empty, too long or contains characters keys may not hold.
    #[error("invalid task key {0:?}: keys are 1-200 characters of [A-Za-z0-9_.:-]")]
    InvalidKey(String),
}

impl Error {
    /// Whether the error came from a lost or refused connection, so that retrying later may succeed.
    pub fn is_connection(&self) -> bool {
        match self {
            Error::Broker(_) => true,
            Error::Store(e) => {
                e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
            }
            _ => false,
        }
    }
}

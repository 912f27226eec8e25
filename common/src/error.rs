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
    /// RabbitMQ refused what the settings ask of it: the login of `amqp_url`, or declaring the
    /// topology as the settings describe it (e.g. the task queue exists with other arguments).
    /// The message says which settings disagree with the broker.
    #[error("{explained} (RabbitMQ: {source})")]
    BrokerRefused {
        /// What was refused and the settings involved, e.g. `queue rask.tasks exists with
        /// other arguments: x-max-priority; the setting max_priority = 9 disagrees …`.
        explained: String,
        /// The broker's refusal, with its reply code.
        source: lapin::Error,
    },
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
    /// The span exporter of `otlp_endpoint` could not be built (feature `otlp`): the endpoint
    /// is not a URL it can send to, or a TLS file of the settings is not valid PEM. A
    /// configuration error.
    #[error("otlp_endpoint = {endpoint}: cannot export spans there: {reason}")]
    Otlp {
        /// The endpoint, password masked.
        endpoint: String,
        /// Why the exporter refused it.
        reason: String,
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
    /// A periodic task's definition is not valid (its name, cron pattern, time zone or
    /// interval); says which and why.
    #[error("invalid schedule: {0}")]
    InvalidSchedule(String),
    /// Resources given as text (`gpu=2,mem=16GiB`: the `resources` setting, a `--resources`
    /// flag) do not parse or name a resource badly; the message says what is wrong.
    #[error("invalid resources: {0}")]
    InvalidResources(String),
    /// A global limit (`rask limit set`, the `limits` setting) does not parse or is out of
    /// range; the message says what is wrong.
    #[error("invalid limit: {0}")]
    InvalidLimit(String),
    /// Bytes read for a [`crate::reference::Reference`] are not what it names (another length,
    /// or another digest): changed or replaced where they were kept.
    #[error("value {digest} is not what its reference names: {what}")]
    ReferenceMismatch {
        /// The digest the reference names.
        digest: crate::reference::Digest,
        /// What differs.
        what: String,
    },
    /// The blob store (`blob_url`, [`crate::blobs`]) refused something or could not be reached.
    #[error("blob store: {what}: {source}")]
    Blob {
        /// Whether trying again can help: credentials, permissions and a store that cannot be
        /// set up are [`ErrorKind::Configuration`], the rest [`ErrorKind::Transient`].
        kind: ErrorKind,
        /// What rask was doing, e.g. `writing blob {digest} to s3://bucket/prefix`.
        what: String,
        /// The store's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A blob named by URL (`rask::Blob`) does not exist (never written, deleted, expired).
    #[error("blob {url} does not exist")]
    BlobMissing {
        /// The blob's URL.
        url: String,
    },
}

/// Whether trying again can help, for an [`Error`] (see [`Error::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A lost or refused connection, a server busy, loading or failing over: the same request
    /// may succeed later.
    Transient,
    /// This request is refused for what it is (too large, unroutable, a script error on its
    /// keys, undecodable): sent again it fails the same way, while others may succeed.
    Rejected,
    /// The servers refuse these settings or this login (a queue declared with other arguments,
    /// missing permissions, a wrong password, a replica where a primary is needed, a bad
    /// setting): nothing succeeds until the configuration changes.
    Configuration,
}

impl ErrorKind {
    /// The kind of a RabbitMQ error, by its AMQP reply code where it has one: `403`
    /// ACCESS_REFUSED, `404` NOT_FOUND, `406` PRECONDITION_FAILED, `402` INVALID_PATH and `530`
    /// NOT_ALLOWED are [`ErrorKind::Configuration`]; `311` CONTENT_TOO_LARGE and `312` NO_ROUTE
    /// are [`ErrorKind::Rejected`]; the others (`320` CONNECTION_FORCED when the broker stops,
    /// `405` RESOURCE_LOCKED by another connection, `5xx`) and every I/O error are
    /// [`ErrorKind::Transient`]. A login refused by the authentication provider is
    /// [`ErrorKind::Configuration`].
    pub fn of_broker(error: &lapin::Error) -> Self {
        use lapin::ErrorKind as Lapin;
        match error.kind() {
            Lapin::ProtocolError(amqp) => match amqp.get_id() {
                402 | 403 | 404 | 406 | 530 => ErrorKind::Configuration,
                311 | 312 => ErrorKind::Rejected,
                _ => ErrorKind::Transient,
            },
            Lapin::AuthProviderError(_)
            | Lapin::InvalidProtocolVersion(_)
            | Lapin::NoDefaultRuntime => ErrorKind::Configuration,
            Lapin::SerialisationError(_) => ErrorKind::Rejected,
            _ => ErrorKind::Transient,
        }
    }

    /// The kind of a Redis error: I/O, timeouts, `LOADING`, `TRYAGAIN`, `CLUSTERDOWN`,
    /// `MASTERDOWN`, redirections, `NOSCRIPT`, `OOM`, `MISCONF` and `BUSY` are
    /// [`ErrorKind::Transient`]; a failed login (`WRONGPASS`, `NOAUTH`), `NOPERM` and `READONLY`
    /// (the URL names a replica) are [`ErrorKind::Configuration`]; the rest (`ERR …` such as a
    /// script error or a value over `proto-max-bulk-len`, `WRONGTYPE`, `EXECABORT`, a reply
    /// of an unexpected type) are [`ErrorKind::Rejected`].
    pub fn of_store(error: &redis::RedisError) -> Self {
        use redis::{ErrorKind as Redis, ServerErrorKind as Server};
        match error.kind() {
            Redis::Io
            | Redis::Parse
            | Redis::ClusterConnectionNotFound
            | Redis::MasterNameNotFoundBySentinel
            | Redis::NoValidReplicasFoundBySentinel
            | Redis::Server(
                Server::BusyLoading
                | Server::TryAgain
                | Server::ClusterDown
                | Server::MasterDown
                | Server::Moved
                | Server::Ask
                | Server::NoScript,
            ) => ErrorKind::Transient,
            Redis::AuthenticationFailed
            | Redis::InvalidClientConfig
            | Redis::EmptySentinelList
            | Redis::RESP3NotSupported
            | Redis::Server(Server::ReadOnly | Server::NoPerm) => ErrorKind::Configuration,
            // Codes redis-rs has no kind for: the server's own error code, as sent.
            Redis::Extension => match error.code() {
                Some("OOM" | "MISCONF" | "BUSY") => ErrorKind::Transient,
                Some("NOAUTH" | "WRONGPASS") => ErrorKind::Configuration,
                _ => ErrorKind::Rejected,
            },
            _ => ErrorKind::Rejected,
        }
    }
}

impl Error {
    /// Whether trying again can help (see [`ErrorKind`]): settings, TLS files and resources
    /// are [`ErrorKind::Configuration`]; broker and store errors by their reply codes
    /// ([`ErrorKind::of_broker`], [`ErrorKind::of_store`]; a refusal explained by
    /// [`Error::BrokerRefused`] likewise); encoding, decoding, versions, keys and delays over
    /// the ladder's are [`ErrorKind::Rejected`].
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Settings(_)
            | Error::TlsFile { .. }
            | Error::Otlp { .. }
            | Error::InvalidResources(_)
            | Error::InvalidLimit(_) => ErrorKind::Configuration,
            Error::Broker(e) | Error::BrokerRefused { source: e, .. } => ErrorKind::of_broker(e),
            Error::Store(e) => ErrorKind::of_store(e),
            Error::Blob { kind, .. } => *kind,
            Error::Encode(_)
            | Error::Decode(_)
            | Error::Version { .. }
            | Error::InvalidKey(_)
            | Error::InvalidSchedule(_)
            | Error::DelayTooLong { .. }
            | Error::ReferenceMismatch { .. }
            | Error::BlobMissing { .. } => ErrorKind::Rejected,
        }
    }

    /// Whether trying the same again cannot succeed: [`Error::kind`] is not
    /// [`ErrorKind::Transient`].
    pub fn is_permanent(&self) -> bool {
        self.kind() != ErrorKind::Transient
    }

    /// Whether the error came from a lost or refused connection, so that retrying later may succeed.
    pub fn is_connection(&self) -> bool {
        match self {
            Error::Broker(_) => true,
            Error::BrokerRefused { source, .. } => {
                ErrorKind::of_broker(source) == ErrorKind::Transient
            }
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

//! TLS material for `amqps://` and `rediss://` connections (and the worker's `https://` OTLP
//! exporter): the CA file and the client certificate and key named by the settings, read from
//! disk at each connection (so that renewed certificates are picked up by the next reconnect,
//! without a restart).

use std::path::Path;

use crate::error::{Error, Result};
use crate::settings::Settings;

/// The PEM files of [`Settings::tls_ca_file`], [`Settings::tls_cert_file`] and
/// [`Settings::tls_key_file`], as read.
pub struct TlsFiles {
    /// The CA certificate(s) to trust, PEM.
    pub ca: Option<Vec<u8>>,
    /// The client certificate (chain) and its private key, PEM.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    /// Reads the files the settings name.
    ///
    /// # Errors
    /// [`Error::TlsFile`] naming the setting and file that cannot be read;
    /// [`Error::Settings`] if only one of the certificate and the key is set.
    pub fn read(settings: &Settings) -> Result<Self> {
        let ca = settings
            .tls_ca_file
            .as_deref()
            .map(|path| read("tls_ca_file", path))
            .transpose()?;
        let identity = match (&settings.tls_cert_file, &settings.tls_key_file) {
            (Some(cert), Some(key)) => {
                Some((read("tls_cert_file", cert)?, read("tls_key_file", key)?))
            }
            (None, None) => None,
            _ => {
                return Err(Error::Settings(
                    "tls_cert_file and tls_key_file: set both or neither".into(),
                ))
            }
        };
        Ok(TlsFiles { ca, identity })
    }
}

/// The bytes of `path`, the file of `setting`.
fn read(setting: &'static str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::TlsFile {
        setting,
        path: path.to_owned(),
        source,
    })
}

//! Exporting spans over OTLP/HTTP (feature `otlp`): the `rask.run` spans of a worker (and any
//! other `tracing` span of the process) go to `{otlp_endpoint}/v1/traces` as protobuf, in
//! batches, from a thread of the OpenTelemetry SDK's batch processor (never from the tasks'
//! threads). Binaries start it with the settings ([`Otlp::start`]), add [`Otlp::layer`] to
//! their `tracing` subscriber (or call [`init_tracing`], which does both), and call
//! [`Otlp::shutdown`] before they exit, so that the last spans are sent.

use crate::settings::mask_url;
use crate::tls::TlsFiles;
use crate::Settings;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::error::{Error, Result};

/// The OTLP/HTTP path of traces under the endpoint.
const TRACES_PATH: &str = "/v1/traces";

/// How long one export request may take (the OpenTelemetry SDK's default export timeout).
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A running span exporter (see the module docs). Dropping it without [`Otlp::shutdown`] may
/// lose the spans of the last batch.
#[derive(Debug)]
pub struct Otlp {
    provider: SdkTracerProvider,
}

impl Otlp {
    /// Starts exporting to the `otlp_endpoint` of `settings`, as service `service` (the
    /// `service.name` resource of every span); `None` when the setting is empty.
    ///
    /// # Errors
    /// [`Error::Otlp`] if the exporter cannot be built for the endpoint.
    pub fn start(settings: &Settings, service: &str) -> Result<Option<Otlp>> {
        let endpoint = settings.otlp_endpoint.trim().trim_end_matches('/');
        if endpoint.is_empty() {
            return Ok(None);
        }
        let refused = |reason: String| Error::Otlp {
            endpoint: mask_url(endpoint),
            reason,
        };
        if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
            return Err(refused("not an http:// or https:// URL".into()));
        }
        let tls = TlsFiles::read(settings)?;
        // The blocking HTTP client is built, used and dropped on threads of its own (its
        // runtime must not be dropped on one of the caller's runtime threads).
        let url = format!("{endpoint}{TRACES_PATH}");
        let exporter = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let client = http_client(tls).map_err(|e| e.to_string())?;
                    SpanExporter::builder()
                        .with_http()
                        .with_http_client(client)
                        .with_endpoint(url)
                        .build()
                        .map_err(|e| e.to_string())
                })
                .join()
        })
        .map_err(|_| refused("building the exporter panicked".into()))?
        .map_err(refused)?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(service.to_owned())
                    .build(),
            )
            .build();
        Ok(Some(Otlp { provider }))
    }

    /// A `tracing` layer that records spans for this exporter, with their parents (local, or
    /// remote: a task's trace context, [`crate::trace`]).
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        let tracer = self.provider.tracer("rask");
        tracing_opentelemetry::layer().with_tracer(tracer)
    }

    /// Sends the spans not yet sent and stops the exporter. Blocks (up to the SDK's export
    /// timeout) on a thread of its own.
    pub fn shutdown(self) {
        let provider = self.provider;
        let ended = std::thread::spawn(move || provider.shutdown()).join();
        if let Ok(Err(e)) = ended {
            tracing::warn!(error = %e, "the span exporter did not shut down cleanly");
        }
    }
}

/// The exporter's HTTP client: `https://` endpoints are verified against the system's roots and
/// `tls_ca_file`, and it presents `tls_cert_file` when set (as the broker and store
/// connections do); a request gives up after [`EXPORT_TIMEOUT`].
fn http_client(tls: TlsFiles) -> reqwest::Result<reqwest::blocking::Client> {
    let mut builder = reqwest::blocking::Client::builder().timeout(EXPORT_TIMEOUT);
    if let Some(ca) = tls.ca {
        builder = builder.tls_certs_merge(reqwest::Certificate::from_pem_bundle(&ca)?);
    }
    if let Some((mut cert, key)) = tls.identity {
        cert.push(b'\n');
        cert.extend_from_slice(&key);
        builder = builder.identity(reqwest::Identity::from_pem(&cert)?);
    }
    builder.build()
}

/// Installs the process's `tracing` subscriber: log lines on stderr filtered by `RUST_LOG` (else
/// `default_filter`), and, when `otlp_endpoint` is set, spans at level info and above (whatever
/// the log filter) exported there as `service` ([`Otlp`]). Returns the exporter, to shut down before the process exits. For binaries:
/// a library leaves the subscriber to its application.
///
/// # Errors
/// As [`Otlp::start`]; the subscriber is not installed then.
pub fn init_tracing(
    settings: &Settings,
    default_filter: &str,
    service: &str,
) -> Result<Option<Otlp>> {
    let otlp = Otlp::start(settings, service)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let registry = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::io::stderr)
                .with_filter(filter),
        )
        .with(
            otlp.as_ref()
                .map(|otlp| otlp.layer().with_filter(LevelFilter::INFO)),
        );
    // A second install (a test binary) keeps the first subscriber.
    let _ = registry.try_init();
    Ok(otlp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_endpoint_no_exporter_and_bad_endpoints_are_refused() {
        assert!(Otlp::start(&Settings::default(), "w").unwrap().is_none());
        let bad = Settings {
            otlp_endpoint: "127.0.0.1:4318".into(),
            ..Settings::default()
        };
        let error = Otlp::start(&bad, "w").unwrap_err();
        assert!(error.to_string().contains("otlp_endpoint"), "{error}");
        assert_eq!(error.kind(), crate::ErrorKind::Configuration);
    }
}

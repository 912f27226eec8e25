//! A real S3-compatible server for the blob-store tests: moto in server mode (`moto_server`, from
//! PyPI), on a free port of its own, with a bucket made through the S3 API (`PUT /{bucket}`).
//!
//! Why moto and not Garage: Garage from crates.io is a large Rust build (minutes on CI's two
//! cores, more than the rest of the suite's servers together); moto installs from PyPI in
//! seconds into a venv (`scripts/install-deps.sh`: `target/moto-venv`) and speaks the S3 API
//! object_store uses (PUT, GET, HEAD, DELETE, multipart uploads, listing, bulk delete).
//!
//! The program: `RASK_TEST_MOTO_SERVER` if set, else the venv's `moto_server`. Credentials:
//! moto checks none; clients and workers get fixed `AWS_*` values ([`MotoServer::env_vars`]),
//! and the test process sets them in its own environment (once, the same values every time)
//! because object_store reads them from there.

use std::path::PathBuf;
use std::time::Duration;

use rask::local::{self, Lifetime, WorkerSpec};

use crate::PATIENCE;

/// The fixed test credentials and region (moto accepts any).
const AWS: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "rask-test"),
    ("AWS_SECRET_ACCESS_KEY", "rask-test-secret"),
    ("AWS_REGION", "us-east-1"),
];

/// A moto server of one test (stopped on drop, or when the test process dies).
pub struct MotoServer {
    _process: local::Worker,
    port: u16,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A folder deleted on drop.
    pub(super) struct Dir(pub(super) std::path::PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Where `moto_server` is: `RASK_TEST_MOTO_SERVER`, else the venv `scripts/install-deps.sh`
/// makes.
pub fn moto_program() -> PathBuf {
    match std::env::var_os("RASK_TEST_MOTO_SERVER") {
        Some(program) => PathBuf::from(program),
        None => {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/moto-venv/bin/moto_server")
        }
    }
}

impl MotoServer {
    /// Starts one and waits until it answers; panics (failing the test) if it is not installed
    /// or does not start.
    pub async fn start() -> Self {
        let program = moto_program();
        assert!(
            program.exists(),
            "{} is missing: run scripts/install-deps.sh (it installs moto[server] into \
             target/moto-venv), or set RASK_TEST_MOTO_SERVER",
            program.display()
        );
        for (name, value) in AWS {
            // The same constant values in every test: object_store reads them from here.
            std::env::set_var(name, value);
        }
        let dir = std::env::temp_dir().join(format!(
            "rask-test-moto-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).expect("a folder for moto's log");
        let port = local::free_port().expect("a free port");
        let spec = WorkerSpec {
            program,
            args: vec![
                "-H".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ],
            env: Vec::new(),
            log: dir.join("moto.log"),
        };
        let process = local::Worker::spawn(&spec, Lifetime::TiedToCaller).expect("moto starts");
        let server = MotoServer {
            _process: process,
            port,
            _dir: tempdir::Dir(dir),
        };
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while server.request("GET", "/").await.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "moto did not answer on port {port}; its log: {}",
                std::fs::read_to_string(&spec.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// Its endpoint, for `s3_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Makes the bucket `name` (S3's CreateBucket, `PUT /{name}`).
    pub async fn create_bucket(&self, name: &str) {
        let status = self.request("PUT", &format!("/{name}")).await;
        assert_eq!(status, Some(200), "moto creates bucket {name}");
    }

    /// The variables that give a worker process the credentials and region.
    pub fn env_vars() -> Vec<(&'static str, &'static str)> {
        AWS.to_vec()
    }

    /// The status code of an empty request `METHOD path`, or `None` if the server does not
    /// answer.
    async fn request(&self, method: &str, path: &str) -> Option<u16> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.port
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response))
            .await
            .ok()?
            .ok()?;
        let head = String::from_utf8_lossy(&response);
        head.split_whitespace().nth(1)?.parse().ok()
    }
}

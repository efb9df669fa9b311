//! Where the bucket is, how to sign for it, and the bounds of every request: turned into one
//! object_store client by [`S3Options::client`].

use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, RetryConfig};
use parlor_core::BackendError;

/// How requests are signed.
#[derive(Clone, PartialEq, Eq)]
pub enum S3Credentials {
    /// What the process's environment provides, as the AWS SDK finds it:
    /// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN` (a Lambda's), a web
    /// identity token (EKS), the container credentials endpoint (ECS), else the instance
    /// metadata service (EC2). Only these credential variables are read, nothing else of the
    /// environment.
    Environment,
    /// Fixed keys (MinIO, an emulator, or a key pair from the configuration).
    Static {
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
    },
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            S3Credentials::Environment => f.write_str("Environment"),
            // Never the secret, not even in a debug print of the options.
            S3Credentials::Static { access_key_id, .. } => f
                .debug_struct("Static")
                .field("access_key_id", access_key_id)
                .finish_non_exhaustive(),
        }
    }
}

/// The credential variables [`S3Credentials::Environment`] reads, by object_store's name.
const CREDENTIAL_VARIABLES: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
];

/// An S3-compatible bucket and how to talk to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Options {
    /// `None`: AWS S3 in `region`. MinIO's or an emulator's URL otherwise, e.g.
    /// `http://127.0.0.1:4566` (plain HTTP is allowed only when the endpoint says `http://`).
    pub endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// `https://endpoint/bucket/key` instead of `https://bucket.endpoint/key`: MinIO and the
    /// emulators want it; AWS takes either.
    pub path_style: bool,
    pub credentials: S3Credentials,
    /// Put before every blob's key, `/`-separated segments such as `parlor/blobs`; empty
    /// for none. Lets one bucket hold several deployments' blobs, or a test's own.
    pub key_prefix: String,
    /// Files longer than this go up as a multipart upload in parts of this size (S3 wants at
    /// least 5 MiB for every part but the last); shorter ones in one `PUT`. A put holds at
    /// most `part_bytes × parts_in_flight` of a file in memory.
    pub part_bytes: usize,
    /// Parts of one multipart upload sent at the same time.
    pub parts_in_flight: usize,
    /// Creates the bucket at open if it is missing (emulators, a developer's MinIO).
    pub create_bucket: bool,
    /// Bound on opening a connection.
    pub connect_timeout: Duration,
    /// Bound on a request's silence: no byte of a response for this long fails it. There
    /// is no bound on a whole request, since a download streams at its reader's pace.
    pub read_timeout: Duration,
    /// Retries of a request that failed for a transient reason (5xx, a dropped connection),
    /// with exponential backoff, within `retry_timeout` of the first attempt.
    pub retries_max: usize,
    pub retry_timeout: Duration,
}

impl S3Options {
    /// AWS S3 defaults for `bucket` in `region`, with credentials from the environment.
    pub fn new(region: impl Into<String>, bucket: impl Into<String>) -> S3Options {
        S3Options {
            endpoint: None,
            region: region.into(),
            bucket: bucket.into(),
            path_style: false,
            credentials: S3Credentials::Environment,
            key_prefix: String::new(),
            part_bytes: 8 * 1024 * 1024,
            parts_in_flight: 2,
            create_bucket: false,
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(30),
            retries_max: 3,
            retry_timeout: Duration::from_secs(15),
        }
    }

    /// The object key prefix as a path: no empty segment (`a//b`), no `.` or `..`; a leading
    /// or trailing `/` is dropped.
    pub(crate) fn prefix(&self) -> Result<Path, BackendError> {
        Path::parse(&self.key_prefix).map_err(|error| {
            BackendError::rejected(format!(
                "s3: the key prefix {:?} is not a path of segments: {error}",
                self.key_prefix
            ))
            .with_source(error)
        })
    }

    /// The object_store client these options describe.
    pub(crate) fn client(&self) -> Result<AmazonS3, BackendError> {
        if self.part_bytes == 0 || self.parts_in_flight == 0 {
            return Err(BackendError::rejected(
                "s3: part_bytes and parts_in_flight must be at least 1",
            ));
        }
        install_ring_provider();
        let mut builder = AmazonS3Builder::new();
        match &self.credentials {
            S3Credentials::Environment => {
                for name in CREDENTIAL_VARIABLES {
                    if let (Ok(value), Ok(key)) = (
                        std::env::var(name),
                        name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>(),
                    ) {
                        builder = builder.with_config(key, value);
                    }
                }
            }
            S3Credentials::Static {
                access_key_id,
                secret_access_key,
                session_token,
            } => {
                builder = builder
                    .with_access_key_id(access_key_id)
                    .with_secret_access_key(secret_access_key);
                if let Some(token) = session_token {
                    builder = builder.with_token(token);
                }
            }
        }
        let plain_http = self
            .endpoint
            .as_deref()
            .is_some_and(|endpoint| endpoint.starts_with("http://"));
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        builder
            .with_region(&self.region)
            .with_bucket_name(&self.bucket)
            .with_virtual_hosted_style_request(!self.path_style)
            .with_allow_http(plain_http)
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(plain_http)
                    .with_connect_timeout(self.connect_timeout)
                    .with_read_timeout(self.read_timeout)
                    .with_timeout_disabled(),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: self.retries_max,
                retry_timeout: self.retry_timeout,
            })
            .build()
            .map_err(|error| {
                BackendError::rejected(format!("s3: bad options: {error}")).with_source(error)
            })
    }
}

/// reqwest (built without a provider of its own, so that it brings no aws-lc-rs) takes
/// rustls's process-wide crypto provider: ring, unless something installed one first, which
/// is then used as it is.
fn install_ring_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_debug_print_never_shows_the_secret() {
        let credentials = S3Credentials::Static {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI".into(),
            session_token: Some("token".into()),
        };
        let printed = format!("{credentials:?}");
        assert!(printed.contains("AKIDEXAMPLE"), "{printed}");
        assert!(!printed.contains("wJalrXUtnFEMI"), "{printed}");
        assert!(!printed.contains("token"), "{printed}");
    }

    #[test]
    fn a_prefix_must_be_clean_segments() {
        let mut options = S3Options::new("us-east-1", "bucket");
        assert_eq!(options.prefix().expect("empty").as_ref(), "");
        options.key_prefix = "parlor/blobs".into();
        assert_eq!(
            options.prefix().expect("two segments").as_ref(),
            "parlor/blobs"
        );
        options.key_prefix = "/parlor/blobs/".into();
        assert_eq!(
            options.prefix().expect("slashes dropped").as_ref(),
            "parlor/blobs"
        );
        for bad in ["a//b", "a/../b", "./a"] {
            options.key_prefix = bad.into();
            assert!(options.prefix().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn no_parts_at_all_is_refused() {
        let mut options = S3Options::new("us-east-1", "bucket");
        options.part_bytes = 0;
        assert!(options.client().is_err());
    }
}

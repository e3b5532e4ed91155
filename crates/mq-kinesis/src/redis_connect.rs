//! What [`RedisLeaseStore::connect`](crate::RedisLeaseStore::connect) makes of its arguments:
//! the key prefix, checked, and the `fred` configuration of the URL, with TLS (`rediss://`) set
//! up here rather than by `fred`.
//!
//! `fred` builds its default TLS settings with rustls' process-wide crypto provider, which does
//! not exist when more than one provider is compiled in (the AWS SDK brings aws-lc-rs): it would
//! panic. The settings are built here with the ring provider named explicitly, against the
//! system's roots or the CA file the URL names.

use fred::prelude::Config;

use crate::error::{Error, Result};

/// The URL query parameter naming a PEM file of CA certificates that replaces the system's
/// roots for a `rediss://` URL.
pub(crate) const CA_FILE_PARAM: &str = "ca_file";

/// The longest key prefix: keys stay short, and a prefix is a name, not data.
const MAX_PREFIX_LEN: usize = 128;

/// Refuses a key prefix that could reach into other keys or break the store's key layout:
/// Redis `KEYS`/ACL glob characters (`*`, `?`, `[`), hash-tag braces (every key of a stream
/// must hash to one Cluster slot by its `{<stream>}` tag), spaces, control characters and
/// non-ASCII look-alikes.
pub(crate) fn check_prefix(prefix: &str) -> Result<()> {
    let reason = if prefix.is_empty() {
        "must not be empty".to_owned()
    } else if prefix.len() > MAX_PREFIX_LEN {
        format!(
            "is {} bytes long; use at most {MAX_PREFIX_LEN}",
            prefix.len()
        )
    } else if let Some(c) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/')))
    {
        format!("contains {c:?}; use ASCII letters, digits and - _ . : /")
    } else {
        return Ok(());
    };
    let shown: String = prefix.chars().take(64).collect();
    Err(Error::InvalidOption {
        field: "prefix",
        reason: format!("key prefix {shown:?} {reason}"),
    })
}

/// The `fred` configuration of `url`: as `fred` parses it, plus TLS for a `rediss://` (or
/// `valkeys://`, and their `-cluster` / `-sentinel` forms) URL, checked against the roots
/// [`CA_FILE_PARAM`] names, or the system's.
pub(crate) fn config_from_url(url: &str) -> Result<Config> {
    let bad_url = |reason: String| Error::lease("connect", format!("invalid Redis URL: {reason}"));
    // The parser's messages never quote the URL, so the password cannot leak through them.
    let mut parsed = url::Url::parse(url).map_err(|e| bad_url(e.to_string()))?;
    let scheme = parsed.scheme().to_owned();
    let plain_scheme = scheme
        .strip_prefix("rediss")
        .map(|rest| format!("redis{rest}"))
        .or_else(|| {
            scheme
                .strip_prefix("valkeys")
                .map(|rest| format!("valkey{rest}"))
        });
    let mut ca_file = None;
    let kept: Vec<(String, String)> = parsed
        .query_pairs()
        .filter_map(|(k, v)| {
            if k == CA_FILE_PARAM {
                ca_file = Some(v.into_owned());
                None
            } else {
                Some((k.into_owned(), v.into_owned()))
            }
        })
        .collect();
    let Some(plain_scheme) = plain_scheme else {
        if ca_file.is_some() {
            return Err(bad_url(format!(
                "{CA_FILE_PARAM} needs a TLS URL (rediss://), not {scheme}://"
            )));
        }
        return Config::from_url(url).map_err(|e| Error::lease("connect", e));
    };
    parsed
        .set_scheme(&plain_scheme)
        .map_err(|()| bad_url(format!("cannot use scheme {scheme}")))?;
    parsed.set_query(None);
    if !kept.is_empty() {
        parsed.query_pairs_mut().extend_pairs(kept);
    }
    #[allow(unused_mut)]
    let mut config = Config::from_url(parsed.as_str()).map_err(|e| Error::lease("connect", e))?;
    with_tls(&mut config, ca_file.as_deref())?;
    Ok(config)
}

#[cfg(feature = "tls")]
fn with_tls(config: &mut Config, ca_file: Option<&str>) -> Result<()> {
    config.tls = Some(fred::types::config::TlsConnector::from(client_config(ca_file)?).into());
    Ok(())
}

#[cfg(not(feature = "tls"))]
fn with_tls(_config: &mut Config, _ca_file: Option<&str>) -> Result<()> {
    Err(Error::lease(
        "connect",
        "a rediss:// URL needs TLS support: enable the `tls` feature of mq-kinesis (on by default in mq-rs)",
    ))
}

/// A rustls client on the ring provider trusting the certificates in `ca_file`, or the
/// system's roots without one.
#[cfg(feature = "tls")]
fn client_config(ca_file: Option<&str>) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let tls_error = |reason: String| Error::lease("connect", format!("Redis TLS: {reason}"));
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| tls_error(format!("cannot read CA certificates from {path}: {e}")))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(tls_error(format!("no usable CA certificate in {path}")));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            // An unreadable file among the system's roots is not fatal while others load.
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                let why = native
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), ToString::to_string);
                return Err(tls_error(format!(
                    "no system root certificate could be loaded ({why}): name a CA file with ?{CA_FILE_PARAM}=<path>"
                )));
            }
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_that_could_reach_other_keys_are_refused() {
        for ok in ["mq", "app:mq", "team/app.mq-v2_1"] {
            check_prefix(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let long = "p".repeat(MAX_PREFIX_LEN + 1);
        for bad in [
            "",
            "mq*",
            "mq?",
            "mq[a]",
            "{mq}",
            "m q",
            "mq\n",
            "m\u{0430}",
            long.as_str(),
        ] {
            let e = check_prefix(bad).expect_err(bad);
            assert!(e.to_string().contains("prefix"), "{e}");
        }
    }

    #[test]
    fn plain_urls_keep_their_parameters() {
        let config = config_from_url("redis://127.0.0.1:6379/2").expect("plain URL");
        assert_eq!(config.database, Some(2));
    }

    #[test]
    fn a_ca_file_on_a_plain_url_is_refused() {
        let e = config_from_url("redis://127.0.0.1:6379?ca_file=/x.pem").expect_err("refused");
        assert!(e.to_string().contains("rediss://") || format!("{e:?}").contains("rediss://"));
    }

    #[cfg(feature = "tls")]
    #[test]
    fn a_missing_ca_file_is_named() {
        let e = config_from_url("rediss://:pw@127.0.0.1:6380?ca_file=/no/such/ca.pem")
            .expect_err("refused");
        let text = format!("{e:?}");
        assert!(text.contains("/no/such/ca.pem"), "{text}");
        assert!(!text.contains("pw@"), "{text}");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_urls_get_tls_settings() {
        let config = config_from_url("rediss://127.0.0.1:6380").expect("TLS URL");
        assert!(config.tls.is_some());
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn tls_urls_need_the_feature() {
        let e = config_from_url("rediss://127.0.0.1:6380").expect_err("refused");
        assert!(format!("{e:?}").contains("`tls` feature"));
    }
}

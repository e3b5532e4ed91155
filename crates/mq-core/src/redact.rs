//! Connection URLs with their secrets taken out, for messages and logs.

/// Query parameters whose values are secrets in the URLs mq accepts (libpq's `password`, and
/// the key passphrases and tokens some drivers take in the query).
const SECRET_PARAMS: &[&str] = &["password", "sslpassword", "pass", "token", "secret"];

/// `url` with its credentials replaced by `…`: the user-info before `@` (user and password) and
/// the value of any secret query parameter (`password=`, `sslpassword=`, ...). Everything else
/// (scheme, hosts, ports, database, other parameters such as `sslmode`) stays, so a message
/// still says where it tried to connect. A string that is not a URL comes back unchanged.
///
/// # Examples
///
/// ```
/// use mq_core::backend::redact_url;
///
/// assert_eq!(redact_url("postgres://app:s3cret@db:5432/app"), "postgres://…@db:5432/app");
/// assert_eq!(
///     redact_url("postgres://db/app?user=app&password=s3cret&sslmode=verify-full"),
///     "postgres://db/app?user=app&password=…&sslmode=verify-full"
/// );
/// assert_eq!(redact_url("sqlite:jobs.db"), "sqlite:jobs.db");
/// ```
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let mut out = String::with_capacity(url.len());
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
        // The authority ends at the first '/'; its last '@' ends the user-info, so an
        // unencoded '@' in a password does not leave the rest of it behind.
        let (authority, path) =
            before_query.split_at(before_query.find('/').unwrap_or(before_query.len()));
        match authority.rsplit_once('@') {
            Some((_, hosts)) => {
                out.push_str("…@");
                out.push_str(hosts);
            }
            None => out.push_str(authority),
        }
        out.push_str(path);
    } else {
        out.push_str(before_query);
    }
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if SECRET_PARAMS.iter().any(|s| k.eq_ignore_ascii_case(s)) => {
                    format!("{k}=…")
                }
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn user_info_and_secret_parameters_go() {
        let cases = [
            ("postgres://u:secret@h:5432/db", "postgres://…@h:5432/db"),
            ("mysql://root@h/db", "mysql://…@h/db"),
            ("rediss://:secret@cache:6380", "rediss://…@cache:6380"),
            (
                "mongodb://u:p%40ss@a:1,b:2/?replicaSet=rs",
                "mongodb://…@a:1,b:2/?replicaSet=rs",
            ),
            // An unencoded '@' in the password: the last '@' before the path ends the user-info.
            ("postgres://u:p@ss@h/db", "postgres://…@h/db"),
            (
                "postgres://h/db?password=secret&sslmode=require",
                "postgres://h/db?password=…&sslmode=require",
            ),
            (
                "postgres://h/db?PASSWORD=secret",
                "postgres://h/db?PASSWORD=…",
            ),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("sqlite:x.db", "sqlite:x.db"),
            ("sqlite://tmp/x.db?mode=rwc", "sqlite://tmp/x.db?mode=rwc"),
            ("", ""),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "{url}");
        }
    }

    #[test]
    fn an_at_sign_in_the_path_is_not_user_info() {
        assert_eq!(redact_url("sqlite:///data/a@b.db"), "sqlite:///data/a@b.db");
    }
}

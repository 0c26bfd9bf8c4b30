//! Which pages may open a WebSocket (cross-site WebSocket hijacking): a
//! browser sends the page's `Origin` with every handshake, and the cookies
//! or network position of its user come along whatever that page is. The
//! handshake is accepted only from the origins `ALLOWED_ORIGINS` names, by
//! default the server's own (`http(s)://` + the request's `Host`).
//! Clients that are not browsers send no `Origin` and are not concerned.

/// The `ALLOWED_ORIGINS` setting.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AllowedOrigins {
    /// Unset: only `http://<Host>` or `https://<Host>`, the origin the
    /// request was addressed to.
    #[default]
    SameHost,
    /// `*`: any origin.
    Any,
    /// A comma-separated list of origins (`https://chat.example.com`), in
    /// place of the same-host default.
    List(Vec<String>),
}

impl AllowedOrigins {
    /// Parses the setting: `*`, or origins separated by commas, each
    /// `http://` or `https://` with a host and an optional port, nothing
    /// after it (no path, no trailing slash).
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if value == "*" {
            return Ok(AllowedOrigins::Any);
        }
        let mut list = Vec::new();
        for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match normalize(item) {
                Some(origin) => list.push(origin),
                None => {
                    return Err(format!(
                        "{item:?} is not an origin (scheme://host[:port], e.g. https://chat.example.com)"
                    ))
                }
            }
        }
        if list.is_empty() {
            return Err("no origin given".into());
        }
        Ok(AllowedOrigins::List(list))
    }
}

/// Whether a handshake carrying `origin` (its `Origin` header, `None` when
/// absent) and `host` (its `Host` header) may open a socket.
pub fn origin_allowed(origin: Option<&str>, host: Option<&str>, allowed: &AllowedOrigins) -> bool {
    let Some(origin) = origin else {
        // Not a browser: nobody's cookies or network position to abuse.
        return true;
    };
    match allowed {
        AllowedOrigins::Any => true,
        AllowedOrigins::List(list) => normalize(origin).is_some_and(|o| list.contains(&o)),
        AllowedOrigins::SameHost => {
            let (Some(origin), Some(host)) = (normalize(origin), host) else {
                return false;
            };
            let host = host.trim().to_ascii_lowercase();
            ["http", "https"].iter().any(|scheme| {
                normalize(&format!("{scheme}://{host}")).is_some_and(|same| same == origin)
            })
        }
    }
}

/// `scheme://host[:port]` in lower case without a default port, or `None`
/// when `origin` is not an http(s) origin (`null`, a path, no host).
fn normalize(origin: &str) -> Option<String> {
    let origin = origin.trim().to_ascii_lowercase();
    let (scheme, authority) = origin.split_once("://")?;
    let default_port = match scheme {
        "http" => ":80",
        "https" => ":443",
        _ => return None,
    };
    let bad = |c: char| c.is_whitespace() || c.is_control() || "/?#@\\".contains(c);
    if authority.is_empty() || authority.contains(bad) {
        return None;
    }
    let authority = authority.strip_suffix(default_port).unwrap_or(authority);
    if authority.is_empty() || authority.starts_with(':') {
        return None;
    }
    Some(format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> AllowedOrigins {
        AllowedOrigins::List(items.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn no_origin_is_a_non_browser_client_and_allowed() {
        for allowed in [AllowedOrigins::SameHost, list(&["https://a.example"])] {
            assert!(origin_allowed(None, Some("chat.example"), &allowed));
            assert!(origin_allowed(None, None, &allowed));
        }
    }

    #[test]
    fn by_default_only_the_requests_own_host_is_allowed() {
        let same = AllowedOrigins::SameHost;
        let host = Some("127.0.0.1:8080");
        assert!(origin_allowed(Some("http://127.0.0.1:8080"), host, &same));
        assert!(origin_allowed(Some("https://127.0.0.1:8080"), host, &same));
        assert!(origin_allowed(
            Some("HTTP://Chat.Example"),
            Some("chat.example"),
            &same
        ));
        // Default ports are the same origin whichever side spells them.
        assert!(origin_allowed(
            Some("https://chat.example"),
            Some("chat.example:443"),
            &same
        ));
        assert!(origin_allowed(
            Some("http://chat.example:80"),
            Some("chat.example"),
            &same
        ));
        // Another port, host or scheme is another site.
        assert!(!origin_allowed(Some("http://127.0.0.1:9999"), host, &same));
        assert!(!origin_allowed(Some("http://127.0.0.2:8080"), host, &same));
        assert!(!origin_allowed(
            Some("http://evil.example"),
            Some("chat.example"),
            &same
        ));
        assert!(origin_allowed(
            Some("http://[::1]:3000"),
            Some("[::1]:3000"),
            &same
        ));
        assert!(!origin_allowed(
            Some("http://chat.example.evil.test"),
            Some("chat.example"),
            &same
        ));
        assert!(!origin_allowed(
            Some("ftp://chat.example"),
            Some("chat.example"),
            &same
        ));
        assert!(!origin_allowed(
            Some("https://chat.example:8443"),
            Some("chat.example"),
            &same
        ));
        // Sandboxed frames and local files say "null"; no Host, no match.
        assert!(!origin_allowed(Some("null"), Some("chat.example"), &same));
        assert!(!origin_allowed(Some("http://chat.example"), None, &same));
        assert!(!origin_allowed(Some(""), Some("chat.example"), &same));
    }

    #[test]
    fn a_list_replaces_the_default_and_star_allows_any() {
        let allowed =
            AllowedOrigins::parse(" https://chat.example , http://localhost:3000 ").unwrap();
        assert_eq!(
            allowed,
            list(&["https://chat.example", "http://localhost:3000"])
        );
        let host = Some("10.0.0.5:3001");
        assert!(origin_allowed(Some("https://chat.example"), host, &allowed));
        assert!(origin_allowed(
            Some("https://CHAT.example:443"),
            host,
            &allowed
        ));
        assert!(origin_allowed(
            Some("http://localhost:3000"),
            host,
            &allowed
        ));
        assert!(!origin_allowed(Some("http://chat.example"), host, &allowed));
        assert!(!origin_allowed(
            Some("http://10.0.0.5:3001"),
            host,
            &allowed
        ));
        assert!(!origin_allowed(Some("null"), host, &allowed));

        let any = AllowedOrigins::parse("*").unwrap();
        assert_eq!(any, AllowedOrigins::Any);
        assert!(origin_allowed(Some("http://evil.example"), host, &any));
        assert!(origin_allowed(Some("null"), None, &any));
    }

    #[test]
    fn malformed_settings_are_refused() {
        for bad in [
            "",
            " , ",
            "chat.example",
            "https://chat.example/",
            "https://a/b",
            "ws://a",
            "https://",
            "null",
        ] {
            assert!(AllowedOrigins::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}

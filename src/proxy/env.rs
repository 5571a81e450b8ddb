//! Which proxy applies to a connection: the configured one, or the one the conventional
//! environment variables name for the target (`https_proxy`, `http_proxy`, `all_proxy`), unless
//! `no_proxy` excludes it.

use std::net::IpAddr;

use url::Host;

use super::Proxy;
use crate::error::Error;
use crate::Config;

/// The proxy for a connection: the configured one, else (when the config opts in) the one the
/// environment names for this target, else none.
pub(crate) fn for_target(
    config: &Config,
    tls: bool,
    host: &Host<&str>,
    port: u16,
) -> Result<Option<Proxy>, Error> {
    if let Some(proxy) = config.proxy() {
        return Ok(Some(proxy.clone()));
    }
    if !config.proxy_from_env() {
        return Ok(None);
    }
    // A variable that is not valid Unicode is treated as unset.
    from_env(tls, host, port, |name| std::env::var(name).ok())
}

/// The proxy the environment (read through `env`) names for a `ws://` (`tls` false) or `wss://`
/// target, or `None` for a direct connection.
///
/// - `wss://` uses `https_proxy`, then `HTTPS_PROXY`; `ws://` uses `http_proxy`, then
///   `HTTP_PROXY`; both fall back to `all_proxy`, then `ALL_PROXY`. Lowercase wins, as in curl;
///   an empty value counts as unset. `HTTP_PROXY` is ignored when `REQUEST_METHOD` is set: in a
///   CGI program it can come from a request's `Proxy:` header ("httpoxy"), as Go also guards.
/// - `no_proxy` (then `NO_PROXY`) is a comma-separated list; an entry matching the target means
///   a direct connection. `*` matches everything; `example.com` and `.example.com` both match
///   `example.com` and its subdomains (`*.example.com` too); an IP address matches that address,
///   `10.0.0.0/8` a network. An entry with a port (`example.com:8443`, `[::1]:9001`) matches only
///   that port. Matching is case-insensitive and against the host as written in the URL: names
///   are not resolved to check address entries.
///
/// # Errors
///
/// [`Error::InvalidProxy`] naming the variable when the chosen value is not a proxy URL.
pub(crate) fn from_env(
    tls: bool,
    host: &Host<&str>,
    port: u16,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Proxy>, Error> {
    let first_set = |names: &[&'static str]| {
        names.iter().find_map(|&name| {
            env(name)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (name, v))
        })
    };
    let cgi = env("REQUEST_METHOD").is_some_and(|v| !v.is_empty());
    let scheme_vars: &[&'static str] = match (tls, cgi) {
        (true, _) => &["https_proxy", "HTTPS_PROXY"],
        (false, false) => &["http_proxy", "HTTP_PROXY"],
        (false, true) => &["http_proxy"],
    };
    let Some((name, value)) =
        first_set(scheme_vars).or_else(|| first_set(&["all_proxy", "ALL_PROXY"]))
    else {
        return Ok(None);
    };
    if let Some((list_name, list)) = first_set(&["no_proxy", "NO_PROXY"]) {
        if no_proxy_matches(&list, host, port) {
            tracing::debug!(variable = list_name, "target excluded from the proxy");
            return Ok(None);
        }
    }
    match Proxy::parse(&value) {
        Ok(proxy) => {
            tracing::debug!(variable = name, proxy = %proxy, "proxy from the environment");
            Ok(Some(proxy))
        }
        Err(Error::InvalidProxy { url, reason }) => Err(Error::InvalidProxy {
            url,
            reason: format!("{reason} (from the environment variable {name})"),
        }),
        Err(other) => Err(other),
    }
}

fn no_proxy_matches(list: &str, host: &Host<&str>, port: u16) -> bool {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .any(|entry| no_proxy_entry_matches(entry, host, port))
}

fn no_proxy_entry_matches(entry: &str, host: &Host<&str>, port: u16) -> bool {
    if entry == "*" {
        return true;
    }
    let (pattern, entry_port) = split_port(entry);
    if entry_port.is_some_and(|p| p != port) {
        return false;
    }
    let target_ip: Option<IpAddr> = match *host {
        Host::Domain(_) => None,
        Host::Ipv4(ip) => Some(ip.into()),
        Host::Ipv6(ip) => Some(ip.into()),
    };
    if let Some((network, bits)) = pattern.split_once('/') {
        return match (network.parse::<IpAddr>(), bits.parse::<u8>(), target_ip) {
            (Ok(network), Ok(bits), Some(ip)) => in_network(ip, network, bits),
            _ => false,
        };
    }
    if let Ok(ip) = pattern.parse::<IpAddr>() {
        return target_ip == Some(ip);
    }
    let Host::Domain(name) = *host else {
        return false;
    };
    let suffix = pattern.trim_start_matches("*.").trim_start_matches('.');
    let suffix = suffix.trim_end_matches('.').as_bytes();
    let name = name.trim_end_matches('.').as_bytes();
    if suffix.is_empty() {
        return false;
    }
    name.eq_ignore_ascii_case(suffix)
        || (name.len() > suffix.len()
            && name[name.len() - suffix.len() - 1] == b'.'
            && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix))
}

/// `host:port`, `[v6]:port`, `[v6]`, or a bare host or IPv6 address (more than one colon).
fn split_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        if let Some((ip, after)) = rest.split_once(']') {
            return (ip, after.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match entry.split_once(':') {
        Some((name, port)) if !port.contains(':') => match port.parse() {
            Ok(port) => (name, Some(port)),
            Err(_) => (entry, None),
        },
        _ => (entry, None),
    }
}

fn in_network(ip: IpAddr, network: IpAddr, bits: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(net)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_with(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn chosen(tls: bool, host: &str, port: u16, vars: &[(&str, &str)]) -> Option<String> {
        let host = Host::parse(host).unwrap();
        let host = match &host {
            Host::Domain(d) => Host::Domain(d.as_str()),
            Host::Ipv4(ip) => Host::Ipv4(*ip),
            Host::Ipv6(ip) => Host::Ipv6(*ip),
        };
        from_env(tls, &host, port, env_with(vars))
            .unwrap()
            .map(|p| p.to_string())
    }

    #[test]
    fn the_scheme_picks_the_variable_and_all_proxy_is_the_fallback() {
        let all = [
            ("HTTPS_PROXY", "http://s:1"),
            ("HTTP_PROXY", "http://p:1"),
            ("ALL_PROXY", "socks5h://a:1"),
        ];
        assert_eq!(chosen(true, "h", 443, &all).as_deref(), Some("http://s:1"));
        assert_eq!(chosen(false, "h", 80, &all).as_deref(), Some("http://p:1"));
        let only_all = [("ALL_PROXY", "socks5h://a:1")];
        assert_eq!(
            chosen(true, "h", 443, &only_all).as_deref(),
            Some("socks5h://a:1")
        );
        assert_eq!(
            chosen(false, "h", 80, &only_all).as_deref(),
            Some("socks5h://a:1")
        );
        // The other scheme's variable is never used.
        assert_eq!(
            chosen(true, "h", 443, &[("HTTP_PROXY", "http://p:1")]),
            None
        );
        assert_eq!(
            chosen(false, "h", 80, &[("HTTPS_PROXY", "http://s:1")]),
            None
        );
        assert_eq!(chosen(true, "h", 443, &[]), None);
    }

    #[test]
    fn lowercase_wins_and_empty_means_unset() {
        let vars = [
            ("https_proxy", "http://lower:1"),
            ("HTTPS_PROXY", "http://upper:1"),
            ("all_proxy", "http://all-lower:1"),
            ("ALL_PROXY", "http://all-upper:1"),
        ];
        assert_eq!(
            chosen(true, "h", 443, &vars).as_deref(),
            Some("http://lower:1")
        );
        let vars = [("http_proxy", ""), ("HTTP_PROXY", "http://upper:1")];
        assert_eq!(
            chosen(false, "h", 80, &vars).as_deref(),
            Some("http://upper:1")
        );
        let vars = [
            ("all_proxy", "socks5://all-lower:1"),
            ("ALL_PROXY", "http://x:1"),
        ];
        assert_eq!(
            chosen(false, "h", 80, &vars).as_deref(),
            Some("socks5://all-lower:1")
        );
    }

    #[test]
    fn uppercase_http_proxy_is_ignored_in_cgi() {
        let vars = [("REQUEST_METHOD", "GET"), ("HTTP_PROXY", "http://evil:1")];
        assert_eq!(chosen(false, "h", 80, &vars), None);
        let vars = [("REQUEST_METHOD", "GET"), ("http_proxy", "http://ok:1")];
        assert_eq!(
            chosen(false, "h", 80, &vars).as_deref(),
            Some("http://ok:1")
        );
    }

    #[test]
    fn no_proxy_excludes_matching_targets() {
        fn with(no_proxy: &str) -> impl Fn(&str, u16) -> bool + '_ {
            move |host: &str, port: u16| {
                chosen(
                    false,
                    host,
                    port,
                    &[("HTTP_PROXY", "http://p:1"), ("NO_PROXY", no_proxy)],
                )
                .is_none()
            }
        }
        let direct = with("*");
        assert!(direct("anything.example", 80) && direct("10.1.2.3", 80));
        for list in [
            "example.com",
            ".example.com",
            "*.example.com",
            "EXAMPLE.com.",
        ] {
            let direct = with(list);
            assert!(direct("example.com", 80), "{list}");
            assert!(direct("ws.Example.COM", 80), "{list}");
            assert!(direct("a.b.example.com", 80), "{list}");
            assert!(
                !direct("notexample.com", 80),
                "{list}: a suffix only at a dot"
            );
            assert!(!direct("example.com.evil", 80), "{list}");
        }
        let direct = with(" localhost , 10.0.0.0/8,  ::1 ,192.168.1.7");
        assert!(direct("localhost", 9001));
        assert!(direct("10.200.3.4", 80));
        assert!(!direct("11.0.0.1", 80));
        assert!(direct("[::1]", 80));
        assert!(direct("192.168.1.7", 80));
        assert!(!direct("192.168.1.8", 80));
        assert!(!direct("other", 80));
        let direct = with("example.com:8443,[::1]:9001,127.0.0.1:9002");
        assert!(direct("ws.example.com", 8443));
        assert!(
            !direct("ws.example.com", 443),
            "the entry's port must match"
        );
        assert!(direct("[::1]", 9001) && !direct("[::1]", 9000));
        assert!(direct("127.0.0.1", 9002) && !direct("127.0.0.1", 9003));
        let direct = with("fe80::/10, ,,.");
        assert!(direct("[fe80::1]", 80));
        assert!(!direct("[fd00::1]", 80));
        assert!(!direct("example", 80), "empty entries match nothing");
        // Lowercase wins for no_proxy too.
        let vars = [
            ("HTTP_PROXY", "http://p:1"),
            ("no_proxy", "a.example"),
            ("NO_PROXY", "*"),
        ];
        assert_eq!(
            chosen(false, "b.example", 80, &vars).as_deref(),
            Some("http://p:1")
        );
        assert_eq!(chosen(false, "a.example", 80, &vars), None);
    }

    #[test]
    fn a_bad_value_names_its_variable_unless_no_proxy_excludes_the_target() {
        let host = Host::Domain("h");
        let e = from_env(
            true,
            &host,
            443,
            env_with(&[("https_proxy", "ftp://u:pw@x")]),
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(e, Error::InvalidProxy { .. }) && text.contains("https_proxy"),
            "{text}"
        );
        assert!(!text.contains("pw"), "{text}");
        let vars = [("https_proxy", "ftp://x"), ("no_proxy", "h")];
        assert!(from_env(true, &host, 443, env_with(&vars))
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_configured_proxy_wins_over_the_environment() {
        let host = Host::Domain("h");
        // The default reads no environment (whatever this machine's is) and connects directly.
        let config = Config::default();
        assert!(for_target(&config, false, &host, 80).unwrap().is_none());
        let proxy = Proxy::parse("socks5h://127.0.0.1:1").unwrap();
        let config = Config::builder()
            .proxy(Some(proxy.clone()))
            .proxy_from_env(true)
            .build()
            .unwrap();
        assert_eq!(for_target(&config, false, &host, 80).unwrap(), Some(proxy));
    }
}

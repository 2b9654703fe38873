//! The egress route of a key — its own proxy, else the global `provider.proxy`, else direct —
//! and the route's name for logs and the admin view. Workers and the API both ask here.

use super::KeySpec;

/// The proxy `key`'s calls leave through: its own, else `global_proxy` (`provider.proxy`);
/// `""` means direct. With a proxy configured, nothing falls back to a direct connection.
pub fn egress_proxy<'a>(key: &'a KeySpec, global_proxy: &'a str) -> &'a str {
    match key.proxy.as_ref().map(|p| p.expose().as_str()) {
        Some(own) if !own.is_empty() => own,
        _ => global_proxy,
    }
}

/// A proxy's name for logs and the admin view: scheme and host:port, never credentials.
/// `""` (no proxy) is `direct`.
pub fn route_label(proxy: &str) -> String {
    if proxy.is_empty() {
        return "direct".into();
    }
    let (scheme, rest) = proxy.split_once("://").unwrap_or(("proxy", proxy));
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Secret;
    use crate::keypool::Limits;

    fn key(proxy: Option<&str>) -> KeySpec {
        KeySpec {
            alias: "a".into(),
            secret: Secret::from("s"),
            project: "p".into(),
            default_limits: Limits {
                rpm: 1,
                tpm: 1,
                rpd: 1,
            },
            model_limits: Default::default(),
            window_ms: 1000,
            proxy: proxy.map(|p| Secret::new(p.to_owned())),
            weight: 1,
            provider: Default::default(),
            base_url: None,
        }
    }

    #[test]
    fn a_keys_own_proxy_wins_then_the_global_one_then_direct() {
        assert_eq!(
            egress_proxy(&key(Some("http://own:1")), "http://g:2"),
            "http://own:1"
        );
        assert_eq!(egress_proxy(&key(None), "http://g:2"), "http://g:2");
        assert_eq!(egress_proxy(&key(None), ""), "");
    }

    #[test]
    fn route_labels_hide_credentials() {
        assert_eq!(route_label(""), "direct");
        assert_eq!(
            route_label("socks5h://user:pw@10.0.0.1:1080"),
            "socks5h://10.0.0.1:1080"
        );
        assert_eq!(
            route_label("http://proxy.local:3128/"),
            "http://proxy.local:3128"
        );
    }
}

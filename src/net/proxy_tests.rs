use base64::Engine as _;

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

fn decoded_credentials(server: &ProxyServer) -> String {
    let value = server
        .authorization()
        .unwrap()
        .strip_prefix("Basic ")
        .unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value)
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

#[test]
fn a_proxy_url_gives_host_port_and_percent_decoded_basic_credentials() {
    let server = ProxyServer::parse("http://alice:p%40ss%3Aword@proxy.corp:3128/").unwrap();
    assert_eq!((server.host.as_str(), server.port), ("proxy.corp", 3128));
    assert_eq!(decoded_credentials(&server), "alice:p@ss:word");
    assert_eq!(server.to_string(), "http://***@proxy.corp:3128");
    assert!(!format!("{server:?}").contains("p%40ss"));

    let bare = ProxyServer::parse("10.0.0.1:8080").unwrap();
    assert_eq!(bare.to_string(), "http://10.0.0.1:8080");
    assert_eq!(bare.authorization(), None);
    let v6 = ProxyServer::parse("http://[fd00::1]").unwrap();
    assert_eq!((v6.host.as_str(), v6.port), ("fd00::1", 80));
    assert_eq!(v6.address(), "[fd00::1]:80");
    let user_only = ProxyServer::parse("http://bob@proxy:3128").unwrap();
    assert_eq!(decoded_credentials(&user_only), "bob:");
}

#[test]
fn unusable_proxy_urls_are_refused_without_their_credentials() {
    for (text, says) in [
        (
            "socks5://u:secret@proxy:1080",
            "`socks5://` proxies are not supported",
        ),
        ("https://u:secret@proxy:443", "not supported"),
        ("http://u:secret@proxy:99999", "not a proxy URL"),
        ("http://u:secret@:3128", "not a proxy URL"),
        ("http://u:secret@proxy:3128/path", "no path"),
    ] {
        let error = ProxyServer::parse(text).unwrap_err();
        assert!(error.contains(says), "{text}: {error}");
        assert!(!error.contains("secret"), "{text}: {error}");
        assert!(error.contains("***@"), "{text}: {error}");
    }
}

#[test]
fn no_proxy_matches_names_suffixes_ips_ranges_and_ports_as_curl_does() {
    let list = NoProxy::parse(
        "localhost, .corp.example,internal.test:8443 10.0.0.0/8,192.168.1.7,::1,[fd00::]/16, \
         *.wild.example",
    );
    for (host, port, bypassed) in [
        ("localhost", 80, true),
        ("LOCALHOST.", 443, true),
        ("corp.example", 443, true),
        ("api.corp.example", 443, true),
        ("notcorp.example", 443, false),
        ("internal.test", 8443, true),
        ("internal.test", 443, false),
        ("10.200.3.4", 443, true),
        ("11.0.0.1", 443, false),
        ("192.168.1.7", 443, true),
        ("192.168.1.8", 443, false),
        ("[::1]", 443, true),
        ("fd00:abcd::1", 443, true),
        ("fe80::1", 443, false),
        ("a.wild.example", 443, true),
        ("api.openai.com", 443, false),
    ] {
        assert_eq!(list.bypasses(host, port), bypassed, "{host}:{port}");
    }
    assert!(NoProxy::parse("*").bypasses("api.openai.com", 443));
    assert!(!NoProxy::parse("").bypasses("localhost", 80));
    // A name never matches an address, nor a longer name it is only a suffix of.
    assert!(!NoProxy::parse("example.com").bypasses("badexample.com", 443));
    assert!(!NoProxy::parse("0.0.1").bypasses("10.0.0.1", 443));
}

#[test]
fn the_variables_for_the_upstreams_scheme_are_read_lower_case_first() {
    let variables = env(&[
        ("HTTPS_PROXY", "http://upper:3128"),
        ("https_proxy", "http://lower:3128"),
        ("ALL_PROXY", "http://all:3128"),
        ("NO_PROXY", "internal.test"),
    ]);
    let tunnel = |secure, host: &str| {
        let setting = ProxySetting::resolve("", &variables, secure).unwrap();
        match setting.route(secure, host, 443) {
            Route::Tunnel(server) => Some(server.host.clone()),
            Route::Direct => None,
        }
    };
    assert_eq!(tunnel(true, "api.openai.com").as_deref(), Some("lower"));
    assert_eq!(tunnel(false, "api.openai.com").as_deref(), Some("all"));
    assert_eq!(tunnel(true, "internal.test"), None);
    let setting = ProxySetting::resolve("", &variables, true).unwrap();
    assert_eq!(setting.candidate(true).unwrap().from, "https_proxy");
    assert_eq!(setting.no_proxy().unwrap().0, "NO_PROXY");

    let empty = ProxySetting::resolve("", &env(&[("https_proxy", " ")]), true).unwrap();
    assert_eq!(empty, ProxySetting::Direct);
}

#[test]
fn a_variable_of_the_other_scheme_never_stops_the_start() {
    // A common machine: an https proxy, and a SOCKS proxy in ALL_PROXY for other tools.
    let variables = env(&[
        ("HTTPS_PROXY", "http://corp:3128"),
        ("ALL_PROXY", "socks5://127.0.0.1:1080"),
    ]);
    let setting = ProxySetting::resolve("", &variables, true).unwrap();
    let Route::Tunnel(server) = setting.route(true, "api.openai.com", 443) else {
        panic!("the https proxy is used");
    };
    assert_eq!(server.host, "corp");
    // An http:// upstream would use ALL_PROXY, which cannot work: that one is refused.
    let error = ProxySetting::resolve("", &variables, false).unwrap_err();
    assert!(error.contains("ALL_PROXY"), "{error}");
}

#[test]
fn upstream_proxy_overrides_the_variables_and_none_ignores_them() {
    let variables = env(&[("HTTPS_PROXY", "http://env:3128"), ("NO_PROXY", "*")]);
    let none = ProxySetting::resolve("none", &variables, true).unwrap();
    assert_eq!(none.route(true, "api.openai.com", 443), Route::Direct);
    let fixed = ProxySetting::resolve("http://u:p@fixed:8080", &variables, true).unwrap();
    let Route::Tunnel(server) = fixed.route(true, "api.openai.com", 443) else {
        panic!("upstream.proxy is used whatever NO_PROXY says");
    };
    assert_eq!(server.to_string(), "http://***@fixed:8080");
    assert_eq!(fixed.candidate(false).unwrap().from, "upstream.proxy");

    let error = ProxySetting::resolve("", &env(&[("ALL_PROXY", "socks5://u:secret@s:1080")]), true)
        .unwrap_err();
    assert!(
        error.contains("ALL_PROXY = `socks5://***@s:1080`"),
        "{error}"
    );
    assert!(error.contains("upstream.proxy = \"none\""), "{error}");
    assert!(!error.contains("secret"), "{error}");
}

#[test]
fn a_bare_word_is_not_taken_for_a_proxy_host() {
    for word in ["off", "false", "direct"] {
        let error = ProxySetting::resolve(word, &[], true).unwrap_err();
        assert!(
            error.contains("upstream.proxy = \"none\""),
            "{word}: {error}"
        );
    }
    // Without a scheme a port names the proxy, as curl reads it.
    let setting = ProxySetting::resolve("proxy.corp:3128", &[], true).unwrap();
    let Route::Tunnel(server) = setting.route(true, "api.openai.com", 443) else {
        panic!("a tunnel");
    };
    assert_eq!((server.host.as_str(), server.port), ("proxy.corp", 3128));
}

use base64::Engine as _;

use super::*;

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "relay.toml", &no_env)
}

fn endpoint(extra: &str) -> String {
    format!(
        "[[endpoint]]\nname = \"crm\"\nurl = \"https://crm.example.com/hooks\"\nevents = [\"add_credits\"]\nsecret = \"{SECRET}\"\n{extra}\n"
    )
}

fn error_of(text: &str) -> String {
    parse(text).expect_err("config should be refused").0
}

#[test]
fn the_ssrf_guard_is_off_by_default_and_takes_an_allowlist() {
    assert!(parse(&endpoint("")).unwrap().ssrf_guard.is_none());
    let cfg = parse(&format!(
        "[ssrf_guard]\nenabled = true\nallow = [\"10.20.0.0/16\", \"127.0.0.1\"]\n{}",
        endpoint("")
    ))
    .unwrap();
    let guard = cfg.ssrf_guard.expect("guard on");
    assert_eq!(guard.allow.len(), 2);
    assert!(guard.check("127.0.0.1".parse().unwrap()).is_ok());
    assert!(guard.check("127.0.0.2".parse().unwrap()).is_err());
    let msg = error_of(&format!(
        "[ssrf_guard]\nallow = [\"nowhere\"]\n{}",
        endpoint("")
    ));
    assert!(
        msg.contains("line 2") && msg.contains("ssrf_guard.allow"),
        "{msg}"
    );
    let off = parse(&format!("[ssrf_guard]\nenabled = false\n{}", endpoint(""))).unwrap();
    assert!(off.ssrf_guard.is_none());
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let cfg = parse(&endpoint("")).unwrap();
    assert_eq!(cfg.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(cfg.poll_interval, DEFAULT_POLL_INTERVAL);
    assert_eq!(cfg.lease, DEFAULT_LEASE);
    let ep = &cfg.endpoints[0];
    assert_eq!(ep.name, "crm");
    assert_eq!(ep.timeout, DEFAULT_TIMEOUT);
    assert_eq!(ep.max_attempts, DEFAULT_MAX_ATTEMPTS);
    assert_eq!(ep.retry_initial, DEFAULT_RETRY_INITIAL);
    assert_eq!(ep.retry_max, DEFAULT_RETRY_MAX);
    assert_eq!(ep.rate_limit, None);
    assert_eq!(ep.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
    assert_eq!(ep.no_retry_statuses, DEFAULT_NO_RETRY_STATUSES);
    assert!(ep.enabled);
    assert_eq!(ep.secrets.len(), 1);
    assert_eq!(ep.secrets[0].encode(), SECRET);
}

#[test]
fn every_endpoint_key_is_parsed() {
    let cfg = parse(&format!(
        "database_url = \"postgres://app@localhost/app\"\nlisten = \"127.0.0.1:9999\"\n{}",
        endpoint(&format!(
            "timeout = \"500ms\"\nmax_attempts = 3\nretry_initial = \"2s\"\nretry_max = \"1h\"\n\
             rate_limit = 50.0\nburst = 10\nmax_in_flight = 4\nprevious_secrets = [\"{SECRET}\"]\n\
             enabled = false\nno_retry_statuses = [410, 422]\n[endpoint.headers]\nX-Team = \"billing\"\n"
        ))
    ))
    .unwrap();
    assert_eq!(
        cfg.database_url.as_deref(),
        Some("postgres://app@localhost/app")
    );
    assert_eq!(cfg.listen.port(), 9999);
    let ep = &cfg.endpoints[0];
    assert_eq!(ep.timeout, Duration::from_millis(500));
    assert_eq!(ep.max_attempts, 3);
    assert_eq!(ep.retry_initial, Duration::from_secs(2));
    assert_eq!(ep.retry_max, Duration::from_secs(3600));
    assert_eq!(ep.rate_limit, Some(50.0));
    assert_eq!(ep.burst, 10);
    assert_eq!(ep.max_in_flight, 4);
    assert_eq!(ep.secrets.len(), 2);
    assert!(!ep.enabled);
    assert_eq!(ep.no_retry_statuses, vec![410, 422]);
    assert_eq!(
        ep.headers,
        vec![("X-Team".to_string(), "billing".to_string())]
    );
}

#[test]
fn syntax_error_names_the_line() {
    let msg = error_of("listen = \"127.0.0.1:1\"\nthis is not toml\n");
    assert!(msg.starts_with("relay.toml line 2"), "{msg}");
}

#[test]
fn unknown_key_is_refused_with_its_line() {
    let msg = error_of(&endpoint("colour = \"blue\""));
    assert!(msg.contains("line 6"), "{msg}");
    assert!(msg.contains("unknown field `colour`"), "{msg}");
    let msg = error_of("pol_interval = \"1s\"\n");
    assert!(
        msg.contains("line 1") && msg.contains("pol_interval"),
        "{msg}"
    );
}

#[test]
fn unknown_event_code_is_refused() {
    let text = endpoint("").replace("[\"add_credits\"]", "[\"add_credits\", \"credits_gone\"]");
    let msg = error_of(&text);
    assert!(
        msg.contains("line 4") && msg.contains("\"credits_gone\""),
        "{msg}"
    );
    let ok = format!("extra_events = [\"credits_gone\"]\n{text}");
    assert_eq!(parse(&ok).unwrap().endpoints[0].events.len(), 2);
}

#[test]
fn bad_urls_are_refused() {
    for (url, why) in [
        ("not a url", "invalid URL"),
        ("ftp://example.com/x", "scheme must be http or https"),
        ("https://", "invalid URL"),
    ] {
        let text = endpoint("").replace("https://crm.example.com/hooks", url);
        let msg = error_of(&text);
        assert!(
            msg.contains("line 3 (url)") && msg.contains(why),
            "{url}: {msg}"
        );
    }
}

#[test]
fn bad_secrets_are_refused_without_echoing_them() {
    let cases = [
        ("C2FVsBQIhrscChlQIMV+b5sSYspob7oD", "must start with"),
        ("whsec_not*base64*at*all", "not valid base64"),
        ("whsec_c2hvcnQ=", "24 to 64 bytes"),
    ];
    for (bad, why) in cases {
        let msg = error_of(&endpoint("").replace(SECRET, bad));
        assert!(
            msg.contains("line 5 (secret)") && msg.contains(why),
            "{msg}"
        );
        assert!(!msg.contains(bad), "the message repeats the secret: {msg}");
    }
    let long = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode([7u8; 65])
    );
    assert!(error_of(&endpoint("").replace(SECRET, &long)).contains("this one has 65"));
}

#[test]
fn secret_env_is_read_and_checked() {
    let text = endpoint("").replace(
        &format!("secret = \"{SECRET}\""),
        "secret_env = \"CRM_SECRET\"",
    );
    let env_ok = |name: &str| (name == "CRM_SECRET").then(|| SECRET.to_string());
    let cfg = Config::parse(&text, "relay.toml", &env_ok).unwrap();
    assert_eq!(cfg.endpoints[0].secrets[0].encode(), SECRET);

    let msg = parse(&text).unwrap_err().0;
    assert!(msg.contains("CRM_SECRET is not set"), "{msg}");

    let env_bad = |_: &str| Some("whsec_short".to_string());
    let msg = Config::parse(&text, "relay.toml", &env_bad).unwrap_err().0;
    assert!(
        msg.contains("invalid secret") && !msg.contains("whsec_short"),
        "{msg}"
    );

    let both = format!("{}secret_env = \"X\"\n", endpoint(""));
    assert!(error_of(&both).contains("not both"));
    let neither = endpoint("").replace(&format!("secret = \"{SECRET}\""), "");
    assert!(error_of(&neither).contains("is required"));
}

#[test]
fn duplicate_names_are_refused() {
    let msg = error_of(&format!("{}{}", endpoint(""), endpoint("")));
    assert!(
        msg.contains("line 8 (name)") && msg.contains("duplicate endpoint name"),
        "{msg}"
    );
}

#[test]
fn bad_durations_and_numbers_are_refused() {
    let msg = error_of(&endpoint("timeout = \"soon\""));
    assert!(
        msg.contains("line 6 (timeout)") && msg.contains("invalid duration"),
        "{msg}"
    );
    assert!(error_of(&endpoint("timeout = \"0s\"")).contains("more than 0"));
    assert!(error_of(&endpoint("max_attempts = 0")).contains("at least 1"));
    assert!(error_of(&endpoint("max_attempts = -1")).contains("line 6"));
    assert!(error_of(&endpoint("rate_limit = 0.0")).contains("above 0"));
    assert!(error_of(&endpoint("burst = 5")).contains("only means something with rate_limit"));
    assert!(error_of(&endpoint("max_in_flight = 0")).contains("1 to 10000"));
    assert!(
        error_of(&endpoint("retry_initial = \"10s\"\nretry_max = \"1s\"")).contains("retry_max")
    );
    assert!(error_of(&endpoint("no_retry_statuses = [200]")).contains("not a non-2xx"));
    assert!(error_of("listen = \"nowhere\"\n").contains("line 1 (listen)"));
}

#[test]
fn reserved_and_invalid_headers_are_refused() {
    let msg = error_of(&endpoint("[endpoint.headers]\nwebhook-signature = \"x\""));
    assert!(msg.contains("cannot be overridden"), "{msg}");
    let msg = error_of(&endpoint("[endpoint.headers]\n\"bad header\" = \"x\""));
    assert!(msg.contains("not a valid header name"), "{msg}");
}

#[test]
fn lease_must_outlast_an_attempt() {
    let msg = error_of(&format!(
        "lease = \"10s\"\n{}",
        endpoint("timeout = \"30s\"")
    ));
    assert!(
        msg.contains("line 1 (lease)") && msg.contains("too short"),
        "{msg}"
    );
}

#[test]
fn database_url_precedence_is_flag_then_env_then_file() {
    let cfg = parse(&format!("database_url = \"file\"\n{}", endpoint(""))).unwrap();
    assert_eq!(
        cfg.resolve_database_url(Some("flag"), Some("env")).unwrap(),
        "flag"
    );
    assert_eq!(cfg.resolve_database_url(None, Some("env")).unwrap(), "env");
    assert_eq!(cfg.resolve_database_url(None, None).unwrap(), "file");
    let bare = parse(&endpoint("")).unwrap();
    assert!(bare.resolve_database_url(None, None).is_err());
}

#[test]
fn urls_with_passwords_are_redacted_for_display() {
    let cfg = parse(&endpoint("").replace("https://crm", "https://user:hunter2@crm")).unwrap();
    let shown = cfg.endpoints[0].display_url();
    assert!(
        !shown.contains("hunter2") && shown.contains("***"),
        "{shown}"
    );
}

#[test]
fn retention_defaults_and_keys() {
    let cfg = parse(&endpoint("")).unwrap();
    assert_eq!(cfg.retention, RetentionConfig::default());
    assert_eq!(cfg.retention.delivered, Some(DEFAULT_RETENTION_DELIVERED));
    assert_eq!(cfg.retention.attempts, Some(DEFAULT_RETENTION_ATTEMPTS));

    let cfg = parse(&format!(
        "[retention]\ndelivered = \"2d\"\nattempts = \"forever\"\nbatch = 100\ninterval = \"30s\"\n{}",
        endpoint("")
    ))
    .unwrap();
    assert_eq!(
        cfg.retention,
        RetentionConfig {
            delivered: Some(Duration::from_secs(2 * 24 * 3600)),
            attempts: None,
            batch: 100,
            interval: Duration::from_secs(30),
        }
    );
    // Keys left out of the table keep their defaults.
    let cfg = parse(&format!("[retention]\nbatch = 10\n{}", endpoint(""))).unwrap();
    assert_eq!(cfg.retention.delivered, Some(DEFAULT_RETENTION_DELIVERED));
}

#[test]
fn bad_retention_values_are_refused() {
    let msg = error_of("[retention]\ndelivered = \"0s\"\n");
    assert!(
        msg.contains("line 2 (delivered)") && msg.contains("forever"),
        "{msg}"
    );
    assert!(error_of("[retention]\nattempts = \"soon\"\n").contains("line 2 (attempts)"));
    assert!(error_of("[retention]\nbatch = 0\n").contains("1 to 100000"));
    assert!(error_of("[retention]\ninterval = \"0s\"\n").contains("more than 0"));
    assert!(error_of("[retention]\nkeep = \"1d\"\n").contains("unknown field `keep`"));
}

#[test]
fn api_tokens_are_read_checked_and_never_echoed() {
    let admin = "admin-token-0123456789";
    let crm = "crm-token-0123456789";
    let cfg = parse(&format!(
        "api_admin_token = \"{admin}\"\n{}",
        endpoint(&format!("api_token = \"{crm}\""))
    ))
    .unwrap();
    assert_eq!(
        cfg.api_admin_token.as_ref().unwrap().as_bytes(),
        admin.as_bytes()
    );
    assert_eq!(
        cfg.endpoints[0].api_token.as_ref().unwrap().as_bytes(),
        crm.as_bytes()
    );
    assert!(!format!("{cfg:?}").contains(admin), "Debug shows the token");

    // From the environment.
    let text = format!(
        "api_admin_token_env = \"ADMIN_TOKEN\"\n{}",
        endpoint("api_token_env = \"CRM_TOKEN\"")
    );
    let env = |name: &str| match name {
        "ADMIN_TOKEN" => Some(admin.to_string()),
        "CRM_TOKEN" => Some(crm.to_string()),
        _ => None,
    };
    let cfg = Config::parse(&text, "relay.toml", &env).unwrap();
    assert!(cfg.api_admin_token.is_some() && cfg.endpoints[0].api_token.is_some());
    assert!(parse(&text)
        .unwrap_err()
        .0
        .contains("ADMIN_TOKEN is not set"));

    // Too short, bad characters, both forms, duplicates.
    let msg = error_of("api_admin_token = \"short\"\n");
    assert!(
        msg.contains("line 1 (api_admin_token)") && msg.contains("16 to 256"),
        "{msg}"
    );
    assert!(!msg.contains("\"short\""), "{msg}");
    let msg = error_of("api_admin_token = \"has a space in the middle\"\n");
    assert!(msg.contains("visible ASCII"), "{msg}");
    let msg = error_of(&endpoint(&format!(
        "api_token = \"{crm}\"\napi_token_env = \"X\""
    )));
    assert!(msg.contains("not both"), "{msg}");
    let msg = error_of(&format!(
        "api_admin_token = \"{crm}\"\n{}",
        endpoint(&format!("api_token = \"{crm}\""))
    ));
    assert!(
        msg.contains("line 7 (api_token)") && msg.contains("give each its own"),
        "{msg}"
    );
    assert!(!msg.contains(crm), "{msg}");
}

#[test]
fn the_database_url_alone_is_read_without_validating_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    // secret_env names a variable that is not set: `run` would refuse this.
    let text = endpoint("").replace(
        &format!("secret = \"{SECRET}\""),
        "secret_env = \"NOT_SET_ANYWHERE_42\"",
    );
    std::fs::write(&path, format!("database_url = \"postgres://x/y\"\n{text}")).unwrap();
    assert_eq!(
        database_url_from_file(&path).unwrap().as_deref(),
        Some("postgres://x/y")
    );
    std::fs::write(&path, &text).unwrap();
    assert_eq!(database_url_from_file(&path).unwrap(), None);
    std::fs::write(&path, "database_url = [\n").unwrap();
    assert!(database_url_from_file(&path)
        .unwrap_err()
        .0
        .contains("line 2"));
}

#[test]
fn a_mangled_line_is_named_by_its_key_without_echoing_its_value() {
    // Two lines run together (a lost newline): the left of '=' holds a secret.
    let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let msg = error_of(&endpoint(&format!(
        "previous_secrets  [\"{secret}\"]enabled = false"
    )));
    assert!(msg.contains("line 6 (previous_secrets)"), "{msg}");
    assert!(!msg.contains("C2FVsBQIhrscChlQIMV"), "{msg}");
}

#[test]
fn secrets_and_the_database_url_are_read_from_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("crm.secret"), format!("{SECRET}\n")).unwrap();
    std::fs::write(dir.path().join("db.url"), "postgres://relay:pw@db/app\n").unwrap();
    let text = endpoint("").replace(
        &format!("secret = \"{SECRET}\""),
        "secret_file = \"crm.secret\"",
    );
    let text = format!("database_url_file = \"db.url\"\n{text}");
    let cfg = Config::parse_in(&text, "relay.toml", &no_env, dir.path()).unwrap();
    assert_eq!(cfg.endpoints[0].secrets[0].encode(), SECRET);
    assert_eq!(
        cfg.database_url.as_deref(),
        Some("postgres://relay:pw@db/app")
    );

    // A missing file: the key and the path are named.
    let msg = Config::parse(&text, "relay.toml", &no_env).unwrap_err().0;
    assert!(
        msg.contains("line 6 (secret_file)") && msg.contains("./crm.secret"),
        "{msg}"
    );
    let no_url = text.replace("db.url", "missing.url");
    let msg = Config::parse_in(&no_url, "relay.toml", &no_env, dir.path())
        .unwrap_err()
        .0;
    assert!(
        msg.contains("line 1 (database_url_file)") && msg.contains("missing.url"),
        "{msg}"
    );
    // A file that does not hold a secret: its contents are not repeated.
    std::fs::write(dir.path().join("crm.secret"), "whsec_not-base64-hunter2").unwrap();
    let msg = Config::parse_in(&text, "relay.toml", &no_env, dir.path())
        .unwrap_err()
        .0;
    assert!(
        msg.contains("(secret_file)") && msg.contains("invalid secret") && !msg.contains("hunter2"),
        "{msg}"
    );
    std::fs::write(dir.path().join("crm.secret"), "\n").unwrap();
    let msg = Config::parse_in(&text, "relay.toml", &no_env, dir.path())
        .unwrap_err()
        .0;
    assert!(msg.contains("is empty"), "{msg}");

    let both = format!("{}secret_file = \"crm.secret\"\n", endpoint(""));
    assert!(error_of(&both).contains("not both secret and secret_file"));
    std::fs::write(dir.path().join("crm.secret"), SECRET).unwrap();
    let both = format!("database_url = \"x\"\n{text}");
    assert!(Config::parse_in(&both, "relay.toml", &no_env, dir.path())
        .unwrap_err()
        .0
        .contains("not both"));

    std::fs::write(dir.path().join("api.token"), "crm-token-0123456789abcdef\n").unwrap();
    let with_token = format!("{text}api_token_file = \"api.token\"\n");
    let cfg = Config::parse_in(&with_token, "relay.toml", &no_env, dir.path()).unwrap();
    assert!(cfg.endpoints[0].api_token.is_some());
    let msg = error_of(&format!(
        "{}api_token = \"crm-token-0123456789abcdef\"\napi_token_file = \"x\"\n",
        endpoint("")
    ));
    assert!(
        msg.contains("(api_token_file)") && msg.contains("not both"),
        "{msg}"
    );

    // status and replay read database_url_file too, beside the config file.
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, &text).unwrap();
    assert_eq!(
        database_url_from_file(&path).unwrap().as_deref(),
        Some("postgres://relay:pw@db/app")
    );
}

#[test]
fn http_trust_certificates_and_proxies_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let parse_here = |text: &str| Config::parse_in(text, "relay.toml", &no_env, dir.path());
    let msg = parse_here(&endpoint("ca_file = \"missing.pem\""))
        .unwrap_err()
        .0;
    assert!(
        msg.contains("line 6 (ca_file)") && msg.contains("missing.pem"),
        "{msg}"
    );
    std::fs::write(dir.path().join("not.pem"), "hello").unwrap();
    let msg = parse_here(&endpoint("ca_file = \"not.pem\""))
        .unwrap_err()
        .0;
    assert!(msg.contains("holds no PEM certificate"), "{msg}");
    let msg = parse_here(&endpoint("client_cert = \"not.pem\""))
        .unwrap_err()
        .0;
    assert!(msg.contains("client_cert needs client_key"), "{msg}");
    let msg = parse_here(&endpoint(
        "client_cert = \"not.pem\"\nclient_key = \"not.pem\"",
    ))
    .unwrap_err()
    .0;
    assert!(
        msg.contains("not a PEM certificate and its private key"),
        "{msg}"
    );
    let msg = error_of(&endpoint("proxy = \"socks5://p:1080\""));
    assert!(
        msg.contains("line 6 (proxy)") && msg.contains("http:// or https://"),
        "{msg}"
    );
    let msg = error_of(&format!("[http]\nno_proxy = [\"x\"]\n{}", endpoint("")));
    assert!(
        msg.contains("only means something with http.proxy"),
        "{msg}"
    );

    let cfg = parse(&format!(
        "[http]\nproxy = \"http://u:pw@proxy:3128\"\nno_proxy = [\".internal\"]\n{}{}",
        endpoint(""),
        endpoint("proxy = \"none\"").replace("\"crm\"", "\"direct\"")
    ))
    .unwrap();
    assert!(matches!(&cfg.http.proxy, Proxy::Url { no_proxy, .. } if no_proxy == &[".internal"]));
    assert!(
        cfg.endpoints[0].http.is_none(),
        "no own keys: the shared client"
    );
    assert_eq!(cfg.endpoints[1].http.as_ref().unwrap().proxy, Proxy::Direct);
}

#[test]
fn ordering_is_by_key_unless_turned_off() {
    assert_eq!(
        parse(&endpoint("")).unwrap().endpoints[0].ordering,
        Ordering::Key
    );
    let none = parse(&endpoint("ordering = \"none\"")).unwrap();
    assert_eq!(none.endpoints[0].ordering, Ordering::None);
    let msg = error_of(&endpoint("ordering = \"commit\""));
    assert!(
        msg.contains("unknown variant") && msg.contains("key"),
        "{msg}"
    );
}

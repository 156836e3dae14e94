use super::*;
use crate::policy::family::Family;

fn env() -> HashMap<String, String> {
    HashMap::from([("RUNBLOB_TOKEN".to_string(), "rb-secret".to_string())])
}

const DIGEST: &str = "6e788b88657c17431c8bc2ef660098ef81f7c0fd979d79d30be1823268adbda8";

fn minimal() -> String {
    format!("[[tenants]]\nid = \"a\"\nkeys_sha256 = [\"{DIGEST}\"]\n")
}

fn problems(text: &str) -> Vec<String> {
    match Config::from_toml(text, &env()) {
        Err(ConfigError::Invalid(p)) => p,
        Ok(_) => panic!("config unexpectedly valid:\n{text}"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_documented_example_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tollgate.toml");
    let c = Config::load(&path, &env()).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.server.max_body_bytes, 16 * 1024 * 1024);
    assert_eq!(c.upstream.token.expose(), "rb-secret");
    assert_eq!(c.store, StoreConfig::Sqlite { path: "/var/lib/tollgate/tollgate.db".into() });
    assert_eq!(
        c.catalog_path,
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/models.toml")),
        "relative to the file"
    );
    let public: Vec<String> = c.public_key_tenants().into_iter().map(|(t, _)| t).collect();
    assert_eq!(public, ["marketing", "research"], "run refuses the example keys");
    assert_eq!(c.tenants.tenants().len(), 2);
    assert_eq!(&*c.tenants.lookup("tg_example_marketing").unwrap().tenant.id, "marketing");
    assert_eq!(&*c.tenants.lookup("tg_example_research").unwrap().tenant.id, "research");
    assert_eq!(c.pricing.estimate(Family::builtin("sora"), &["15".to_string()]), Some(Usd::parse("0.18").unwrap()));
    assert_eq!(
        c.pricing.estimate(Family::builtin("kling/o1-photo"), &["2k".to_string()]),
        Some(Usd::parse("0.029").unwrap())
    );
}

#[test]
fn defaults_fill_everything_but_tenants() {
    let c = Config::from_toml(&minimal(), &env()).unwrap();
    assert_eq!(c.server.admin_listen, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(c.server.request_timeout, Duration::from_secs(60));
    assert_eq!(c.upstream.base_url, "https://platform.runblob.io");
    assert_eq!(c.upstream.connect_timeout, Duration::from_millis(2000));
    assert_eq!(c.balance.cache_ttl, Duration::from_millis(5000));
    let t = &c.tenants.tenants()[0];
    assert_eq!(
        (t.limits.requests_per_second.get(), t.limits.burst.get(), t.limits.generations_per_minute.get()),
        (20, 40, 10)
    );
    assert_eq!(t.monthly_budget, None);
    assert!(c.server.admin_token.is_none());
}

#[test]
fn unknown_keys_anywhere_are_errors_and_all_are_reported() {
    let text = format!(
        "bogus = 1\n[server]\nlisten = \"nope\"\nlsiten = \"x\"\n[upstream]\ntimeout_sec = 3\n[balance]\nreserve = \"-1\"\n{}extra = true\n",
        minimal()
    );
    let p = problems(&text);
    let joined = p.join("\n");
    for want in [
        "unknown key `bogus`",
        "unknown key `server.lsiten`",
        "unknown key `upstream.timeout_sec`",
        "server.listen",
        "balance.reserve",
        "unknown key `tenant \"a\".extra`",
    ] {
        assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
    }
    assert_eq!(p.len(), 6, "{joined}");
}

#[test]
fn type_errors_name_their_section() {
    // Each bad key is named, and one bad key does not hide the others.
    let p =
        problems(&format!("[server]\nmax_body_bytes = \"big\"\nmax_connections = \"many\"\nlisten = 7\n{}", minimal()));
    assert!(p.iter().any(|x| x.starts_with("server.max_body_bytes:")), "{p:?}");
    assert!(p.iter().any(|x| x.starts_with("server.max_connections:")), "{p:?}");
    assert!(p.iter().any(|x| x.starts_with("server.listen:")), "{p:?}");
    assert_eq!(p.len(), 3, "{p:?}");
}

#[test]
fn syntax_errors_are_one_problem() {
    let p = problems("[server\nlisten=");
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("TOML syntax"), "{p:?}");
}

#[test]
fn tenant_problems() {
    let text = format!(
        r#"
[[tenants]]
id = "bad id!"
keys_sha256 = ["{DIGEST}"]
[[tenants]]
id = "b"
keys_sha256 = ["xyz"]
requests_per_second = 0
[[tenants]]
id = "c"
keys_sha256 = []
monthly_budget = "lots"
"#
    );
    let joined = problems(&text).join("\n");
    for want in [
        "tenants[0].id",
        "tenant \"b\": a keys_sha256 entry (xyz…) looks like a key",
        "tenant \"b\": requests_per_second",
        "tenant \"c\": keys_sha256 needs",
        "tenant \"c\": monthly_budget",
    ] {
        assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
    }
}

#[test]
fn one_key_for_two_tenants_is_refused() {
    let text = format!("{}[[tenants]]\nid = \"b\"\nkeys_sha256 = [\"{DIGEST}\"]\n", minimal());
    assert!(problems(&text).join(" ").contains("listed by both tenant"));
}

#[test]
fn no_tenants_is_a_problem() {
    assert!(problems("").join(" ").contains("no [[tenants]]"));
    // With the admin API on, every team can live in the store.
    let mut e = env();
    e.insert("TOLLGATE_ADMIN_TOKEN".into(), "a-long-admin-token-0123456789abcdef".into());
    let c = Config::from_toml("", &e).unwrap_or_else(|err| panic!("{err}"));
    assert!(c.tenants.tenants().is_empty());
}

#[test]
fn missing_token_is_a_problem_for_run_and_a_warning_for_check() {
    let err = Config::from_toml(&minimal(), &HashMap::new()).unwrap_err().to_string();
    assert!(err.contains("RUNBLOB_TOKEN"), "{err}");
    let (_, warnings) = Config::check(&minimal(), &HashMap::new()).unwrap();
    assert_eq!(warnings.len(), 1);
    let custom = format!("[upstream]\ntoken_env = \"MY_TOKEN\"\n{}", minimal());
    let env = HashMap::from([("MY_TOKEN".to_string(), "t".to_string())]);
    assert_eq!(Config::from_toml(&custom, &env).unwrap().upstream.token.expose(), "t");
}

#[test]
fn store_backends() {
    let c = |s: &str| Config::from_toml(&format!("[store]\n{s}\n{}", minimal()), &env());
    assert_eq!(c("backend = \"memory\"").unwrap().store, StoreConfig::Memory);
    assert!(matches!(
        c("backend = \"redis\"\nurl = \"redis://127.0.0.1:6379\"").unwrap().store,
        StoreConfig::Redis { .. }
    ));
    assert!(c("backend = \"redis\"").is_err());
    assert!(c("backend = \"postgres\"").is_err());
}

#[test]
fn redis_through_sentinels() {
    let c = |s: &str| Config::from_toml(&format!("[store]\nbackend = \"redis\"\n{s}\n{}", minimal()), &env());
    let ok = c(
        "sentinels = [\"10.0.0.1:26379\", \"sentinel-2:26379\"]\nmaster_name = \"main\"\ndb = 2\nmin_replica_acks = 1",
    )
    .unwrap();
    match ok.store {
        StoreConfig::Redis {
            target: RedisTarget::Sentinel { sentinels, master_name, db, password },
            min_replica_acks,
            ..
        } => {
            assert_eq!(
                (sentinels.len(), master_name.as_str(), db, password, min_replica_acks),
                (2, "main", 2, None, 1)
            );
        }
        other => panic!("{other:?}"),
    }
    // Each mistake is named.
    let cases = [
        ("sentinels = [\"a:26379\"]", "store.master_name must be set"),
        ("sentinels = []\nmaster_name = \"m\"", "store.sentinels needs at least one"),
        ("sentinels = [\"a\"]\nmaster_name = \"m\"", "\"a\" is not \"host:port\""),
        ("sentinels = [\"a:0\"]\nmaster_name = \"m\"", "\"a:0\" is not"),
        ("sentinels = [\"a:1\"]\nmaster_name = \"m\"\nurl = \"redis://x:1\"", "alternatives: set one"),
        ("url = \"redis://x:1\"\nmaster_name = \"m\"", "go with store.sentinels"),
        ("url = \"redis://x:1\"\nmin_replica_acks = 99", "min_replica_acks = 99"),
    ];
    for (text, want) in cases {
        let e = c(text).err().unwrap_or_else(|| panic!("{text} was accepted")).to_string();
        assert!(e.contains(want), "{text}: {e}");
    }
}

#[test]
fn pricing_problems() {
    let joined =
        problems(&format!("[pricing]\nmidjourney = \"1\"\nsora = {{ \"10\" = \"free\" }}\nveo = 3\n{}", minimal()))
            .join("\n");
    assert!(joined.contains("midjourney"), "{joined}");
    assert!(joined.contains("\"free\""), "{joined}");
    assert!(joined.contains("pricing.\"veo\" must be a price string"), "{joined}");
}

#[test]
fn base_url_must_be_http() {
    assert!(problems(&format!("[upstream]\nbase_url = \"ftp://x\"\n{}", minimal())).join(" ").contains("base_url"));
    let c =
        Config::from_toml(&format!("[upstream]\nbase_url = \"http://127.0.0.1:9/\"\n{}", minimal()), &env()).unwrap();
    assert_eq!(c.upstream.base_url.authority().unwrap().as_str(), "127.0.0.1:9");
}

#[test]
fn error_is_one_line_and_secrets_never_print() {
    let err = Config::from_toml("x = 1\ny = 2", &env()).unwrap_err().to_string();
    // A header line, then one line per problem.
    assert!(err.starts_with("invalid config ("), "{err}");
    assert!(err.lines().skip(1).all(|l| l.starts_with("  - ")), "{err}");
    assert!(err.lines().count() >= 3, "{err}");
    let c = Config::from_toml(&minimal(), &env()).unwrap();
    assert!(!format!("{c:?}").contains("rb-secret"));
    assert_eq!(redact_url("redis://:pw@host:6379"), "redis://***@host:6379");
}

#[test]
fn toml_syntax_errors_give_line_and_column() {
    let p = problems("[server]\nlisten = \"127.0.0.1:1\"\nbroken = = 1\n");
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("TOML syntax at line 3, column"), "{p:?}");
}

#[test]
fn a_budget_may_be_a_number() {
    let text = minimal().replace("[[tenants]]", "[[tenants]]\nmonthly_budget = 50");
    let c = Config::from_toml(&text, &env()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.tenants.tenants()[0].monthly_budget, Some(Usd::parse("50").unwrap()));
}

#[test]
fn the_redis_password_comes_from_the_environment() {
    let text = minimal().replace(
        "[[tenants]]",
        "[store]\nbackend = \"redis\"\nurl = \"redis://redis:6379/0\"\npassword_env = \"REDIS_PW\"\n\n[[tenants]]",
    );
    let mut e = env();
    e.insert("REDIS_PW".into(), "p@ss word".into());
    let c = Config::from_toml(&text, &e).unwrap_or_else(|err| panic!("{err}"));
    match c.store {
        StoreConfig::Redis { target: RedisTarget::Url(url), .. } => {
            assert_eq!(url, "redis://:p%40ss%20word@redis:6379/0")
        }
        other => panic!("{other:?}"),
    }
    assert!(problems(&text).iter().any(|p| p.contains("REDIS_PW")));
}

#[test]
fn telemetry_needs_an_http_endpoint_and_defaults_the_traces_path() {
    let c =
        Config::from_toml(&format!("{}\n[telemetry]\notlp_endpoint = \"http://collector:4318\"\n", minimal()), &env())
            .unwrap();
    let t = c.telemetry.unwrap();
    assert_eq!((t.otlp_endpoint.as_str(), t.service_name.as_str()), ("http://collector:4318/v1/traces", "tollgate"));
    let c = Config::from_toml(
        &format!(
            "{}\n[telemetry]\notlp_endpoint = \"https://otel.example/custom/path\"\nservice_name = \"edge\"\n",
            minimal()
        ),
        &env(),
    )
    .unwrap();
    assert_eq!(c.telemetry.unwrap().otlp_endpoint, "https://otel.example/custom/path");
    assert!(Config::from_toml(&minimal(), &env()).unwrap().telemetry.is_none());
    let p = problems(&format!("{}\n[telemetry]\notlp_endpoint = \"collector:4318\"\nsample = 1\n", minimal()));
    assert!(p.iter().any(|l| l.contains("telemetry.otlp_endpoint `collector:4318` must be an http(s) URL")), "{p:?}");
    assert!(p.iter().any(|l| l.contains("unknown key `telemetry.sample`")), "{p:?}");
    let p = problems(&format!("{}\n[telemetry]\n", minimal()));
    assert!(p.iter().any(|l| l.contains("telemetry.otlp_endpoint is required")), "{p:?}");
}

#[test]
fn zero_negative_and_empty_prices_are_refused() {
    let p = problems(&format!(
        "{}[pricing]\nsora = {{ \"10\" = \"0\", \"15\" = \"-0.18\" }}\nveo = {{}}\ngemini = \"abc\"\n",
        minimal()
    ));
    let all = p.join("\n");
    assert!(all.contains(r#"pricing."sora"."10" = "0" must be above zero"#), "{all}");
    assert!(all.contains(r#"pricing."sora"."15" = "-0.18" must be above zero"#), "{all}");
    assert!(all.contains(r#"pricing."veo" has no prices"#), "{all}");
    assert!(all.contains(r#"pricing."gemini"."default" = "abc" is not a decimal string"#), "{all}");
}

#[test]
fn alerts_and_in_flight_caps_are_checked() {
    let ps = problems(&format!(
        "{}max_in_flight = 0\n\n[alerts]\nurl = \"http://10.0.0.1/a\"\nthresholds = [0.8, -1]\nbalance_below = \"0\"\n",
        minimal()
    ));
    for expected in [
        "max_in_flight must be at least 1",
        "alerts.url",
        "alerts.secret_env is required",
        "alerts.thresholds",
        "alerts.balance_below",
    ] {
        assert!(ps.iter().any(|p| p.contains(expected)), "{expected}: {ps:?}");
    }
    let mut e = env();
    e.insert("ALERTS_SECRET".into(), "whsec_KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=".into());
    let text = format!("{}max_in_flight = 3\n\n[alerts]\nurl = \"https://alerts.example.com/x\"\nsecret_env = \"ALERTS_SECRET\"\nthresholds = [1.0, 0.5]\n", minimal());
    let c = Config::from_toml(&text, &e).unwrap();
    let a = c.alerts.unwrap();
    assert_eq!((a.thresholds, a.balance_below), (vec![0.5, 1.0], None));
    assert_eq!(c.tenants.tenants()[0].max_in_flight, Some(3));
}

#[test]
fn absurd_amounts_are_problems_naming_the_field_not_panics() {
    let digits = "99999999999999999999999";
    let p = problems(&minimal().replace("[[tenants]]", &format!("[[tenants]]\nmonthly_budget = \"{digits}\"")));
    assert!(p.iter().any(|l| l.contains("monthly_budget")), "{p:?}");
    let p = problems(&minimal().replace("[[tenants]]", &format!("[balance]\nreserve = \"{digits}\"\n\n[[tenants]]")));
    assert!(p.iter().any(|l| l.contains("reserve")), "{p:?}");
}

#[test]
fn unknown_keys_are_reported_with_a_type_error_and_a_suggestion() {
    // Before: the type error stopped serde, and the unknown key beside it went unreported.
    let text = minimal().replace("[[tenants]]", "[[tenants]]\nmonthly_budgt = \"5\"\nrequests_per_second = \"fast\"");
    let p = problems(&text);
    assert!(p.iter().any(|l| l.contains("monthly_budgt") && l.contains("did you mean `monthly_budget`?")), "{p:?}");
    assert!(p.iter().any(|l| l.contains("requests_per_second")), "{p:?}");
    let p = problems(&minimal().replace("[[tenants]]", "[server]\nlisen = \"127.0.0.1:1\"\n\n[[tenants]]"));
    assert!(p.iter().any(|l| l.contains("unknown key `server.lisen` (did you mean `listen`?)")), "{p:?}");
    let p = problems(&minimal().replace("[[tenants]]", "[server]\nwhatever_this_is = 1\n\n[[tenants]]"));
    assert!(p.iter().any(|l| l == "unknown key `server.whatever_this_is`"), "{p:?}");
}
